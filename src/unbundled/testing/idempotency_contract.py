"""The contract of idempotency keys: checks every
:class:`~unbundled.idempotency.IdempotencyBackend` must pass, through the
:class:`~unbundled.idempotency.Idempotency` facade and the raw backend.

Each check is a plain function taking an :class:`IdempotencyTarget` and
raising ``AssertionError`` when a guarantee is broken. A target says three things:

* ``open(clock)`` returns a fresh, empty :class:`Idempotency`. With
  ``sim_clock=True`` the check passes a :class:`~unbundled.testing.SimClock`
  and the backend must decide every time by it (memory, SQLite). With
  ``sim_clock=False`` the check passes ``None`` and the backend keeps its own
  clock (Redis and PostgreSQL may use the server's): the checks then use
  short real leases (a few hundred ms) and sleep past them.
* ``effects``: what ``complete(..., effects=fn)`` can do in the result's
  transaction: ``{"events"}`` (memory: ``tx.append_events``), ``{"events",
  "sql"}`` (SQLite, PostgreSQL: also ``tx.sql``, a DB-API connection), or
  empty (Redis: any ``effects`` raises ``NotSupported``). With ``"events"``
  the backend must also serve the event store's ``read_all``.

The checks derive other settings (short leases, ``fingerprint=False``,
declared deterministic errors) with ``Idempotency(idem.backend, ...)`` over
the opened backend and close only the opened facade::

    from unbundled.testing.idempotency_contract import IdempotencyTarget, all_checks

    @pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__)
    def test_idempotency_contract(check, tmp_path):
        check(IdempotencyTarget(
            "sqlite", lambda clock: Idempotency.open(tmp_path / "x.db", clock=clock),
            sim_clock=True, effects=frozenset({"events", "sql"})))
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from ..errors import (
    IdempotencyKeyReused,
    RequestInProgress,
    StaleToken,
    UsageError,
)
from ..idempotency import Attempt, EffectsTxn, ReplayedError
from ._idempotency_kit import (
    Check,
    Counter,
    IdempotencyTarget,
    _Died,
    _env,
    _state,
    events_of,
    raises,
)
from ._log_kit import run_threads
from .idempotency_contract_effects import CHECKS as EFFECTS_CHECKS

__all__ = [
    "Check",
    "Counter",
    "Declined",
    "IdempotencyTarget",
    "all_checks",
    "events_of",
]


def all_checks() -> list[Check]:
    """Every check; each adapts itself to the target's flags."""
    return [*CHECKS, *EFFECTS_CHECKS]


class Declined(Exception):
    """A deterministic business error the checks declare (rebuilt from its message)."""


class CardExpired(Declined):
    """A subclass of a declared error: replayed as the declared class."""


class Transient(Exception):
    """A transient failure: the key must be released."""


def _raising(error: Exception) -> Callable[[Attempt], Any]:
    def handler(attempt: Attempt) -> Any:
        raise error

    return handler


def _noting(ran: list[str], name: str, output: int) -> Callable[[], int]:
    """A phase step that notes it ran and returns ``output``."""

    def step() -> int:
        ran.append(name)
        return output

    return step


# --- the basic exchange -------------------------------------------------------------


def check_first_call_runs_then_retry_replays(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.idem, Counter()
        result = {"charged": 10, "currency": "EUR", "ids": [1, 2]}
        assert idem.call("order-1", {"amount": 10}, count.handler(result)) == result
        assert count.runs == 1
        record = idem.get("order-1")
        assert record is not None and record.state == "completed", record
        assert record.token == 1 and not record.error and record.key == "order-1"
        assert msgspec.json.decode(record.result or b"") == result
        for _ in range(3):
            assert idem.call("order-1", {"amount": 10}, count.handler("other")) == result
        assert count.runs == 1, "a retry ran the handler again"
        with idem.run("order-1", {"amount": 10}) as attempt:
            assert attempt.replayed and attempt.result == result and attempt.error is None
        # Every JSON shape round-trips, None included.
        for i, value in enumerate([None, 0, "text", [1, "a"], {"nested": {"x": [None]}}]):
            assert idem.call(f"shape-{i}", i, Counter().handler(value)) == value
            assert idem.call(f"shape-{i}", i, count.handler("other")) == value
        assert count.runs == 1


def check_fingerprint(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.idem, Counter()
        idem.call("pay-1", {"amount": 10, "to": "bob"}, count.handler("paid"))
        # Key order does not change the canonical form.
        assert idem.call("pay-1", {"to": "bob", "amount": 10}, count.handler("x")) == "paid"
        err = raises(
            IdempotencyKeyReused, lambda: idem.call("pay-1", {"amount": 11}, count.handler("x"))
        )
        assert err.details.get("key") == "pay-1" and "'pay-1'" in str(err), str(err)
        assert count.runs == 1
        record = idem.get("pay-1")
        assert record is not None and msgspec.json.decode(record.result or b"") == "paid"
        # Also while the first request is still in flight.
        with idem.run("pay-2", b"raw bytes") as attempt:
            raises(IdempotencyKeyReused, lambda: idem.call("pay-2", b"raw byteS", count.handler(1)))
            idem.complete(attempt, "two")
        assert idem.call("pay-2", b"raw bytes", count.handler("x")) == "two"
        # Without fingerprints, a key means the request whatever the payload.
        loose = env.with_settings(fingerprint=False)
        assert loose.call("pay-3", {"amount": 1}, count.handler("three")) == "three"
        assert loose.call("pay-3", {"amount": 999}, count.handler("x")) == "three"
        assert count.runs == 2


def check_in_flight(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.idem, Counter()
        with idem.run("slow-1", {"n": 1}) as attempt:
            assert not attempt.replayed and attempt.token == 1
            err = raises(RequestInProgress, lambda: idem.call("slow-1", {"n": 1}, count.handler(0)))
            assert err.retryable and err.details.get("key") == "slow-1", err.details
            assert err.details.get("token") == 1
            # A waiter that runs out of patience gets RequestInProgress too.
            started = time.monotonic()
            raises(
                RequestInProgress,
                lambda: idem.call("slow-1", {"n": 1}, count.handler(0), wait_s=0.2),
            )
            assert time.monotonic() - started >= 0.15, "the waiter did not wait"
            assert _state(idem.get("slow-1")) == "in_progress"
            idem.complete(attempt, "first")
        assert count.runs == 0
        assert idem.call("slow-1", {"n": 1}, count.handler(0)) == "first"


def check_waiters_get_the_first_result(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.idem, Counter()
        got: list[Any] = []
        entered = threading.Event()

        def first() -> None:
            with idem.run("w-1", "p") as attempt:
                entered.set()
                time.sleep(0.2)  # the waiters queue up meanwhile
                idem.complete(attempt, {"winner": True})

        def waiter(n: int) -> None:
            entered.wait(10)
            got.append(idem.call("w-1", "p", count.handler({"winner": False}), wait_s=30))

        holder = threading.Thread(target=first)
        holder.start()
        run_threads(waiter, 4)
        holder.join()
        assert got == [{"winner": True}] * 4 and count.runs == 0, (got, count.runs)

        # A waiter whose first request fails transiently claims the key and runs.
        got.clear()
        entered.clear()

        def failing() -> None:
            with contextlib.suppress(Transient), idem.run("w-2", "p"):
                entered.set()
                time.sleep(0.2)
                raise Transient("the bank timed out")

        holder = threading.Thread(target=failing)
        holder.start()
        entered.wait(10)
        got.append(idem.call("w-2", "p", count.handler("second"), wait_s=30))
        holder.join()
        assert got == ["second"] and count.runs == 1


# --- leases, fencing and take-over ----------------------------------------------------


def check_lease_expiry_fences_the_zombie(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.short(), Counter()
        appended: list[str] = []

        def effects(tx: EffectsTxn) -> None:
            appended.append("zombie")

        with contextlib.suppress(_Died), idem.run("z-1", {"n": 1}) as zombie:
            assert zombie.token == 1
            if env.clock is not None:  # (a real short lease may already be gone)
                raises(RequestInProgress, lambda: idem.call("z-1", {"n": 1}, count.handler(0)))
            env.past_lease()
            with idem.run("z-1", {"n": 1}) as heir:
                assert not heir.replayed and heir.token == 2, heir.token
                err = raises(StaleToken, lambda: idem.complete(zombie, "late"))
                assert err.details.get("key") == "z-1" and err.details.get("token") == 1
                assert err.code == "stale_token"
                raises(StaleToken, lambda: idem.phase(zombie, "charge", lambda: "late"))
                raises(StaleToken, lambda: idem.complete(zombie, "late", effects=effects))
                assert appended == [], "a stale completion ran its effects"
                idem.backend.release("z-1", 1)  # the zombie's release: a no-op
                record = idem.get("z-1")
                assert record is not None and record.state == "in_progress" and record.token == 2
                assert record.result is None and not record.phases, record
                idem.complete(heir, "heir")
            raises(StaleToken, lambda: idem.complete(zombie, "later"))
            raise _Died  # the zombie's block ends in an error: its release is a no-op
        record = idem.get("z-1")
        assert record is not None and record.state == "completed" and record.token == 2
        assert idem.call("z-1", {"n": 1}, count.handler("x")) == "heir" and count.runs == 0


def check_tokens_grow_and_phases_survive_take_over(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.short()
        held = []  # keep the abandoned attempts' blocks alive: a crash releases nothing
        for expected in (1, 2, 3):
            block = idem.run("t-1", "p")
            attempt = block.__enter__()
            held.append(block)
            assert attempt.token == expected and attempt.resumed == (expected > 1)
            idem.phase(attempt, f"step-{expected}", partial(dict, step=expected))
            env.past_lease()
        record = idem.get("t-1")
        assert record is not None and record.token == 3, record
        assert set(record.phases) == {"step-1", "step-2", "step-3"}, record.phases
        for block in held:
            with contextlib.suppress(_Died):
                block.__exit__(_Died, _Died(), None)


def check_raw_backend_transitions(target: IdempotencyTarget) -> None:
    """The backend protocol itself: one claim answers with the record."""
    with _env(target) as env:
        backend, lease, keep = env.idem.backend, env.lease_ms, env.retention_ms
        claim = backend.claim("raw-1", "fp-a", lease, keep)
        assert claim.outcome == "claimed" and claim.record.token == 1, claim
        assert claim.record.state == "in_progress" and claim.record.fingerprint == "fp-a"
        if env.clock is not None:
            assert claim.record.lease_until_ms == env.clock() + lease
            assert claim.record.expires_ms == env.clock() + keep
        assert backend.claim("raw-1", "fp-b", lease, keep).outcome == "mismatch"
        if env.clock is not None:
            assert backend.claim("raw-1", "fp-a", lease, keep).outcome == "in_progress"
        raises(StaleToken, lambda: backend.complete("raw-1", 7, b"1", False, keep))
        raises(StaleToken, lambda: backend.record_phase("raw-1", 0, "p", b"1"))
        raises(StaleToken, lambda: backend.complete("missing", 1, b"1", False, keep))
        backend.release("raw-1", 7)  # not the holder: nothing happens
        assert _state(backend.get("raw-1")) == "in_progress"
        backend.record_phase("raw-1", 1, "p", b'"out"')
        done = backend.complete("raw-1", 1, b'"r"', False, keep)
        assert (
            done.state == "completed" and done.result == b'"r"' and done.phases == {"p": b'"out"'}
        )
        again = backend.claim("raw-1", "fp-a", lease, keep)
        assert again.outcome == "completed" and again.record.result == b'"r"', again
        assert backend.claim("raw-1", "fp-b", lease, keep).outcome == "mismatch"
        backend.release("raw-1", 1)  # completed: release is a no-op
        assert _state(backend.get("raw-1")) == "completed"
        raises(StaleToken, lambda: backend.complete("raw-1", 1, b'"again"', False, keep))
        stored = backend.get("raw-1")
        assert stored is not None and stored.result == b'"r"'
        # Released while held: gone, and the next claim starts at token 1 again.
        assert backend.claim("raw-2", "fp", lease, keep).outcome == "claimed"
        backend.release("raw-2", 1)
        assert backend.get("raw-2") is None
        assert backend.claim("raw-2", "fp", lease, keep).record.token == 1
        # wait_for_key returns at once for a settled key.
        assert backend.wait_for_key("raw-1", 5.0) == stored
        assert backend.wait_for_key("never-used", 5.0) is None


# --- error policy and recovery points -------------------------------------------------


def check_transient_errors_release_the_key(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.idem, Counter()

        def flaky(attempt: Attempt) -> str:
            count.bump()
            raise Transient("connection reset")

        err = raises(Transient, lambda: idem.call("tr-1", {"x": 1}, flaky))
        assert str(err) == "connection reset"
        assert idem.get("tr-1") is None, "a transient failure left the key held"
        assert idem.call("tr-1", {"x": 1}, count.handler("ok")) == "ok"
        assert count.runs == 2
        # A block that ends without complete() is a bug: released, and said so.
        with contextlib.suppress(UsageError), idem.run("tr-2", None):
            pass
        assert idem.get("tr-2") is None
        with idem.run("tr-3", None) as attempt:
            idem.complete(attempt, 1)
            raises(UsageError, lambda: idem.complete(attempt, 2))
            raises(UsageError, lambda: idem.fail(attempt, Declined("no")))
        assert idem.call("tr-3", None, count.handler(0)) == 1


def check_deterministic_errors_are_stored(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.with_settings(deterministic=(Declined,)), Counter()

        def decline(attempt: Attempt) -> str:
            count.bump()
            raise Declined("card declined: insufficient funds")

        for _ in range(3):
            err = raises(Declined, lambda: idem.call("det-1", {"card": 4}, decline))
            assert str(err) == "card declined: insufficient funds"
        assert count.runs == 1, "a stored error's retry ran the handler"
        record = idem.get("det-1")
        assert record is not None and record.state == "completed" and record.error, record
        # A facade that does not know the class still replays it, as ReplayedError.
        plain = env.with_settings()
        replayed = raises(ReplayedError, lambda: plain.call("det-1", {"card": 4}, decline))
        assert replayed.kind.endswith("Declined") and "insufficient" in replayed.message
        with plain.run("det-1", {"card": 4}) as attempt:
            assert attempt.replayed and isinstance(attempt.error, ReplayedError)
        assert count.runs == 1
        # A subclass of a declared class: the retry raises the declared class.
        first = raises(CardExpired, lambda: idem.call("det-2", None, _raising(CardExpired("exp"))))
        assert str(first) == "exp"
        again = raises(Declined, lambda: idem.call("det-2", None, _raising(Transient("run"))))
        assert str(again) == "exp" and type(again) is Declined, again


def check_recovery_points(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.short()
        ran: list[str] = []

        def phases(fail_at: str | None) -> Callable[[Attempt], Any]:
            def handler(attempt: Attempt) -> Any:
                outputs = []
                for name in ("reserve", "charge", "ship"):
                    if name == fail_at:
                        raise Transient(f"{name} failed")

                    def step(n: str = name) -> dict[str, str]:
                        ran.append(n)
                        return {"id": f"{n}-{uuid.uuid4().hex[:8]}"}

                    outputs.append(idem.phase(attempt, name, step))
                return outputs

            return handler

        # A transient error after phase 2: the retry resumes at phase 3.
        raises(Transient, lambda: idem.call("rp-1", "p", phases("ship")))
        assert ran == ["reserve", "charge"]
        first = idem.get("rp-1")
        assert first is not None and set(first.phases) == {"reserve", "charge"}, first
        done = idem.call("rp-1", "p", phases(None))
        assert ran == ["reserve", "charge", "ship"], f"phases re-ran: {ran}"
        assert done[:2] == [msgspec.json.decode(first.phases[n]) for n in ("reserve", "charge")]
        assert idem.call("rp-1", "p", phases("reserve")) == done  # completed: replayed

        # A crash after phase 2 (the lease runs out): the heir resumes at phase 3.
        ran.clear()
        block = idem.run("rp-2", "p")
        attempt = block.__enter__()
        idem.phase(attempt, "reserve", _noting(ran, "reserve", 1))
        idem.phase(attempt, "charge", _noting(ran, "charge", 2))
        env.past_lease()
        with idem.run("rp-2", "p") as heir:
            assert heir.resumed and heir.token == 2
            assert idem.phase(heir, "reserve", _noting(ran, "again", 0)) == 1
            assert idem.phase(heir, "charge", _noting(ran, "again", 0)) == 2
            assert idem.phase(heir, "ship", _noting(ran, "ship", 3)) == 3
            idem.complete(heir, "shipped")
        assert ran == ["reserve", "charge", "ship"], ran
        with contextlib.suppress(_Died):
            block.__exit__(_Died, _Died(), None)
        assert idem.call("rp-2", "p", phases(None)) == "shipped"
        raises(UsageError, lambda: idem.phase(heir, "late", lambda: 0))  # completed


def check_derived_keys(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.short()
        block = idem.run("req-9", "p")
        first = block.__enter__()
        bank = first.derived_key("bank")
        assert bank == first.derived_key("bank") and bank != first.derived_key("mail")
        assert bank.startswith("req-9") and idem.get(bank) is None
        env.past_lease()
        with idem.run("req-9", "p") as heir:
            assert heir.derived_key("bank") == bank, "a retry sent another key downstream"
            # A derived key is an ordinary key downstream.
            assert idem.call(bank, {"amount": 5}, lambda a: "charged") == "charged"
            idem.complete(heir, None)
        with contextlib.suppress(_Died):
            block.__exit__(_Died, _Died(), None)
        raises(UsageError, lambda: first.derived_key("no spaces"))


CHECKS: list[Check] = [
    check_first_call_runs_then_retry_replays,
    check_fingerprint,
    check_in_flight,
    check_waiters_get_the_first_result,
    check_lease_expiry_fences_the_zombie,
    check_tokens_grow_and_phases_survive_take_over,
    check_raw_backend_transitions,
    check_transient_errors_release_the_key,
    check_deterministic_errors_are_stored,
    check_recovery_points,
    check_derived_keys,
]
