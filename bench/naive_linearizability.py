"""A straightforward linearizability search in Python: the benchmark's reference.

``bench/consistency_bench.py`` times :mod:`unbundled.consistency.checker`
against this: Porcupine's algorithm (Wing & Gong's search with Lowe's cache of
seen configurations) written the plain way, as a first Python port would be.
It has none of the library's refinements: no partitioning, node objects for
the list, a cache of ``(bitset, state)`` tuples, ``step`` called again every
time an operation is tried, and an operation that never returned gets a
return entry after every other entry (as Porcupine does), so the search must
place it somewhere, at every position it can.

It takes the library's :class:`~unbundled.consistency.history.Operation` s
and a model's ``init``/``step`` (the sequential specification is the same on
both sides; only the search differs). Not part of the library; not
imported by it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from unbundled.consistency.history import Operation

__all__ = ["check_naive"]

Step = Callable[[Any, Any, Any], tuple[bool, Any]]


class _Entry:
    """One node of the doubly-linked list: the call or the return of an operation."""

    __slots__ = ("is_call", "match", "next", "op", "prev")

    def __init__(self, op: int, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None  # a call's return entry
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _build_list(ops: Sequence[Operation]) -> _Entry:
    """The head of a list holding every call and return entry in time order.

    At equal times calls come first, so operations that touch are concurrent.
    """
    events: list[tuple[float, int, int]] = []
    for index, op in enumerate(ops):
        events.append((op.call_time, 0, index))
        ret = math.inf if op.return_time is None else op.return_time
        events.append((ret, 1, index))
    events.sort()
    head = _Entry(-1, False)
    calls: dict[int, _Entry] = {}
    last = head
    for _, kind, index in events:
        entry = _Entry(index, kind == 0)
        if kind == 0:
            calls[index] = entry
        else:
            calls[index].match = entry
        last.next = entry
        entry.prev = last
        last = entry
    return head


def _lift(entry: _Entry) -> None:
    """Take a call entry and its return entry out of the list."""
    for node in (entry, entry.match):
        assert node is not None and node.prev is not None
        node.prev.next = node.next
        if node.next is not None:
            node.next.prev = node.prev


def _unlift(entry: _Entry) -> None:
    """Put them back (the return first: the reverse of :func:`_lift`)."""
    for node in (entry.match, entry):
        assert node is not None and node.prev is not None
        node.prev.next = node
        if node.next is not None:
            node.next.prev = node


def check_naive(
    ops: Sequence[Operation],
    init: Callable[[], Any],
    step: Step,
    deadline: float | None = None,
) -> tuple[bool | None, int]:
    """``(linearizable, steps)``; ``linearizable`` is None if ``deadline``
    (a ``time.perf_counter()`` value) passed first. States must be hashable."""
    head = _build_list(ops)
    state = init()
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    steps = 0
    backtracks = 0
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.is_call:
            steps += 1
            op = ops[entry.op]
            ok, new_state = step(state, op.input, op.output)
            if ok:
                key = (linearized | 1 << entry.op, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized = key[0]
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return entry whose operation is not linearized yet: backtrack.
        if not stack:
            return False, steps
        backtracks += 1
        if deadline is not None and not backtracks % 1024 and time.perf_counter() > deadline:
            return None, steps
        entry, state = stack.pop()
        linearized &= ~(1 << entry.op)
        _unlift(entry)
        entry = entry.next
    return True, steps
