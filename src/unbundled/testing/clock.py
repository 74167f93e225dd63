"""A simulated clock: time moves only when a test says so.

Backends take ``clock=`` (a callable returning milliseconds since the Unix
epoch) for everything they decide by time: group leases, retention,
tombstone expiry. Handing them a :class:`SimClock` makes those decisions
deterministic, so a test can step past a lease or a retention period at once
instead of sleeping, and a failing run replays exactly.
"""

from __future__ import annotations

import threading

from ..errors import UsageError

__all__ = ["SimClock"]

# 2023-11-14T22:13:20Z: a fixed, recognisable start, far from 0 so that
# "now - retention_ms" stays positive for any retention a test uses.
START_MS = 1_700_000_000_000


class SimClock:
    """Manual time in integer milliseconds; ``clock()`` reads it.

    >>> clock = SimClock()
    >>> clock.advance(1_500)
    1700000001500
    >>> clock() - START_MS
    1500

    Time never goes backwards (``advance`` takes ``ms >= 0``), as the wall
    clock a backend expects. Safe to share between threads.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start_ms: int = START_MS) -> None:
        if type(start_ms) is not int or start_ms < 0:
            raise UsageError(f"start_ms must be an int >= 0, got {start_ms!r}", start_ms=start_ms)
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now

    def now(self) -> int:
        """The current simulated time in ms (the same as calling the clock)."""
        return self._now

    def advance(self, ms: int) -> int:
        """Move time forward by ``ms`` milliseconds; return the new time."""
        if type(ms) is not int or ms < 0:
            raise UsageError(f"advance takes an int >= 0 of milliseconds, got {ms!r}", ms=ms)
        with self._lock:
            self._now += ms
            return self._now

    def __repr__(self) -> str:
        return f"SimClock({self._now})"
