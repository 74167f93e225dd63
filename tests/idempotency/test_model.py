"""Model-based test: SQLite idempotency keys against the memory backend (the spec).

Hypothesis drives both through the same calls: several workers (attempts)
claim keys with payloads, record phases, complete (with effects that append
events), fail with a deterministic error or release after a transient one;
the simulated clock jumps past leases and retention, so workers become
zombies whose late calls must be fenced; expired records are purged; and the
SQLite file is closed and reopened in the middle of it all, with attempts in
flight. Each call must give the same answer (value or error) on both, and
after every step every record and every event must be equal.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from unbundled.errors import Error
from unbundled.eventstore import ANY, NewEvent, StreamWrite
from unbundled.idempotency import Attempt, EffectsTxn, Idempotency
from unbundled.testing import SimClock
from unbundled.testing.idempotency_contract import Declined, events_of

KEYS = ["order-1", "order-2", "order-3"]
# Mostly the key's own payload (a retry), sometimes another one (a reused key).
PAYLOADS = [{"amount": 1}, {"amount": 1}, {"amount": 1}, {"amount": 2}, b"raw"]
WORKERS = 3
LEASE_MS, RETENTION_MS = 1_000, 5_000
PHASES = ["reserve", "charge", "ship"]


class Transient(Exception):
    """A failure the key is released for."""


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Error as exc:
        return type(exc).__name__, exc.details
    except Declined as exc:
        return "Declined", exc.args


class Worker:
    """One worker's attempt on both stores (None: idle)."""

    def __init__(self) -> None:
        self.model: Attempt | None = None
        self.real: Attempt | None = None
        self.payload: Any = None


class IdempotencyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="idem-model-"))
        self.clock = SimClock()
        self.settings: dict[str, Any] = {
            "lease_ms": LEASE_MS,
            "retention_ms": RETENTION_MS,
            "deterministic": (Declined,),
        }
        self.model = Idempotency.open("memory://", clock=self.clock, **self.settings)
        self.real = self.open_real()
        self.workers = [Worker() for _ in range(WORKERS)]
        self.serial = 0
        self.calls_since_reopen = 0  # (reopening is slow, and Hypothesis likes it too much)

    def open_real(self) -> Idempotency:
        return Idempotency.open(
            self.dir / "idem.db",
            sync="off",
            clock=self.clock,
            maintenance_interval_s=None,
            **self.settings,
        )

    def teardown(self) -> None:
        self.model.close()
        self.real.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def both(self, call: Callable[[Idempotency, Worker, bool], Any], worker: Worker) -> Any:
        self.calls_since_reopen += 1
        expected = outcome(lambda: call(self.model, worker, False))
        actual = outcome(lambda: call(self.real, worker, True))
        assert actual == expected, f"sqlite did {actual}, the model {expected}"
        # Shown by --hypothesis-show-statistics: which outcomes the runs reach.
        what = expected[1][0] if expected[0] == "ok" and call.__name__ == "claim" else ""
        event(f"{call.__name__}: {expected[0]} {what}")
        return expected

    def next_id(self) -> str:
        self.serial += 1
        return str(uuid.UUID(int=self.serial))

    # --- workers ------------------------------------------------------------

    @rule(
        n=st.integers(0, WORKERS - 1), key=st.sampled_from(KEYS), payload=st.sampled_from(PAYLOADS)
    )
    def claim(self, n: int, key: str, payload: Any) -> None:
        worker = self.workers[n]
        # A busy worker claiming again abandons its attempt (it crashed): the
        # lease keeps the key until it runs out.
        worker.model = worker.real = None

        def claim(idem: Idempotency, w: Worker, real: bool) -> Any:
            attempt = idem._attempt(key, payload, None)
            if not attempt.replayed:
                if real:
                    w.real = attempt
                else:
                    w.model = attempt
            error = None if attempt.error is None else str(attempt.error)
            return (attempt.replayed, attempt.token, attempt.result, error, attempt.resumed)

        self.both(claim, worker)
        assert (worker.model is None) == (worker.real is None)
        worker.payload = payload

    def has_busy(self) -> bool:
        return any(w.model is not None for w in self.workers)

    def pick(self, n: int) -> Worker:
        """The ``n``-th busy worker (round robin): rules for attempts never no-op."""
        busy = [w for w in self.workers if w.model is not None]
        return busy[n % len(busy)]

    def finish(self, worker: Worker) -> None:
        worker.model = worker.real = None

    @precondition(has_busy)
    @rule(n=st.integers(0, WORKERS - 1), result=st.integers(0, 9), effects=st.booleans())
    def complete(self, n: int, result: int, effects: bool) -> None:
        worker = self.pick(n)
        assert worker.model is not None
        key = worker.model.key
        event = NewEvent(self.next_id(), "Charged", msgspec.json.encode({"r": result}))

        def effect(tx: EffectsTxn) -> None:
            tx.append_events([StreamWrite(f"acct-{key}", ANY, [event])])

        def complete(idem: Idempotency, w: Worker, real: bool) -> None:
            attempt = w.real if real else w.model
            assert attempt is not None
            idem.complete(attempt, {"result": result}, effects=effect if effects else None)

        self.both(complete, worker)
        self.finish(worker)

    @precondition(has_busy)
    @rule(n=st.integers(0, WORKERS - 1), message=st.sampled_from(["declined", "no funds"]))
    def fail(self, n: int, message: str) -> None:
        worker = self.pick(n)

        def fail(idem: Idempotency, w: Worker, real: bool) -> None:
            attempt = w.real if real else w.model
            assert attempt is not None
            idem.fail(attempt, Declined(message))

        self.both(fail, worker)
        self.finish(worker)

    @precondition(has_busy)
    @rule(n=st.integers(0, WORKERS - 1))
    def release(self, n: int) -> None:
        worker = self.pick(n)

        def release(idem: Idempotency, w: Worker, real: bool) -> None:
            attempt = w.real if real else w.model
            assert attempt is not None
            idem._release(attempt)

        self.both(release, worker)
        self.finish(worker)

    @precondition(has_busy)
    @rule(n=st.integers(0, WORKERS - 1), phase=st.sampled_from(PHASES), output=st.integers(0, 9))
    def record_phase(self, n: int, phase: str, output: int) -> None:
        worker = self.pick(n)

        def step(idem: Idempotency, w: Worker, real: bool) -> Any:
            attempt = w.real if real else w.model
            assert attempt is not None
            ran: list[int] = []

            def run() -> dict[str, int]:
                ran.append(1)
                return {"out": output}

            return idem.phase(attempt, phase, run), ran

        result = self.both(step, worker)
        if result[0] == "StaleToken":
            self.finish(worker)  # a zombie learns it lost the key

    @precondition(has_busy)
    @rule(n=st.integers(0, WORKERS - 1), heir=st.integers(0, WORKERS - 1))
    def take_over(self, n: int, heir: int) -> None:
        """A worker stalls past its lease and another claims its key: the
        stalled one is now a zombie whose later calls must be fenced."""
        zombie = self.pick(n)
        assert zombie.model is not None
        key, payload = zombie.model.key, zombie.payload
        self.clock.advance(LEASE_MS)
        others = [i for i, w in enumerate(self.workers) if w is not zombie]
        self.claim(others[heir % len(others)], key, payload)

    # --- time, maintenance, restarts ---------------------------------------------

    @rule(
        ms=st.sampled_from([1, LEASE_MS // 2, LEASE_MS, RETENTION_MS // 2, RETENTION_MS]),
        purge=st.booleans(),
    )
    def advance(self, ms: int, purge: bool) -> None:
        self.clock.advance(ms)
        if purge:
            self.both(lambda idem, w, real: idem.purge_expired(), Worker())

    @precondition(lambda self: self.calls_since_reopen >= 6)
    @rule()
    def reopen(self) -> None:
        """Close the SQLite file and open it again; attempts in flight go on
        with the new handle (as if their process had only reconnected)."""
        self.real.close()
        self.real = self.open_real()
        self.calls_since_reopen = 0

    # --- the whole visible state ----------------------------------------------------

    @invariant()
    def same_records(self) -> None:
        assert self.real.records() == self.model.records()
        for state in ("in_progress", "completed"):
            assert self.real.records(state=state) == self.model.records(state=state)
        for key in KEYS:
            assert self.real.get(key) == self.model.get(key)

    @invariant()
    def same_events(self) -> None:
        def view(idem: Idempotency) -> list[tuple[str, str, int, bytes]]:
            return [(e.id, e.stream, e.version, e.data) for e in events_of(idem)]

        assert view(self.real) == view(self.model)


IdempotencyMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)
test_idempotency_model = IdempotencyMachine.TestCase
