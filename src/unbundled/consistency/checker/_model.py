"""Sequential specifications (models) and the built-in ones.

A model is what a single, correct copy of the object would do: an initial
state and a ``step`` saying whether an operation with that input may return
that output in that state, and the state after it. The checker asks: is
there an order of the history's operations, consistent with real time, that
this sequential object accepts?
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..history import UNKNOWN, Operation

__all__ = [
    "Model",
    "append_log",
    "kv",
    "partition_by",
    "queue",
    "register",
]

S = TypeVar("S")


@dataclass(frozen=True)
class Model(Generic[S]):
    """A sequential specification.

    * ``init()``: the initial state.
    * ``step(state, input, output) -> (ok, new_state)``: ``ok`` says whether
      the object in ``state``, given ``input``, may answer ``output``;
      ``new_state`` is its state afterwards (ignored when not ``ok``). It must
      be a pure function and must not mutate ``state``. ``output`` may be
      :data:`~unbundled.consistency.history.UNKNOWN` (the caller never saw the
      answer): accept it and compute the state the operation leaves, which
      must then depend on ``state`` and ``input`` alone.
    * ``partition(operations)``: optional; splits a history into independent
      sub-histories, each checked on its own (P-compositionality: a key-value
      map is linearizable iff each key is). Each part is checked with the
      same ``init`` and ``step``.
    * ``part_model``: optional; the model each part is checked with instead
      of this one (the kv model checks a one-key part with the key's value as
      the whole state, which is cheaper than a map).
    * ``state_key(state)``: optional; a hashable value equal for equal states.
      Without it states must be hashable themselves (tuples, frozensets, ...).
    * ``describe_operation(input, output)`` and ``describe_state(state)``:
      optional text for the HTML picture.
    """

    name: str
    init: Callable[[], S]
    step: Callable[[S, Any, Any], tuple[bool, S]]
    partition: Callable[[Sequence[Operation]], Iterable[Sequence[Operation]]] | None = None
    part_model: Model[Any] | None = None
    state_key: Callable[[S], Hashable] | None = None
    describe_operation: Callable[[Any, Any], str] | None = None
    describe_state: Callable[[S], str] | None = None

    def operation_text(self, input: Any, output: Any) -> str:
        """How an operation reads in a report (the HTML view, a violation's
        message): ``describe_operation`` if the model has one, else ``input -> output``."""
        if self.describe_operation is not None:
            return self.describe_operation(input, output)
        return f"{_show_input(input)} -> {'?' if output is UNKNOWN else show_value(output)}"

    def state_text(self, state: S) -> str:
        """How a state reads in a report: ``describe_state`` if the model has one,
        else the value itself."""
        if self.describe_state is not None:
            return self.describe_state(state)
        return show_value(state)


def show_value(value: Any) -> str:
    """A value as a person reads it in a message: bytes that are UTF-8 as
    their text (``'5'``, not ``b'5'``: histories recorded from the key-value
    store hold bytes), tuples and lists element by element, anything else
    as its repr."""
    if isinstance(value, bytes):
        try:
            return repr(value.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(map(show_value, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(map(show_value, value)) + "]"
    return repr(value)


def _show_input(input: Any) -> str:
    if isinstance(input, tuple) and input and isinstance(input[0], str):
        return f"{input[0]}({', '.join(map(show_value, input[1:]))})"
    return show_value(input)


def partition_by(
    key: Callable[[Any], Hashable],
) -> Callable[[Sequence[Operation]], list[list[Operation]]]:
    """A ``partition`` function grouping operations by ``key(input)``."""

    def partition(operations: Sequence[Operation]) -> list[list[Operation]]:
        parts: dict[Hashable, list[Operation]] = {}
        for op in operations:
            parts.setdefault(key(op.input), []).append(op)
        return list(parts.values())

    return partition


def _bad_input(model: str, input: Any) -> ValueError:
    return ValueError(f"{model} model: unsupported input {input!r}")


# --- register -------------------------------------------------------------------------


def register(initial: Hashable = None) -> Model[Hashable]:
    """A single register holding one value (``initial`` at first; ``None`` = absent).

    Inputs and outputs:

    * ``("read",)`` -> the value read;
    * ``("write", v)`` -> anything (ignored);
    * ``("cas", expected, new)`` -> ``True`` if it swapped, ``False`` if it
      completed without swapping (the value was not ``expected``);
    * ``("delete",)`` -> anything; the same as writing ``None``.

    An operation whose output is UNKNOWN may have had any result: a read
    accepts any value, a cas swaps if (and only if) the value was ``expected``.
    """

    def step(state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        op = input[0]
        if op == "read":
            return (output is UNKNOWN or output == state), state
        if op == "write":
            return True, input[1]
        if op == "cas":
            matches = state == input[1]
            if output is UNKNOWN or output == matches:
                return True, (input[2] if matches else state)
            return False, state
        if op == "delete":
            return True, None
        raise _bad_input("register", input)

    return Model("register", lambda: initial, step)


# --- key-value map ---------------------------------------------------------------------


def _kv_key(input: Any) -> Hashable:
    key: Hashable = input[1]
    return key


def kv(initial: Hashable = None) -> Model[frozenset[tuple[Hashable, Hashable]]]:
    """A map of independent registers, partitioned by key (each key checked alone).

    Every key starts as ``initial`` (``None`` = absent; Porcupine's kv
    histories use ``""``). Inputs (the key is always ``input[1]``):

    * ``("get", key)`` -> the value;
    * ``("put", key, v)`` -> anything;
    * ``("append", key, s)`` -> anything; the value becomes value + ``s``
      (strings, or tuples/lists; an absent value counts as empty);
    * ``("cas", key, expected, new)`` -> ``True`` / ``False`` as for :func:`register`;
    * ``("delete", key)`` -> anything.

    The state is a frozenset of ``(key, value)`` pairs for the keys that differ
    from ``initial``, so the model is also correct unpartitioned.
    """

    def get(state: frozenset[tuple[Hashable, Hashable]], key: Hashable) -> Hashable:
        for k, v in state:
            if k == key:
                return v
        return initial

    def put(
        state: frozenset[tuple[Hashable, Hashable]], key: Hashable, value: Hashable
    ) -> frozenset[tuple[Hashable, Hashable]]:
        rest = frozenset(item for item in state if item[0] != key)
        return rest if value == initial else rest | {(key, value)}

    def step(
        state: frozenset[tuple[Hashable, Hashable]], input: Any, output: Any
    ) -> tuple[bool, frozenset[tuple[Hashable, Hashable]]]:
        op, key = input[0], input[1]
        if op == "get":
            return (output is UNKNOWN or output == get(state, key)), state
        if op == "put":
            return True, put(state, key, input[2])
        if op == "append":
            current = get(state, key)
            if current is None:
                current = type(input[2])()
            return True, put(state, key, current + input[2])
        if op == "cas":
            matches = get(state, key) == input[2]
            if output is UNKNOWN or output == matches:
                return True, (put(state, key, input[3]) if matches else state)
            return False, state
        if op == "delete":
            return True, put(state, key, None)
        raise _bad_input("kv", input)

    def describe_state(state: frozenset[tuple[Hashable, Hashable]]) -> str:
        if not state:
            return f"all keys {show_value(initial)}"
        return ", ".join(f"{show_value(k)}: {show_value(v)}" for k, v in sorted(state, key=repr))

    return Model(
        "kv",
        frozenset,
        step,
        partition=partition_by(_kv_key),
        part_model=_kv_one_key(initial),
        describe_state=describe_state,
    )


def _kv_one_key(initial: Hashable) -> Model[Hashable]:
    """:func:`kv` for a part with a single key: the state is that key's value."""

    def step(state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        op = input[0]
        if op == "get":
            return (output is UNKNOWN or output == state), state
        if op == "put":
            return True, input[2]
        if op == "append":
            current = type(input[2])() if state is None else state
            return True, current + input[2]
        if op == "cas":
            matches = state == input[2]
            if output is UNKNOWN or output == matches:
                return True, (input[3] if matches else state)
            return False, state
        if op == "delete":
            return True, None
        raise _bad_input("kv", input)

    return Model("kv", lambda: initial, step)


# --- queue and append-only log ---------------------------------------------------------


def queue() -> Model[tuple[Hashable, ...]]:
    """A FIFO queue, empty at first.

    * ``("enqueue", v)`` -> anything;
    * ``("dequeue",)`` -> the oldest value, removed; ``None`` if empty.
    """

    def step(
        state: tuple[Hashable, ...], input: Any, output: Any
    ) -> tuple[bool, tuple[Hashable, ...]]:
        op = input[0]
        if op == "enqueue":
            return True, (*state, input[1])
        if op == "dequeue":
            head = state[0] if state else None
            if output is not UNKNOWN and output != head:
                return False, state
            return True, state[1:]
        raise _bad_input("queue", input)

    return Model("queue", tuple, step)


def append_log() -> Model[tuple[Hashable, ...]]:
    """An append-only log (Kafka's model), empty at first.

    * ``("append", v)`` -> the offset ``v`` was given (0, 1, ...);
    * ``("read",)`` -> the whole log as a tuple (or list);
    * ``("read", offset)`` -> the value at ``offset``, ``None`` if beyond the end.
    """

    def step(
        state: tuple[Hashable, ...], input: Any, output: Any
    ) -> tuple[bool, tuple[Hashable, ...]]:
        op = input[0]
        if op == "append":
            return (output is UNKNOWN or output == len(state)), (*state, input[1])
        if op == "read":
            if output is UNKNOWN:
                return True, state
            if len(input) == 1:
                return tuple(output) == state, state
            offset = input[1]
            value = state[offset] if 0 <= offset < len(state) else None
            return output == value, state
        raise _bad_input("append_log", input)

    return Model("append_log", tuple, step)
