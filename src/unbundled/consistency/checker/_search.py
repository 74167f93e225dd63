"""The search: Wing & Gong's algorithm with Lowe's cache, as Porcupine runs it.

Operations become call and return entries in one doubly-linked list, in time
order. The search walks the list from the front: at a call entry it tries to
linearize that operation now (the model accepts it in the current state);
if the pair (set of linearized operations, new state) was never seen before,
it commits ("lifts" the call and its return out of the list) and starts over
from the front; otherwise it moves on to the next entry. Reaching a return
entry means that operation had to be linearized already: backtrack (undo the
latest commit and try the entry after it). The cache of seen pairs is what
makes this fast: two orders reaching the same set and state have the same
future, so only one is explored (Lowe, "Testing for linearizability", 2017).

Python-specific choices, all measured (see bench/results/consistency.md):

* the list lives in two int lists (``nxt``, ``prv``), not node objects;
* the linearized set is kept as a *window*: every returned operation whose
  rank (in call order) is below ``base`` is linearized, and the int bitset
  ``w`` holds the ranks from ``base`` on (bit 0 always clear). Its size is
  bounded by how many operations overlap, not by the history's length, so a
  step costs the same at operation 100 and at operation 100,000 (a plain
  bitset of every operation makes long single-key histories quadratic).
  Never-returned operations, which may stay unplaced forever and would pin
  ``base``, have a bitset of their own, ``c``. A cache key is the tuple
  ``(w, c, state_id, base)`` (measured: faster than packing the four into one
  int; on short histories about 10% slower than one plain bitset of every
  operation, which turns quadratic on long ones);
* states are interned to small ints, and each operation's transitions are
  memoized per state id, so ``model.step`` runs once per (operation, state);
* operations that never returned need not be linearized at all (they may
  never have happened), so success is "every returned operation placed";
  such an operation is only tried where it changes the state, and among
  never-returned operations with equal inputs only the earliest-called one not
  yet placed is tried (they are interchangeable: any order using a later one
  can use the earlier one instead). These prune whole subtrees that
  Porcupine explores, without changing any verdict.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from ..history import Operation
from ._model import Model

__all__ = ["SearchResult", "search"]

# How many backtracks between two looks at the clock.
_CLOCK_EVERY = 1024


@dataclass(frozen=True)
class SearchResult:
    """``linearizable`` is None when the deadline passed first.

    ``order``: indexes into the searched operations: a linearization if
    linearizable, else the longest partial one found (empty when unknown).
    ``states``: the model state after each operation of ``order``.
    """

    linearizable: bool | None
    order: tuple[int, ...]
    states: tuple[Any, ...]
    steps: int


def _entries(ops: Sequence[Operation]) -> list[tuple[float, int, int]]:
    """(time, kind, op) in list order; at equal times calls come before returns,
    which treats touching operations as concurrent (as Porcupine does)."""
    events: list[tuple[float, int, int]] = []
    for index, op in enumerate(ops):
        events.append((op.call_time, 0, index))
        if op.return_time is not None:
            events.append((op.return_time, 1, index))
    events.sort()
    return events


def _symmetry_chains(ops: Sequence[Operation], cbit: list[int]) -> list[int]:
    """For each never-returned op, the bit (in ``c``) of the previous
    never-returned op with an equal input (by call time), which must be placed
    first; else 0."""
    prereq = [0] * len(ops)
    last: dict[Hashable, int] = {}
    for index in sorted(range(len(ops)), key=lambda i: ops[i].call_time):
        op = ops[index]
        if op.return_time is not None:
            continue
        try:
            key: Hashable = (op.input, op.output)
            previous = last.get(key)
        except TypeError:  # unhashable input: no symmetry to exploit
            continue
        if previous is not None:
            prereq[index] = cbit[previous]
        last[key] = index
    return prereq


def _ranks(ops: Sequence[Operation]) -> tuple[list[int], list[int]]:
    """Each returned op's rank in call order (-1 for the others), and each
    never-returned op's bit in ``c`` (0 for the others)."""
    order = sorted(range(len(ops)), key=lambda i: (ops[i].call_time, i))
    rank = [-1] * len(ops)
    cbit = [0] * len(ops)
    returned = crashed = 0
    for index in order:
        if ops[index].return_time is None:
            cbit[index] = 1 << crashed
            crashed += 1
        else:
            rank[index] = returned
            returned += 1
    return rank, cbit


def search(
    ops: Sequence[Operation],
    model: Model[Any],
    deadline: float | None = None,
    *,
    track_longest: bool = False,
) -> SearchResult:
    """Is ``ops`` linearizable with respect to ``model``? (None: out of time.)"""
    n = len(ops)
    events = _entries(ops)
    m = len(events)
    tail = m + 1
    # Node 0 is the head, 1..m the entries, m + 1 the tail.
    nxt = [*range(1, m + 2), tail]
    prv = [0, *range(0, m + 1)]
    entry_op = [-1] * (m + 2)  # op index at a call entry, -1 at a return entry
    match = [0] * (m + 2)  # the call entry's return entry, 0 if it never returns
    call_entry = [0] * n
    for position, (_, kind, index) in enumerate(events, 1):
        if kind == 0:
            entry_op[position] = index
            call_entry[index] = position
        else:
            match[call_entry[index]] = position

    key_of = model.state_key
    step = model.step
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    crashed = [op.return_time is None for op in ops]
    rank, cbit = _ranks(ops)
    prereq = _symmetry_chains(ops, cbit)
    initial = model.init()
    states: list[Any] = [initial]
    state_ids: dict[Hashable, int] = {initial if key_of is None else key_of(initial): 0}
    memo: list[dict[int, int]] = [{} for _ in range(n)]

    remaining = n - sum(crashed)
    base = w = c = 0  # the linearized set (see the module docstring)
    s = 0
    stack_entries: list[int] = []
    stack_states: list[int] = []
    stack_sets: list[tuple[int, int, int]] = []
    cache: set[tuple[int, int, int, int]] = set()
    longest: list[int] = []
    longest_states: list[int] = []
    steps = 0
    backtracks = 0
    clock = time.perf_counter
    e = nxt[0]
    while remaining:
        op = entry_op[e]
        if op >= 0:
            steps += 1
            transitions = memo[op]
            ns = transitions.get(s)
            if ns is None:
                ok, new_state = step(states[s], inputs[op], outputs[op])
                if ok:
                    k = new_state if key_of is None else key_of(new_state)
                    ns = state_ids.get(k)
                    if ns is None:
                        ns = state_ids[k] = len(states)
                        states.append(new_state)
                else:
                    ns = -1
                transitions[s] = ns
            if ns >= 0 and (not crashed[op] or (ns != s and c & prereq[op] == prereq[op])):
                nbase, nw, nc = base, w, c
                if crashed[op]:
                    nc = c | cbit[op]
                else:
                    q = rank[op] - base
                    nw = w | (1 << q)
                    if not q:  # the window's first op: slide past every placed one
                        t = (~nw & (nw + 1)).bit_length() - 1
                        nw >>= t
                        nbase = base + t
                key = (nw, nc, ns, nbase)
                if key not in cache:
                    cache.add(key)
                    stack_entries.append(e)
                    stack_states.append(s)
                    stack_sets.append((base, w, c))
                    base, w, c = nbase, nw, nc
                    s = ns
                    # Lift the call entry and its return entry out of the list.
                    p = prv[e]
                    q = nxt[e]
                    nxt[p] = q
                    prv[q] = p
                    r = match[e]
                    if r:
                        p = prv[r]
                        q = nxt[r]
                        nxt[p] = q
                        prv[q] = p
                        remaining -= 1
                    e = nxt[0]
                    continue
            e = nxt[e]
            continue
        # A return entry whose operation is not placed yet: dead end.
        if not stack_entries:
            return SearchResult(
                False, _ops_of(longest, entry_op), _states_of(longest_states, states), steps
            )
        if track_longest and len(stack_entries) > len(longest):
            longest = list(stack_entries)
            longest_states = [*stack_states[1:], s]
        backtracks += 1
        if deadline is not None and not backtracks % _CLOCK_EVERY and clock() > deadline:
            return SearchResult(None, (), (), steps)
        e = stack_entries.pop()
        s = stack_states.pop()
        base, w, c = stack_sets.pop()
        # Unlift: put the return entry back, then the call entry.
        r = match[e]
        if r:
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            remaining += 1
        nxt[prv[e]] = e
        prv[nxt[e]] = e
        e = nxt[e]
    after = [*stack_states[1:], s] if stack_entries else []
    return SearchResult(True, _ops_of(stack_entries, entry_op), _states_of(after, states), steps)


def _ops_of(entries: list[int], entry_op: list[int]) -> tuple[int, ...]:
    return tuple(entry_op[e] for e in entries)


def _states_of(ids: list[int], states: list[Any]) -> tuple[Any, ...]:
    return tuple(states[i] for i in ids)
