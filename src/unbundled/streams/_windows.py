"""Windows and aggregations, sans I/O: which windows an event time falls in,
when a window is due, and how an accumulator grows and merges.

Everything here is a pure function of event times and values -- never of a
clock -- which is what makes a job's output a function of its input log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .. import limits
from ..errors import UsageError

# Window bounds are event-time milliseconds; a window is [start, end).


def _check_ms(name: str, value: object, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{name} must be an int of milliseconds, got {value!r}", value=value)
    if not low <= value <= limits.stream_window_ms_max:
        raise UsageError(
            f"{name} must be {low}..{limits.stream_window_ms_max} ms, got {value}", value=value
        )
    return value


class Tumbling(msgspec.Struct, frozen=True):
    """Fixed, non-overlapping windows of ``size_ms``, aligned to ``offset_ms``."""

    size_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        _check_ms("size_ms", self.size_ms)
        _check_ms("offset_ms", self.offset_ms, 0)

    def starts(self, ts: int) -> tuple[int, ...]:
        return (ts - (ts - self.offset_ms) % self.size_ms,)

    @property
    def length_ms(self) -> int:
        return self.size_ms


class Hopping(msgspec.Struct, frozen=True):
    """Windows of ``size_ms`` starting every ``slide_ms`` (they overlap when
    ``slide_ms < size_ms``); an event falls in ``size_ms / slide_ms`` of them."""

    size_ms: int
    slide_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        _check_ms("size_ms", self.size_ms)
        _check_ms("slide_ms", self.slide_ms)
        _check_ms("offset_ms", self.offset_ms, 0)
        if self.slide_ms > self.size_ms:
            raise UsageError(
                f"slide_ms ({self.slide_ms}) must not exceed size_ms ({self.size_ms}): "
                "events between windows would belong to none",
                value=self.slide_ms,
            )
        if self.size_ms // self.slide_ms > limits.stream_windows_per_event_max:
            raise UsageError(
                f"size_ms / slide_ms = {self.size_ms // self.slide_ms} windows per event; "
                f"at most {limits.stream_windows_per_event_max}",
                value=self.slide_ms,
            )

    def starts(self, ts: int) -> tuple[int, ...]:
        last = ts - (ts - self.offset_ms) % self.slide_ms
        out = []
        start = last
        while start > ts - self.size_ms:
            out.append(start)
            start -= self.slide_ms
        return tuple(reversed(out))

    @property
    def length_ms(self) -> int:
        return self.size_ms


class Session(msgspec.Struct, frozen=True):
    """Per key, events closer than ``gap_ms`` to each other form one window,
    ``[first event, last event + gap_ms)``; sessions that an event bridges merge."""

    gap_ms: int

    def __post_init__(self) -> None:
        _check_ms("gap_ms", self.gap_ms)


class Count(msgspec.Struct, frozen=True):
    """Per key, every ``size`` events form a window (no event time involved:
    nothing is ever late for a count window)."""

    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise UsageError(f"size must be an int, got {self.size!r}", value=self.size)
        if not 1 <= self.size <= limits.stream_count_window_max:
            raise UsageError(
                f"size must be 1..{limits.stream_count_window_max}, got {self.size}",
                value=self.size,
            )


Window = Tumbling | Hopping | Session | Count


class WindowResult(msgspec.Struct, frozen=True):
    """One window's result for one key.

    ``timing`` says which firing it is (Beam's pane timing): ``"early"`` -- a
    speculative result before the watermark passed ``end`` (more events may
    come); ``"on_time"`` -- the result when the watermark passed ``end``;
    ``"late"`` -- a corrected result for events that arrived after that but
    within the allowed lateness. Count windows have ``start``/``end`` = the
    event times of their first and last event (+1).
    """

    key: Any
    start: int
    end: int
    value: Any
    timing: str = "on_time"


# --- aggregations -------------------------------------------------------------

Acc = Any


class Agg:
    """How a window's accumulator starts, takes an event, merges (sessions)
    and turns into the result. Accumulators are stored between epochs, so
    they must be msgpack-encodable (None, bool, int, float, str, bytes,
    lists and dicts of those)."""

    __slots__ = ("add", "init", "merge", "name", "result")

    def __init__(
        self,
        name: str,
        init: Callable[[], Acc],
        add: Callable[[Acc, Any], Acc],
        merge: Callable[[Acc, Acc], Acc] | None,
        result: Callable[[Acc], Any] = lambda acc: acc,
    ) -> None:
        self.name = name
        self.init = init
        self.add = add
        self.merge = merge
        self.result = result


def count_agg() -> Agg:
    return Agg("count", lambda: 0, lambda acc, _v: acc + 1, lambda a, b: a + b)


def sum_agg(fn: Callable[[Any], Any] | None) -> Agg:
    if fn is None:
        return Agg("sum", lambda: 0, lambda acc, v: acc + v, lambda a, b: a + b)
    return Agg("sum", lambda: 0, lambda acc, v: acc + fn(v), lambda a, b: a + b)


def reduce_agg(fn: Callable[[Any, Any], Any]) -> Agg:
    # The accumulator is [] before the first event, then [value]: None is a value.
    def add(acc: list[Any], v: Any) -> list[Any]:
        return [fn(acc[0], v)] if acc else [v]

    def merge(a: list[Any], b: list[Any]) -> list[Any]:
        if not a or not b:
            return a or b
        return [fn(a[0], b[0])]

    return Agg("reduce", list, add, merge, lambda acc: acc[0] if acc else None)


def collect_agg() -> Agg:
    def add(acc: list[Any], v: Any) -> list[Any]:
        acc.append(v)  # the accumulator belongs to the window's state alone
        return acc

    return Agg("collect", list, add, lambda a, b: a + b)


def aggregate_agg(
    init: Callable[[], Acc],
    add: Callable[[Acc, Any], Acc],
    merge: Callable[[Acc, Acc], Acc] | None,
    result: Callable[[Acc], Any] | None,
) -> Agg:
    return Agg("aggregate", init, add, merge, result or (lambda acc: acc))
