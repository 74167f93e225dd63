"""The sequential specification of :class:`~unbundled.consistency.KV`, for the
linearizability checker: a history recorded against the store is checked
with ``check(history, unbundled.consistency.kv.model.model())`` (versions
included, which makes it stricter than the checker's plain ``kv`` model: a
read must return the right version too).

Inputs and outputs (values as the history records them, e.g. ``str``;
``None`` means absent):

* ``("read", key)`` -> ``(value, version)`` or ``None``;
* ``("write", key, value)`` -> the new version;
* ``("cas", key, "value", expected, new)`` -> ``True`` / ``False``
  (``expected`` None: the key must be absent);
* ``("cas", key, "version", expected, new)`` -> ``True`` / ``False``
  (``expected`` 0: the key must be absent);
* ``("delete", key)`` -> ``True`` if the key was present.

Every key starts absent at version 0; each change adds one to its version,
a delete too (the key then reads as absent but keeps its version).

Not imported by ``unbundled.consistency.kv`` itself: the store does not need
the checker.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ..checker import Model, partition_by
from ..checker._model import show_value
from ..history import UNKNOWN

Cell = tuple[Hashable, int]  # (value or None, version)
State = frozenset[tuple[Hashable, Cell]]

_ABSENT: Cell = (None, 0)


def _get(state: State, key: Hashable) -> Cell:
    for k, cell in state:
        if k == key:
            return cell
    return _ABSENT


def _put(state: State, key: Hashable, cell: Cell) -> State:
    return frozenset(item for item in state if item[0] != key) | {(key, cell)}


def _matches(cell: Cell, by: str, expected: Any) -> bool:
    value, version = cell
    if by == "version":
        return value is None if expected == 0 else (value is not None and version == expected)
    return bool(value == expected)


def _step(state: State, input: Any, output: Any) -> tuple[bool, State]:
    op, key = input[0], input[1]
    cell = _get(state, key)
    value, version = cell
    unknown = output is UNKNOWN
    if op == "read":
        seen = None if value is None else (value, version)
        return (unknown or output == seen), state
    if op == "write":
        return (unknown or output == version + 1), _put(state, key, (input[2], version + 1))
    if op == "cas":
        _, _, by, expected, new = input
        swapped = _matches(cell, by, expected)
        if not unknown and output != swapped:
            return False, state
        return True, (_put(state, key, (new, version + 1)) if swapped else state)
    if op == "delete":
        present = value is not None
        if not unknown and output != present:
            return False, state
        return True, (_put(state, key, (None, version + 1)) if present else state)
    raise ValueError(f"kv store model: unsupported input {input!r}")


def _describe(state: State) -> str:
    if not state:
        return "all keys absent"
    return ", ".join(f"{k!r}: {show_value(v)}@{n}" for k, (v, n) in sorted(state, key=repr))


def model() -> Model[State]:
    """The key-value store with versions, partitioned by key."""
    return Model(
        "kv-store",
        frozenset,
        _step,
        partition=partition_by(lambda input: input[1]),
        describe_state=_describe,
    )
