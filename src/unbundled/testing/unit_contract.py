"""The unit of work's contract: one transaction across the parts, on any backend.

Each ``check_*`` takes a :class:`UnitTarget` (how to open a fresh
:class:`~unbundled.Database` on a :class:`~unbundled.testing.SimClock`, and
which parts it can put in a transaction) and asserts one guarantee of
docs/explanation/transactions.md. Run every check on a backend::

    for check in CHECKS:
        check(target)

A check that needs a part the target lacks asserts ``NotSupported`` for it
instead, so every check says something on every backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from ..database import Database
from ..errors import (
    CompareFailed,
    Error,
    NotSupported,
    StaleGeneration,
    StaleToken,
    UsageError,
    WrongExpectedVersion,
)
from ..eventstore import ANY, NO_STREAM, Event
from ..log import Message, TopicPartition
from ..transaction import _unit
from .clock import SimClock
from .contract import poll_until, raises

__all__ = ["CHECKS", "Deposited", "UnitTarget"]


class Deposited(Event, frozen=True):
    """The event type the checks append."""

    amount: int


class UnitTarget(NamedTuple):
    """A backend under test: ``open(clock)`` gives a fresh database (the same
    storage on every call, so a reopen sees what was written); ``parts`` the
    parts (of ``unbundled.database._unit.PARTS``) it commits together."""

    name: str
    open: Callable[[SimClock], Database]
    parts: frozenset[str]
    durable: bool = True


Check = Callable[[UnitTarget], None]


def _open(target: UnitTarget, clock: SimClock | None = None) -> Database:
    return target.open(clock or SimClock())


def _snapshot(db: Database, target: UnitTarget) -> dict[str, Any]:
    """Everything the checks write, as plain values (for "nothing changed")."""
    seen: dict[str, Any] = {}
    if _unit.RECORDS in target.parts:
        seen["out"] = [(r.key, r.value) for r in db.log.read("out")]
        seen["offsets"] = db.log.describe_group("g").committed if db.log.groups() else {}
    try:
        seen["events"] = [(e.version, e.event) for e in db.events.read("acc-1")]
    except Exception as exc:
        seen["events"] = type(exc).__name__
    record = db.idempotency.get("req-1")
    seen["key"] = None if record is None else (record.state, record.result, record.phases)
    seen["kv"] = db.kv.read("limit")
    return seen


def _prepare(db: Database, target: UnitTarget) -> None:
    if _unit.RECORDS in target.parts:
        db.log.create_topic("out", exist_ok=True)
    db.kv.write("limit", b"100")


def check_every_part_commits_together(target: UnitTarget) -> None:
    """A transaction's writes to every part the backend serves are all
    visible after commit, and ``Committed`` says what each wrote."""
    with _open(target) as db:
        _prepare(db, target)
        attempt = db.idempotency.attempt("req-1", {"amount": 5})
        with db.transaction() as tx:
            tx.append_events("acc-1", [Deposited(amount=5)], NO_STREAM)
            if _unit.RECORDS in target.parts:
                tx.append("out", b"deposited 5", key=b"acc-1")
            tx.kv.compare_and_set("limit", new=b"95", expected_version=1)
            tx.kv.write("other", b"x")
            tx.record_phase(attempt, "charged", {"charge": 7})
            tx.complete(attempt, {"ok": True})
            if _unit.SQL in target.parts:
                tx.sql(lambda conn: conn.execute("SELECT 41 + 1").fetchone()[0])
        done = tx.result
        assert done is not None
        assert [(e.version, e.event) for e in db.events.read("acc-1")] == [(0, Deposited(amount=5))]
        assert done.events[0].first_version == 0 and done.events[0].last_version == 0
        if _unit.RECORDS in target.parts:
            assert [r.value for r in db.log.read("out")] == [b"deposited 5"]
            assert [(p.topic, p.offset) for p in done.positions] == [("out", 0)]
        assert db.kv.read("limit") == (b"95", 2) and done.kv == [2, 1]
        record = db.idempotency.get("req-1")
        assert record is not None and record.state == "completed"
        assert [r.state for r in done.idempotency] == ["in_progress", "completed"]
        assert attempt.completed and attempt.result == {"ok": True}
        if _unit.SQL in target.parts:
            assert done.sql == [42]
        replay = db.idempotency.attempt("req-1", {"amount": 5})
        assert replay.replayed and replay.result == {"ok": True}


def check_conflict_writes_nothing(target: UnitTarget) -> None:
    """A wrong expected version, a failed compare-and-set and a stale
    attempt each raise their own error with its details, and nothing of the
    transaction is written."""
    clock = SimClock()
    with _open(target, clock) as db:
        _prepare(db, target)
        db.events.append("acc-1", [Deposited(amount=1)])
        before = _snapshot(db, target)
        attempt = db.idempotency.attempt("req-1", None)
        before = _snapshot(db, target)

        def doomed(conflict: Callable[[Any], None]) -> Callable[[], None]:
            def run() -> None:
                with db.transaction() as tx:
                    if _unit.RECORDS in target.parts:
                        tx.append("out", b"never")
                    tx.kv.write("limit", b"0")
                    tx.record_phase(attempt, "p", 1)
                    conflict(tx)

            return run

        err = raises(
            WrongExpectedVersion,
            doomed(lambda tx: tx.append_events("acc-1", [Deposited(amount=2)], 5)),
        )
        assert err.details == {"stream": "acc-1", "expected": 5, "actual": 0}
        assert _snapshot(db, target) == before
        cas = raises(
            CompareFailed,
            doomed(lambda tx: tx.kv.compare_and_set("limit", new=b"1", expected_version=9)),
        )
        # The write earlier in the same transaction is seen: version 2.
        assert cas.details == {"key": "limit", "expected": 9, "version": 2}
        assert _snapshot(db, target) == before
        clock.advance(db.idempotency.lease_ms + 1)
        heir = db.idempotency.attempt("req-1", None)  # the lease ran out: taken over
        assert heir.token == attempt.token + 1
        before = _snapshot(db, target)
        stale = raises(StaleToken, doomed(lambda tx: tx.complete(attempt, "late")))
        assert stale.details["key"] == "req-1"
        assert _snapshot(db, target) == before


def check_conflicts_are_checked_in_one_order(target: UnitTarget) -> None:
    """With several conflicts in one transaction, every backend raises the
    same one: events, then idempotency, then key-value (whatever order the
    writes were added in)."""
    clock = SimClock()
    with _open(target, clock) as db:
        _prepare(db, target)
        attempt = db.idempotency.attempt("req-1", None)
        clock.advance(db.idempotency.lease_ms + 1)
        db.idempotency.attempt("req-1", None)  # takes the key over: attempt is stale

        def three() -> None:
            with db.transaction() as tx:
                tx.kv.compare_and_set("limit", new=b"1", expected_value=b"nope")
                tx.complete(attempt, 1)
                tx.append_events("acc-1", [Deposited(amount=2)], 3)

        def two() -> None:
            with db.transaction() as tx:
                tx.kv.compare_and_set("limit", new=b"1", expected_value=b"nope")
                tx.complete(attempt, 1)

        raises(WrongExpectedVersion, three)
        raises(StaleToken, two)


def check_exception_in_block_aborts(target: UnitTarget) -> None:
    """An exception inside ``with db.transaction()`` propagates and nothing
    is written; the transaction is finished either way."""
    with _open(target) as db:
        _prepare(db, target)
        before = _snapshot(db, target)

        class Boom(Error):
            pass

        def fail() -> None:
            with db.transaction() as tx:
                tx.append_events("acc-1", [Deposited(amount=1)])
                tx.kv.write("limit", b"0")
                raise Boom("inside the block")

        raises(Boom, fail)
        assert _snapshot(db, target) == before
        tx = db.transaction()
        tx.kv.write("limit", b"1")
        tx.commit()
        raises(UsageError, tx.commit)
        raises(UsageError, lambda: tx.kv.write("limit", b"2"))
        assert db.kv.read("limit") == (b"1", 2)
        empty = db.transaction()
        assert empty.commit() == _unit.EMPTY


def check_sql_error_aborts(target: UnitTarget) -> None:
    """Raw SQL that raises aborts everything (the caller gets its exception);
    where the backend has no SQL, adding it raises ``NotSupported``."""
    with _open(target) as db:
        _prepare(db, target)
        before = _snapshot(db, target)
        if _unit.SQL not in target.parts:
            tx = db.transaction()
            err = raises(NotSupported, lambda: tx.sql(lambda conn: None))
            assert err.details["part"] == _unit.SQL
            return

        def bad_sql() -> None:
            with db.transaction() as tx:
                tx.append_events("acc-1", [Deposited(amount=1)])
                tx.sql(lambda conn: conn.execute("SELECT * FROM no_such_table"))

        try:
            bad_sql()
        except Exception as exc:
            assert "no_such_table" in str(exc)
        else:
            raise AssertionError("SQL on a missing table committed")
        assert _snapshot(db, target) == before


def check_one_stream_twice(target: UnitTarget) -> None:
    """Two appends to one stream in a transaction are one write; the second
    must expect the version the first leaves (or ``ANY``), checked as it is
    added, the same on every backend."""
    with _open(target) as db:
        tx = db.transaction()
        tx.append_events("acc-1", [Deposited(amount=1)], NO_STREAM)
        err = raises(
            WrongExpectedVersion, lambda: tx.append_events("acc-1", [Deposited(amount=2)], 3)
        )
        assert err.details == {"stream": "acc-1", "expected": 3, "actual": 0}
        tx.append_events("acc-1", [Deposited(amount=2)], 0)
        tx.append_events("acc-1", [Deposited(amount=3)], ANY)
        done = tx.commit()
        assert [(r.first_version, r.last_version) for r in done.events] == [(0, 2)]
        assert [e.event.amount for e in db.events.read("acc-1")] == [1, 2, 3]
        vague = db.transaction()
        vague.append_events("acc-1", [Deposited(amount=4)], ANY)
        raises(UsageError, lambda: vague.append_events("acc-1", [Deposited(amount=5)], 3))


def check_event_ids_make_retries_safe(target: UnitTarget) -> None:
    """A transaction retried with the same event ids appends nothing again
    and returns the first result (the idempotent-append rule)."""
    with _open(target) as db:
        ids = ["2f1c6b1e-0000-4000-8000-000000000001"]
        first = db.transaction()
        first.append_events("acc-1", [Deposited(amount=1)], NO_STREAM, ids=ids)
        one = first.commit()
        again = db.transaction()
        again.append_events("acc-1", [Deposited(amount=1)], NO_STREAM, ids=ids)
        two = again.commit()
        assert one.events == two.events
        assert len(db.events.read("acc-1")) == 1


def check_effects_are_a_unit(target: UnitTarget) -> None:
    """Idempotency's ``complete(..., effects=)`` is a transaction like any
    other, the same on every backend: appends to one stream in two calls
    chain, each call's results are filled at commit, a conflict raises at
    ``complete`` and stores nothing."""
    from ..eventstore._protocol import NewEvent, StreamWrite

    def write(stream: str, expected: int, n: int) -> StreamWrite:
        return StreamWrite(
            stream,
            expected,
            [NewEvent(str(uuid.uuid4()), "Noted", b"{}") for _ in range(n)],
        )

    with _open(target) as db:
        idem = db.idempotency
        returned: list[list[Any]] = []
        during: list[int] = []

        def effects(tx: Any) -> None:
            first = tx.append_events([write("fx-1", NO_STREAM, 2)])
            second = tx.append_events([write("fx-1", 1, 1)])
            during.extend([len(first), len(second)])
            returned.extend([first, second])

        attempt = idem.attempt("req-fx", None)
        idem.complete(attempt, "done", effects=effects)
        assert during == [0, 0], "append results are known only after the commit"
        assert [(r.stream, r.first_version, r.last_version) for rs in returned for r in rs] == [
            ("fx-1", 0, 1),
            ("fx-1", 2, 2),
        ]
        assert [e.version for e in db.events.read_raw("fx-1")] == [0, 1, 2]
        late = idem.attempt("req-fx-2", None)

        def conflicting(tx: Any) -> None:
            tx.append_events([write("fx-1", 0, 1)])

        raises(WrongExpectedVersion, lambda: idem.complete(late, 1, effects=conflicting))
        record = idem.get("req-fx-2")
        assert record is not None and record.state == "in_progress"
        assert len(db.events.read_raw("fx-1")) == 3


def check_offsets_fenced_by_generation(target: UnitTarget) -> None:
    """A consumer's offsets commit with the transaction, fenced by its
    generation: a member that lost its partitions gets ``StaleGeneration``
    and nothing is written. Without the log: ``NotSupported``."""
    clock = SimClock()
    with _open(target, clock) as db:
        _prepare(db, target)
        if _unit.OFFSETS not in target.parts:
            tx = db.transaction()
            err = raises(NotSupported, lambda: tx.append("out", b"x"))
            assert err.details["part"] == _unit.RECORDS
            return
        log = db.log
        log.create_topic("in", 2)
        log.append_batch("in", [Message(b"%d" % i, key=b"%d" % i) for i in range(6)])
        worker = log.consumer("in", group="g", member_id="w", lease_ms=1000)
        records = poll_until(worker, 6)
        with db.transaction() as tx:
            tx.append_batch("out", [Message(r.value) for r in records[:3]])
            tx.append_events("acc-1", [Deposited(amount=3)])
            tx.commit_offsets(worker)
        committed = log.describe_group("g").committed
        assert sum(committed.values()) == 6
        before = _snapshot(db, target)
        clock.advance(1001)
        heir = log.consumer("in", group="g", member_id="heir", lease_ms=1000)
        heir.poll(0.01)
        tx = db.transaction()
        tx.append("out", b"zombie")
        tx.kv.write("limit", b"0")
        tx.commit_offsets(worker, offsets={TopicPartition("in", 0): 3})
        raises(StaleGeneration, tx.commit)
        assert _snapshot(db, target) == before
        heir.close()


def check_survives_reopen(target: UnitTarget) -> None:
    """What a transaction committed is there after the database is closed
    and opened again (durable backends)."""
    if not target.durable:
        return
    clock = SimClock()
    with _open(target, clock) as db:
        _prepare(db, target)
        attempt = db.idempotency.attempt("req-1", None)
        with db.transaction() as tx:
            tx.append_events("acc-1", [Deposited(amount=9)])
            tx.kv.write("limit", b"91")
            tx.complete(attempt, 9)
        before = _snapshot(db, target)
    with _open(target, clock) as db:
        assert _snapshot(db, target) == before


def check_parts_share_one_lifetime(target: UnitTarget) -> None:
    """Closing a part ends that handle only; closing the database closes
    every part and refuses new transactions."""
    from ..errors import Closed

    db = _open(target)
    events, kv = db.events, db.kv
    events.append("acc-1", [Deposited(amount=1)])
    events.close()
    assert kv.read("nothing") is None, "closing the event store closed the key-value store"
    raises(Closed, lambda: events.append("acc-1", [Deposited(amount=2)]))
    db.close()
    raises(Closed, lambda: kv.read("nothing"))
    raises(Closed, db.transaction)
    db.close()  # idempotent


#: Every check of the contract, each a function of a :class:`UnitTarget`.
CHECKS: list[Check] = [
    check_every_part_commits_together,
    check_conflict_writes_nothing,
    check_conflicts_are_checked_in_one_order,
    check_exception_in_block_aborts,
    check_sql_error_aborts,
    check_one_stream_twice,
    check_event_ids_make_retries_safe,
    check_effects_are_a_unit,
    check_offsets_fenced_by_generation,
    check_survives_reopen,
    check_parts_share_one_lifetime,
]
