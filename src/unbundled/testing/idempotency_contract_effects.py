"""The idempotency contract, continued: retention, purge, listing, effects in
the result's transaction, validation, closing and racing threads. See
:mod:`unbundled.testing.idempotency_contract` for the target and how to run it."""

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
    Closed,
    NotSupported,
    RequestInProgress,
    UsageError,
    WrongExpectedVersion,
)
from ..eventstore._protocol import ANY, NO_STREAM, NewEvent, StreamWrite
from ..idempotency import EffectsTxn, Idempotency
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

SQL_TABLE = "unbundled_contract_effects"


def _event_write(stream: str, event_id: str | None = None, note: str = "") -> StreamWrite:
    data = msgspec.json.encode({"note": note})
    return StreamWrite(stream, ANY, [NewEvent(event_id or str(uuid.uuid4()), "Charged", data)])


def _sql_rows(idem: Idempotency, sql: str) -> list[tuple[Any, ...]]:
    """Run a query inside an effects transaction (of a throwaway key) and return its rows."""
    rows: list[tuple[Any, ...]] = []

    def query(tx: EffectsTxn) -> None:
        cur = tx.sql.cursor()
        cur.execute(sql)
        if cur.description is not None:  # psycopg refuses fetchall() after DDL
            rows.extend(tuple(r) for r in cur.fetchall())

    with idem.run(f"sql-probe-{uuid.uuid4().hex}", None) as attempt:
        idem.complete(attempt, None, effects=query)
    return rows


def _sql_insert(tx: EffectsTxn, note: str) -> None:
    cur = tx.sql.cursor()
    cur.execute(f"CREATE TABLE IF NOT EXISTS {SQL_TABLE} (note TEXT NOT NULL)")
    cur.execute(f"INSERT INTO {SQL_TABLE} (note) VALUES ('{note}')")


def _sql_count(idem: Idempotency, note: str) -> int:
    _sql_rows(idem, f"CREATE TABLE IF NOT EXISTS {SQL_TABLE} (note TEXT NOT NULL)")
    return int(_sql_rows(idem, f"SELECT count(*) FROM {SQL_TABLE} WHERE note = '{note}'")[0][0])


def _appending(*writes: StreamWrite) -> Callable[[EffectsTxn], None]:
    """Effects that append ``writes``."""

    def effects(tx: EffectsTxn) -> None:
        tx.append_events(writes)

    return effects


def _touch_sql(tx: EffectsTxn) -> None:
    """Effects that only ask for the SQL connection."""
    assert tx.sql is not None


# --- retention, purge, listing ----------------------------------------------------------


def check_retention(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem, count = env.short(), Counter()
        assert idem.call("ret-1", "p", count.handler("old")) == "old"
        env.past_retention()
        assert idem.get("ret-1") is None and idem.records() == []
        # Expired is new again: any payload, token 1, the handler runs.
        with idem.run("ret-1", "another payload") as attempt:
            assert not attempt.replayed and attempt.token == 1
            idem.complete(attempt, "new")
        assert idem.call("ret-1", "another payload", count.handler("x")) == "new"
        # An abandoned in-progress key expires too.
        block = idem.run("ret-2", "p")
        block.__enter__()
        env.past_retention()
        assert idem.get("ret-2") is None
        assert idem.call("ret-2", "q", count.handler("fresh")) == "fresh"
        assert count.runs == 2
        with contextlib.suppress(_Died):
            block.__exit__(_Died, _Died(), None)


def check_purge_expired(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.short()
        for key in ("p-a", "p-b"):
            idem.call(key, None, lambda a: 1)
        assert idem.purge_expired() == 0
        env.pass_ms(env.retention_ms // 2)
        idem.call("p-c", None, lambda a: 2)
        env.pass_ms(env.retention_ms // 2 + 1)
        assert [r.key for r in idem.records()] == ["p-c"]
        assert idem.purge_expired() == 2
        assert idem.purge_expired() == 0
        assert idem.get("p-c") is not None


def check_list_by_state(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.idem
        for key in ("l-b", "l-d", "l-a"):
            idem.call(key, None, lambda a: 0)
        with idem.run("l-c", None) as held, idem.run("l-e", None) as other:
            assert [r.key for r in idem.records()] == ["l-a", "l-b", "l-c", "l-d", "l-e"]
            done = idem.records(state="completed")
            assert [r.key for r in done] == ["l-a", "l-b", "l-d"]
            assert all(r.state == "completed" for r in done)
            busy = idem.records(state="in_progress")
            assert [(r.key, r.token) for r in busy] == [("l-c", 1), ("l-e", 1)]
            assert [r.key for r in idem.records(after="l-b", limit=2)] == ["l-c", "l-d"]
            assert [r.key for r in idem.records(state="completed", after="l-b")] == ["l-d"]
            raises(UsageError, lambda: idem.records(state="failed"))  # type: ignore[arg-type]
            for limit in (0, -1):  # (SQLite reads LIMIT -1 as no limit)
                raises(UsageError, partial(idem.records, limit=limit))
            idem.complete(held, 1)
            idem.complete(other, 2)
        assert idem.records(state="in_progress") == []


# --- effects in the result's transaction ---------------------------------------------------


def check_effects_commit_with_the_result(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.idem
        if not target.effects:
            _check_effects_not_supported(idem)
            return
        note = uuid.uuid4().hex

        def effects(tx: EffectsTxn) -> None:
            tx.append_events([_event_write("acct-1", note=note)])
            if "sql" in target.effects:
                _sql_insert(tx, note)

        with idem.run("fx-1", {"amount": 3}) as attempt:
            assert events_of(idem, "acct-1") == [] and _state(idem.get("fx-1")) == "in_progress"
            idem.complete(attempt, {"ok": True}, effects=effects)
        assert len(events_of(idem, "acct-1")) == 1 and _state(idem.get("fx-1")) == "completed"
        if "sql" in target.effects:
            assert _sql_count(idem, note) == 1
        # A retry replays; the effects are not run again.
        assert idem.call("fx-1", {"amount": 3}, lambda a: {"ok": False}) == {"ok": True}
        assert len(events_of(idem, "acct-1")) == 1
        # A reader never sees one without the other.
        _check_effects_atomic_to_readers(idem)


def _check_effects_atomic_to_readers(idem: Idempotency) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            done = _state(idem.get("fx-2")) == "completed"
            if done and not events_of(idem, "acct-2"):
                seen.append("result without effects")
            if events_of(idem, "acct-2") and _state(idem.get("fx-2")) != "completed":
                seen.append("effects without result")

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        with idem.run("fx-2", None) as attempt:
            time.sleep(0.02)
            idem.complete(attempt, 2, effects=_appending(_event_write("acct-2")))
        time.sleep(0.02)
    finally:
        stop.set()
        reader.join()
    assert seen == [], seen[:3]


def _check_effects_not_supported(idem: Idempotency) -> None:
    ran: list[int] = []
    with contextlib.suppress(NotSupported), idem.run("fx-ns", None) as attempt:
        raises(NotSupported, lambda: idem.complete(attempt, 1, effects=lambda tx: ran.append(1)))
        record = idem.get("fx-ns")
        assert record is not None and record.state == "in_progress" and record.result is None
        assert ran == [], "effects ran on a backend that cannot commit them with the result"
        raise NotSupported("done checking")
    assert idem.get("fx-ns") is None, "the block's error did not release the key"


class _Boom(Exception):
    pass


def check_failing_effects_store_nothing(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.idem
        if not target.effects:
            return
        note = uuid.uuid4().hex

        def bad(tx: EffectsTxn) -> None:
            tx.append_events([_event_write("acct-3", note=note)])
            if "sql" in target.effects:
                _sql_insert(tx, note)
            raise _Boom("effects failed half way")

        with contextlib.suppress(_Boom), idem.run("fx-3", None) as attempt:
            raises(_Boom, lambda: idem.complete(attempt, "r", effects=bad))
            record = idem.get("fx-3")
            assert record is not None and record.state == "in_progress", record
            assert record.token == attempt.token and record.result is None
            assert events_of(idem, "acct-3") == [], "failed effects left events behind"
            raise _Boom("so the block fails")
        assert idem.get("fx-3") is None, "the failed block did not release the key"
        if "sql" in target.effects:
            assert _sql_count(idem, note) == 0, "failed effects left SQL rows behind"
        # An event append that conflicts fails the same way.
        with idem.run("fx-4", None) as attempt:
            idem.complete(attempt, 1, effects=_appending(_event_write("acct-4")))
        conflicting = StreamWrite("acct-4", NO_STREAM, [NewEvent(str(uuid.uuid4()), "X", b"{}")])
        with contextlib.suppress(WrongExpectedVersion), idem.run("fx-5", None) as attempt:
            idem.complete(attempt, 1, effects=_appending(conflicting))
        assert idem.get("fx-5") is None and len(events_of(idem, "acct-4")) == 1
        # The effects raising NotSupported for what the backend lacks stores nothing either.
        if "sql" not in target.effects:
            with contextlib.suppress(NotSupported), idem.run("fx-6", None) as attempt:
                idem.complete(attempt, 1, effects=_touch_sql)
            assert idem.get("fx-6") is None


# --- lifecycle and validation ---------------------------------------------------------------


def check_bad_keys(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.idem
        for key in ("", "has space", "x" * 256, "naïve", "tab\t", "new\nline", None, 7):
            for call in (
                lambda k=key: idem.call(k, None, lambda a: 1),
                lambda k=key: idem.run(k, None).__enter__(),
                lambda k=key: idem.get(k),
            ):
                err = raises(UsageError, call)
                assert repr(key) in str(err), f"the error does not name the key: {err}"
                assert err.details.get("key") == key, err.details
        assert idem.records() == []
        longest = "k" * 255
        assert idem.call(longest, None, lambda a: "fits") == "fits"
        assert idem.call("a.b_c:d@e/f+g=h~i-j", None, lambda a: "ok") == "ok"


def check_closed(target: IdempotencyTarget) -> None:
    with _env(target) as env:
        idem = env.idem
        idem.call("c-1", None, lambda a: 1)
        block = idem.run("c-2", None)
        attempt = block.__enter__()
        idem.close()
        idem.close()  # idempotent
        raises(Closed, lambda: idem.call("c-1", None, lambda a: 1))
        raises(Closed, lambda: idem.get("c-1"))
        raises(Closed, idem.records)
        raises(Closed, idem.purge_expired)
        raises(Closed, lambda: idem.complete(attempt, 2))
        # Leaving the block cannot release the key any more: it says so.
        raises(Closed, lambda: block.__exit__(None, None, None))


def check_threads_race_for_one_key(target: IdempotencyTarget) -> None:
    """A smaller version of the concurrency tests, for every backend."""
    with _env(target) as env:
        idem, count = env.idem, Counter()
        barrier = threading.Barrier(16)
        answers: list[Any] = []

        def caller(n: int) -> None:
            barrier.wait(10)
            try:
                answers.append(idem.call("race-1", {"q": 1}, count.handler("once", 0.05)))
            except RequestInProgress:
                answers.append("busy")

        run_threads(caller, 16)
        assert count.runs == 1 and set(answers) <= {"once", "busy"} and "once" in answers
        barrier = threading.Barrier(16)
        answers.clear()

        def patient(n: int) -> None:
            barrier.wait(10)
            answers.append(idem.call("race-2", {"q": 2}, count.handler("two", 0.05), wait_s=30))

        run_threads(patient, 16)
        assert count.runs == 2 and answers == ["two"] * 16, answers


CHECKS: list[Check] = [
    check_retention,
    check_purge_expired,
    check_list_by_state,
    check_effects_commit_with_the_result,
    check_failing_effects_store_nothing,
    check_bad_keys,
    check_closed,
    check_threads_race_for_one_key,
]
