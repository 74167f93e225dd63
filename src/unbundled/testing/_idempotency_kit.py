"""What every check of the idempotency contract uses: the target under test,
one check's environment (store, clock, timings) and the helpers that drive
it. Below both halves of the suite (:mod:`.idempotency_contract`,
:mod:`.idempotency_contract_effects`), so neither imports the other."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ..eventstore._protocol import RecordedEvent
from ..idempotency import Attempt, Idempotency, IdempotencyRecord
from .clock import SimClock

Effect = Literal["events", "sql"]
E = TypeVar("E", bound=BaseException)
Check = Callable[["IdempotencyTarget"], None]


@dataclass(frozen=True)
class IdempotencyTarget:
    """The backend under test (see :mod:`unbundled.testing.idempotency_contract`)."""

    name: str
    open: Callable[[SimClock | None], Idempotency]
    sim_clock: bool = True
    effects: frozenset[Effect] = field(default_factory=lambda: frozenset({"events"}))


class Counter:
    """Counts handler runs across threads; ``handler(result)`` makes one."""

    def __init__(self) -> None:
        self.runs = 0
        self._lock = threading.Lock()

    def bump(self) -> int:
        with self._lock:
            self.runs += 1
            return self.runs

    def handler(self, result: Any, pause_s: float = 0.0) -> Callable[[Attempt], Any]:
        def run(attempt: Attempt) -> Any:
            self.bump()
            if pause_s:
                time.sleep(pause_s)  # widens the race window; never asserted on
            return result

        return run


def raises(kind: type[E], call: Callable[[], object]) -> E:
    """Run ``call`` and return the ``kind`` exception it must raise."""
    try:
        call()
    except kind as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"expected {kind.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"expected {kind.__name__}, but nothing was raised")


class _Env:
    """One check's store, clock and timings."""

    def __init__(self, target: IdempotencyTarget) -> None:
        self.target = target
        self.clock = SimClock() if target.sim_clock else None
        self.idem = target.open(self.clock)
        # Real clocks: leases short enough to sleep past, long enough for a
        # loaded machine to finish the few calls a check makes inside one.
        self.lease_ms = 30_000 if self.clock else 400
        self.retention_ms = 3_600_000 if self.clock else 800

    def with_settings(self, **settings: Any) -> Idempotency:
        return Idempotency(self.idem.backend, **settings)

    def short(self, **settings: Any) -> Idempotency:
        return self.with_settings(
            lease_ms=self.lease_ms, retention_ms=self.retention_ms, **settings
        )

    def pass_ms(self, ms: int) -> None:
        """Let ``ms`` milliseconds pass (and a little more on a real clock)."""
        if self.clock is not None:
            self.clock.advance(ms)
        else:
            time.sleep(ms / 1000 + 0.05)

    def past_lease(self) -> None:
        self.pass_ms(self.lease_ms + 1)

    def past_retention(self) -> None:
        self.pass_ms(self.retention_ms + 1)

    def close(self) -> None:
        self.idem.close()


@contextlib.contextmanager
def _env(target: IdempotencyTarget) -> Iterator[_Env]:
    env = _Env(target)
    try:
        yield env
    finally:
        env.close()


def events_of(idem: Idempotency, stream: str | None = None) -> list[RecordedEvent]:
    """Every event the backend's event store holds (optionally of one stream)."""
    out: list[RecordedEvent] = []
    while page := idem.backend.read_all(out[-1].position if out else 0, 1000):  # type: ignore[attr-defined]
        out.extend(page)
    return [e for e in out if stream is None or e.stream == stream]


def _state(record: IdempotencyRecord | None) -> str | None:
    return None if record is None else record.state


class _Died(Exception):
    pass
