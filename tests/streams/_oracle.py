"""Batch oracles for the streams tests: what a flow's windows must hold,
computed the plain way -- all events at once, no watermarks, no timers.

Each function is written to be obviously right rather than fast: the window
of an event is found by trying every candidate start, sessions by sorting a
key's event times and cutting where two neighbours are ``gap_ms`` or more
apart. ``late_split`` is the only one that knows about watermarks: it replays
the rule the streams package documents (a partition's watermark is the
newest event time seen in it minus ``out_of_orderness_ms``; an event is late
for a window whose end the watermark has reached).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from unbundled.streams import Count, Hopping, Session, Tumbling, WindowResult

KEYS = ("a", "b", "c", "d", "e")


class Event(NamedTuple):
    """One input record: ``key`` is ``None`` for a heartbeat (``value`` unused)."""

    partition: int
    key: str | None
    value: int
    ts: int


def partition_of(key: str, partitions: int) -> int:
    """The driver tests put each key on one partition, as keyed producing does."""
    return KEYS.index(key) % partitions


def non_commutative(a: int, b: int) -> int:
    """A reduce function whose result depends on the order of its inputs."""
    return (a * 7 + b) % 1_000_003


AGGREGATIONS: dict[str, Callable[[list[int]], Any]] = {
    "count": len,
    "sum": sum,
    "collect": list,
    "reduce": lambda values: _fold(non_commutative, values),
    "max": lambda values: _fold(max, values),
}


def _fold(fn: Callable[[int, int], int], values: list[int]) -> int:
    acc = values[0]
    for v in values[1:]:
        acc = fn(acc, v)
    return acc


def time_windows(spec: Tumbling | Hopping, ts: int) -> list[tuple[int, int]]:
    """Every [start, end) of ``spec`` that holds ``ts``, by trying each candidate start."""
    size = spec.size_ms
    slide = spec.slide_ms if isinstance(spec, Hopping) else spec.size_ms
    first = (ts - size - spec.offset_ms) // slide - 1
    last = (ts - spec.offset_ms) // slide + 1
    out = []
    for k in range(first, last + 1):
        start = spec.offset_ms + k * slide
        if start <= ts < start + size:
            out.append((start, start + size))
    return out


def sessions(events: list[Event], gap_ms: int) -> list[tuple[str | None, int, int, list[int]]]:
    """Per key: (key, start, end, values in arrival order) of each session."""
    out = []
    for key in {e.key for e in events}:
        mine = sorted((e for e in events if e.key == key), key=lambda e: e.ts)
        group = [mine[0]]
        for prev, e in itertools.pairwise(mine):
            if e.ts - prev.ts >= gap_ms:
                out.append(_session(key, group, gap_ms, events))
                group = []
            group.append(e)
        out.append(_session(key, group, gap_ms, events))
    return out


def _session(
    key: str | None, group: list[Event], gap_ms: int, events: list[Event]
) -> tuple[str | None, int, int, list[int]]:
    members = {id(e) for e in group}
    values = [e.value for e in events if id(e) in members]  # arrival order
    return key, group[0].ts, group[-1].ts + gap_ms, values


def batch_results(
    events: Iterable[Event], spec: Tumbling | Hopping | Session, agg: str
) -> list[WindowResult]:
    """The on-time result of every window, in the order a task fires them:
    by end, then key, then start. Heartbeats (key None) are not events."""
    real = [e for e in events if e.key is not None]
    if isinstance(spec, Session):
        groups = sessions(real, spec.gap_ms)
    else:
        found: dict[tuple[str | None, int, int], list[int]] = {}
        for e in real:
            for start, end in time_windows(spec, e.ts):
                found.setdefault((e.key, start, end), []).append(e.value)
        groups = [(k, s, end, v) for (k, s, end), v in found.items()]
    results = [WindowResult(k, s, end, AGGREGATIONS[agg](v)) for k, s, end, v in groups]
    return sorted(results, key=lambda r: (r.end, r.key, r.start))


def count_results(events: Iterable[Event], spec: Count, agg: str) -> list[WindowResult]:
    """Per key, every ``size`` events in arrival order make a window, emitted
    with its last event; start/end are the first and last event time (+1)."""
    pending: dict[str | None, list[Event]] = {}
    out = []
    for e in events:
        if e.key is None:
            continue
        chunk = pending.setdefault(e.key, [])
        chunk.append(e)
        if len(chunk) == spec.size:
            times = [c.ts for c in chunk]
            value = AGGREGATIONS[agg]([c.value for c in chunk])
            out.append(WindowResult(e.key, min(times), max(times) + 1, value))
            pending[e.key] = []
    return out


def late_split(
    events: Iterable[Event], spec: Tumbling | Hopping, out_of_orderness_ms: int
) -> tuple[list[Event], list[tuple[Event, list[tuple[int, int]]]]]:
    """Replay one partition's watermark: (the late events, and each on-time
    event with the windows it still counts in). Heartbeats move the watermark."""
    newest: int | None = None
    late, on_time = [], []
    for e in events:
        wm = None if newest is None else newest - out_of_orderness_ms
        if e.key is not None:
            open_ = [(s, end) for s, end in time_windows(spec, e.ts) if wm is None or end > wm]
            if open_:
                on_time.append((e, open_))
            else:
                late.append(e)
        newest = e.ts if newest is None else max(newest, e.ts)
    return late, on_time


def results_of_split(
    on_time: list[tuple[Event, list[tuple[int, int]]]], agg: str
) -> list[WindowResult]:
    """The window results of the on-time events of :func:`late_split`."""
    found: dict[tuple[str | None, int, int], list[int]] = {}
    for e, windows in on_time:
        for start, end in windows:
            found.setdefault((e.key, start, end), []).append(e.value)
    results = [WindowResult(k, s, end, AGGREGATIONS[agg](v)) for (k, s, end), v in found.items()]
    return sorted(results, key=lambda r: (r.end, r.key, r.start))


def session_split(
    events: Iterable[Event], gap_ms: int, out_of_orderness_ms: int
) -> tuple[list[Event], list[tuple[str | None, int, int, list[int]]]]:
    """Replay one partition's sessions under its watermark, one event at a
    time: (the late events, every session's key, start, end and values).

    A session closes (for good: no allowed lateness) once the watermark
    reaches its end; an event joins the open sessions of its key it is
    closer than ``gap_ms`` to, merging them; one that joins none and whose
    own session would already be closed is late."""
    newest: int | None = None
    open_: dict[str | None, list[list[Event]]] = {}
    closed: list[list[Event]] = []
    late: list[Event] = []
    for e in events:
        wm = None if newest is None else newest - out_of_orderness_ms
        if wm is not None:
            for key, groups in open_.items():
                still = [g for g in groups if max(x.ts for x in g) + gap_ms > wm]
                closed.extend(g for g in groups if g not in still)
                open_[key] = still
        if e.key is not None:
            groups = open_.setdefault(e.key, [])
            near = [g for g in groups if any(abs(x.ts - e.ts) < gap_ms for x in g)]
            if not near and wm is not None and e.ts + gap_ms <= wm:
                late.append(e)
            else:
                merged = [x for g in near for x in g] + [e]
                open_[e.key] = [g for g in groups if g not in near] + [merged]
        newest = e.ts if newest is None else max(newest, e.ts)
    closed.extend(g for groups in open_.values() for g in groups)
    found = [
        (g[0].key, min(x.ts for x in g), max(x.ts for x in g) + gap_ms, [x.value for x in g])
        for g in closed
    ]
    return late, found
