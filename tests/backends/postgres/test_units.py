"""Units of work group-committed by the PostgreSQL writer (``_unit_stage``,
``_batch``): many callers' units share a transaction, also units with log
records beside plain appends of the log's own writer, a unit that
conflicts is refused alone (its records take no offset), and a batch whose
round trip fails is replayed one unit per transaction."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg
import pytest

import unbundled
from unbundled._waiters import SyncWaiter
from unbundled.backends.postgres import PostgresBackend
from unbundled.consistency.kv._protocol import Expect
from unbundled.errors import (
    CompareFailed,
    DuplicateEventId,
    Error,
    PartitionNotFound,
    StaleToken,
    StreamNotFound,
    TopicNotFound,
    WrongExpectedVersion,
)
from unbundled.eventstore import ANY, NO_STREAM, AppendResult, Event, NewEvent, StreamWrite
from unbundled.log._protocol import AppendItem, Position
from unbundled.transaction import _unit

from .conftest import server_url
from .test_backend import wait_until_waiting_for_lock

pytestmark = pytest.mark.postgres

_DAY_MS = 86_400_000


class Deposited(Event, frozen=True):
    amount: int


def event() -> NewEvent:
    return NewEvent(str(uuid.uuid4()), "Happened", b"{}", b"{}")


def make_unit(
    events: tuple[StreamWrite, ...] = (),
    idempotency: tuple[_unit.IdemOp, ...] = (),
    kv: tuple[_unit.KvOp, ...] = (),
    records: dict[str, list[AppendItem]] | None = None,
) -> _unit.Unit:
    unit = _unit.Unit()
    for topic, items in (records or {}).items():
        unit.appends[topic] = items
    for write in events:
        unit.add_events(write)
    unit.idempotency.extend(idempotency)
    unit.kv.extend(kv)
    return unit


def complete(key: str, token: int, result: bytes = b'"ok"') -> _unit.IdemOp:
    return _unit.IdemOp("complete", key, token, result, False, _DAY_MS)


def claim(backend: PostgresBackend, key: str) -> int:
    claimed = backend.claim(key, "fp", _DAY_MS, _DAY_MS)
    assert claimed.outcome == "claimed"
    return claimed.record.token


def outcome(waiter: SyncWaiter) -> object:
    try:
        result: object = waiter.wait()
    except Error as exc:
        return exc
    return result


def kv_rows(backend: PostgresBackend, key: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(server_url(), autocommit=True) as conn:
        return conn.execute(
            f'SELECT value, version FROM "{backend.schema}".kv WHERE key = %s', (key,)
        ).fetchall()


def wait_for_events(admin: psycopg.Connection[Any], schema: str, stream: str, count: int) -> None:
    deadline = time.monotonic() + 10
    query = f'SELECT count(*) FROM "{schema}".events WHERE stream = %s'
    while time.monotonic() < deadline:
        row = admin.execute(query, (stream,)).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"stream {stream!r} never reached {count} events")


Requests = list[tuple[str, "_unit.Unit | list[StreamWrite]"]]


class Held(NamedTuple):
    blocker: psycopg.Connection[Any]  # holds held's row: COMMIT lets the writer on
    admin: psycopg.Connection[Any]
    first: SyncWaiter  # the append that waits for held's row
    pid: int  # the writer's server process


@contextlib.contextmanager
def writer_held(backend: PostgresBackend, first: _unit.Unit | None = None) -> Iterator[Held]:
    """The writer waiting on the lock of stream held's row, which the
    yielded ``blocker`` holds, with ``first`` (a unit that writes held) or
    an append to held: every request submitted meanwhile forms one batch,
    taken once ``blocker`` commits."""
    done = SyncWaiter()
    backend.submit_events([StreamWrite("held", ANY, [event()])], done)
    done.wait()
    with (
        psycopg.connect(server_url(), autocommit=True) as blocker,
        psycopg.connect(server_url(), autocommit=True) as admin,
    ):
        blocker.execute("BEGIN")
        blocker.execute(
            f'SELECT * FROM "{backend.schema}".streams WHERE stream = %s FOR UPDATE', ("held",)
        )
        waiter = SyncWaiter()
        if first is None:
            backend.submit_events([StreamWrite("held", ANY, [event()])], waiter)
        else:
            backend.submit_unit(first, waiter)
        conn = backend._writer._conn
        assert conn is not None
        wait_until_waiting_for_lock(admin, conn.info.backend_pid)
        yield Held(blocker, admin, waiter, conn.info.backend_pid)


def in_one_batch(backend: PostgresBackend, requests: Requests) -> tuple[list[object], int]:
    """Submit ``requests`` so that the writer takes them as one batch; their
    outcomes, and how many transactions the writer committed for them."""
    writer = backend._writer
    with writer_held(backend) as held:
        before = writer.transactions
        waiters = [SyncWaiter() for _ in requests]
        for (_, work), waiter in zip(requests, waiters, strict=True):
            if isinstance(work, _unit.Unit):
                backend.submit_unit(work, waiter)
            else:
                backend.submit_events(work, waiter)
        held.blocker.execute("COMMIT")
        assert isinstance(outcome(held.first), list)
    got = [outcome(w) for w in waiters]
    return got, writer.transactions - before - 1


def test_units_from_64_threads_share_commits(pg_url: str) -> None:
    per_thread = 8
    with unbundled.open(pg_url, sync="normal", events=[Deposited]) as db:
        writer = db.backend._writer
        attempts = [
            [db.idempotency.attempt(f"req-{n}-{i}", {"n": n, "i": i}) for i in range(per_thread)]
            for n in range(64)
        ]
        results: dict[int, list[_unit.Committed]] = {}
        failures: list[BaseException] = []
        start = threading.Barrier(64)

        def work(n: int) -> None:
            try:
                start.wait()
                done = []
                for i in range(per_thread):
                    with db.transaction() as tx:
                        tx.append_events(f"acc-{n}", [Deposited(amount=i)], i - 1)
                        tx.complete(attempts[n][i], {"n": n, "i": i})
                        tx.kv.write(f"balance-{n}", b"%d" % i)
                    assert tx.result is not None
                    done.append(tx.result)
                results[n] = done
            except BaseException as exc:  # reported below, with the thread's number
                failures.append(exc)

        before = writer.transactions
        threads = [threading.Thread(target=work, args=(n,)) for n in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        units = 64 * per_thread
        committed = writer.transactions - before
        assert committed < units / 2, f"{units} units took {committed} transactions"
        for n in range(64):
            assert [c.events[0].first_version for c in results[n]] == list(range(per_thread))
            assert [c.kv for c in results[n]] == [[i + 1] for i in range(per_thread)]
            assert [e.event for e in db.events.read(f"acc-{n}")] == [
                Deposited(amount=i) for i in range(per_thread)
            ]
            assert db.kv.read(f"balance-{n}") == (b"%d" % (per_thread - 1), per_thread)
            for i, attempt in enumerate(attempts[n]):
                assert attempt.completed and attempt.result == {"n": n, "i": i}
                record = db.idempotency.get(f"req-{n}-{i}")
                assert record is not None and record == results[n][i].idempotency[0]
        positions = sorted(p for rs in results.values() for c in rs for p in c.events[0].positions)
        assert positions == list(range(1, units + 1)), "positions dense, each given once"


def test_a_conflicting_unit_fails_alone_in_its_batch(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal")  # the server's clock decides
    try:
        tokens = {key: claim(backend, key) for key in ("k1", "k2", "k5")}
        requests: Requests = [
            (
                "ok",
                make_unit(
                    (StreamWrite("s-1", NO_STREAM, [event()]),),
                    (complete("k1", tokens["k1"]),),
                    (_unit.KvOp("write", "a", b"1"),),
                ),
            ),
            (
                "stream taken by the unit before",
                make_unit(
                    (StreamWrite("s-1", NO_STREAM, [event()]),),
                    (complete("k2", tokens["k2"]),),
                    (_unit.KvOp("write", "b", b"never"),),
                ),
            ),
            (
                "completed by the first unit",
                make_unit((), (complete("k1", tokens["k1"]),), (_unit.KvOp("write", "c", b"x"),)),
            ),
            ("an append between units", [StreamWrite("s-2", NO_STREAM, [event()])]),
            (
                "a written by the first unit: at version 1",
                make_unit(
                    (StreamWrite("s-4", NO_STREAM, [event()]),),
                    (),
                    (_unit.KvOp("cas", "a", b"2", Expect(0, None)),),
                ),
            ),
            (
                "ok after the conflicts",
                make_unit(
                    (StreamWrite("s-1", 0, [event()]),),
                    (complete("k5", tokens["k5"]),),
                    (
                        _unit.KvOp("cas", "a", b"2", Expect(1, None)),
                        _unit.KvOp("delete", "ghost"),
                    ),
                ),
            ),
            ("an absent key, unchanged", make_unit((), (), (_unit.KvOp("delete", "none"),))),
        ]
        got, transactions = in_one_batch(backend, requests)
        assert transactions == 1, "the requests shared one transaction"
        assert [type(g) for g in got] == [
            _unit.Committed,
            WrongExpectedVersion,
            StaleToken,
            list,
            CompareFailed,
            _unit.Committed,
            _unit.Committed,
        ], [(name, g) for (name, _), g in zip(requests, got, strict=True)]
        ok, _, stale, appended, cas, later, absent = got
        assert isinstance(ok, _unit.Committed) and isinstance(later, _unit.Committed)
        assert ok.events == [AppendResult("s-1", 0, 0, (3,))]
        assert appended == [AppendResult("s-2", 0, 0, (4,))]
        assert later.events == [AppendResult("s-1", 1, 1, (5,))]
        assert ok.kv == [1] and later.kv == [2, False]
        assert isinstance(cas, CompareFailed)
        assert cas.details == {"key": "a", "expected": 0, "version": 1}
        assert isinstance(stale, StaleToken) and stale.details["key"] == "k1"
        assert isinstance(absent, _unit.Committed) and absent.kv == [False]
        # What each unit was answered is what is stored.
        assert [backend.get("k1"), backend.get("k5")] == [ok.idempotency[0], later.idempotency[0]]
        k2 = backend.get("k2")
        assert k2 is not None and k2.state == "in_progress"
        assert backend.kv_read("a") == (b"2", 2)
        assert [backend.kv_read(k) for k in ("b", "c", "ghost", "none")] == [None] * 4
        # The placeholders locked for absent keys left no row behind.
        assert [kv_rows(backend, k) for k in ("b", "c", "ghost", "none")] == [[]] * 4
        with pytest.raises(StreamNotFound):  # the refused unit's stream was never made
            backend.read_stream("s-4", 0, 10)
        assert backend.kv_write("ghost", b"g") == 1, "absent keys start at version 1"
    finally:
        backend.close()


def test_a_failed_batch_is_replayed_one_unit_per_transaction(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal")
    try:
        tokens = {key: claim(backend, key) for key in ("k1", "k2", "k3")}
        taken = event()  # another process stores this id while the batch is in flight
        schema = backend.schema
        writer = backend._writer
        with (
            writer_held(backend) as held,
            psycopg.connect(server_url(), autocommit=True) as rival,
        ):
            units = [
                make_unit(
                    (StreamWrite("s-1", NO_STREAM, [taken]),), (complete("k1", tokens["k1"]),)
                ),
                make_unit(
                    (StreamWrite("s-2", NO_STREAM, [event()]),),
                    (complete("k2", tokens["k2"]),),
                    (_unit.KvOp("write", "a", b"1"),),
                ),
                make_unit((), (complete("k3", tokens["k3"]),), (_unit.KvOp("write", "a", b"2"),)),
            ]
            waiters = [SyncWaiter() for _ in units]
            for unit, waiter in zip(units, waiters, strict=True):
                backend.submit_unit(unit, waiter)
            # Not committed yet: the units' batch does not see the id, and its
            # INSERT waits for this transaction, then fails (unique violation).
            rival.execute("BEGIN")
            rival.execute(
                f'INSERT INTO "{schema}".events VALUES '
                "(1000000, %s, 'elsewhere', 0, 'elsewhere', 'Happened', 1, '', '', 0)",
                (taken.id,),
            )
            before = writer.transactions
            held.blocker.execute("COMMIT")
            # Answered after the round trip that also read for the units'
            # batch: the lock the writer waits for next is the rival's.
            assert isinstance(outcome(held.first), list)
            wait_until_waiting_for_lock(held.admin, held.pid)
            rival.execute("COMMIT")
        got = [outcome(w) for w in waiters]
        assert isinstance(got[0], DuplicateEventId), got
        assert all(isinstance(g, _unit.Committed) for g in got[1:]), got
        assert writer.transactions == before + 1 + 2, "one transaction per unit that commits"
        assert backend.kv_read("a") == (b"2", 2)
        k1, k2, k3 = (backend.get(k) for k in ("k1", "k2", "k3"))
        assert k1 is not None and k1.state == "in_progress", "the failed unit left nothing"
        assert [k2, k3] == [c.idempotency[0] for c in got[1:] if isinstance(c, _unit.Committed)]
        with pytest.raises(StreamNotFound):
            backend.read_stream("s-1", 0, 10)
    finally:
        backend.close()


def test_a_batch_that_committed_is_answered_when_the_next_reads_fail(pg_url: str) -> None:
    # The batch's COMMIT and the next batch's reads share a round trip: when
    # the connection dies in the reads, the batch is answered as committed
    # (not replayed: a replayed unit could apply twice), and the next batch
    # is read again on a new connection.
    backend = PostgresBackend(pg_url, sync="normal")
    try:
        token = claim(backend, "k1")
        schema = backend.schema
        writer = backend._writer
        unit = make_unit(
            (StreamWrite("held", 0, [event()]),), (), (_unit.KvOp("write", "a", b"1"),)
        )
        with (
            writer_held(backend, unit) as held,
            psycopg.connect(server_url(), autocommit=True) as keeper,
        ):
            admin, pid = held.admin, held.pid
            keeper.execute("BEGIN")  # the next batch's reads will wait for k1's row
            keeper.execute(
                f'SELECT * FROM "{schema}".idempotency WHERE key = %s FOR UPDATE', ("k1",)
            )
            waiters = [SyncWaiter(), SyncWaiter()]
            backend.submit_unit(
                make_unit((), (complete("k1", token),), (_unit.KvOp("write", "a", b"2"),)),
                waiters[0],
            )
            backend.submit_unit(make_unit((), (), (_unit.KvOp("write", "b", b"1"),)), waiters[1])
            before = writer.transactions
            held.blocker.execute("COMMIT")
            # The first batch committed; then the next batch's reads wait for k1.
            wait_for_events(admin, schema, "held", 2)
            wait_until_waiting_for_lock(admin, pid)
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            done = outcome(held.first)
            keeper.execute("COMMIT")
        assert isinstance(done, _unit.Committed), done
        assert done.events == [AppendResult("held", 1, 1, (2,))] and done.kv == [1]
        got = [outcome(w) for w in waiters]
        assert all(isinstance(g, _unit.Committed) for g in got), got
        assert writer.transactions == before + 2
        assert backend.kv_read("a") == (b"2", 2), "the first unit applied once"
        assert backend.kv_read("b") == (b"1", 1)
        assert len(backend.read_stream("held", 0, 10)) == 2
    finally:
        backend.close()


def _records(*values: bytes, partition: int = 0) -> list[AppendItem]:
    return [AppendItem(partition, None, value, (), 7) for value in values]


def test_units_with_records_share_a_batch_and_a_refused_one_takes_no_offset(pg_url: str) -> None:
    with unbundled.open(pg_url, sync="normal") as db:
        db.log.create_topic("out", partitions=2)
        backend = db.backend
        assert isinstance(backend, PostgresBackend)
        requests: Requests = [
            (
                "two records and an event",
                make_unit(
                    (StreamWrite("s-1", NO_STREAM, [event()]),),
                    records={"out": _records(b"a", b"b")},
                ),
            ),
            (
                "s-1 taken by the unit before: its record is not written",
                make_unit(
                    (StreamWrite("s-1", NO_STREAM, [event()]),),
                    records={"out": _records(b"never")},
                ),
            ),
            ("a topic that does not exist", make_unit(records={"ghost": _records(b"x")})),
            (
                "a partition out of range",
                make_unit(records={"out": _records(b"x", partition=5)}),
            ),
            ("an append between units", [StreamWrite("s-2", NO_STREAM, [event()])]),
            (
                "records after the refusals",
                make_unit(
                    (StreamWrite("s-1", 0, [event()]),),
                    records={"out": _records(b"c") + _records(b"d", partition=1)},
                ),
            ),
        ]
        got, transactions = in_one_batch(backend, requests)
        assert transactions == 1, "the requests shared one transaction"
        assert [type(g) for g in got] == [
            _unit.Committed,
            WrongExpectedVersion,
            TopicNotFound,
            PartitionNotFound,
            list,
            _unit.Committed,
        ], [(name, g) for (name, _), g in zip(requests, got, strict=True)]
        ok, later = got[0], got[-1]
        assert isinstance(ok, _unit.Committed) and isinstance(later, _unit.Committed)
        assert ok.positions == [Position("out", 0, 0), Position("out", 0, 1)]
        assert later.positions == [Position("out", 0, 2), Position("out", 1, 0)]
        assert [r.value for r in db.log.read("out", 0)] == [b"a", b"b", b"c"]
        assert [r.value for r in db.log.read("out", 1)] == [b"d"]
        assert db.log.end_offsets("out") == {0: 3, 1: 1}
        first_unit, last_unit = requests[0][1], requests[-1][1]
        assert isinstance(first_unit, _unit.Unit) and isinstance(last_unit, _unit.Unit)
        assert [e.id for e in db.events.read_raw("s-1")] == [
            first_unit.events[0].events[0].id,
            last_unit.events[0].events[0].id,
        ], "the refused unit's event is not stored either"


def test_units_with_records_and_plain_appends_to_one_partition_stay_dense(pg_url: str) -> None:
    """The event writer's batches (units with records) and the log writer's
    (plain appends) lock the same partition from two connections of one
    process, and other processes' transactions would too: offsets stay
    dense, each record is stored once, and nothing deadlocks."""
    tasks, each = 16, 25

    async def run() -> tuple[list[Position], list[Position]]:
        db = await unbundled.open_async(pg_url, sync="normal", events=[Deposited])
        try:
            await db.log.create_topic("mixed")
            units: list[Position] = []
            plain: list[Position] = []

            async def unit_task(n: int) -> None:
                for i in range(each):
                    async with db.transaction() as tx:
                        tx.append_events(f"acc-{n}", [Deposited(amount=i)], i - 1)
                        await tx.append("mixed", b"u%d-%d" % (n, i))
                    assert tx.result is not None
                    units.extend(tx.result.positions)

            async def plain_task(n: int) -> None:
                for i in range(each):
                    plain.append(await db.log.append("mixed", b"p%d-%d" % (n, i)))

            await asyncio.wait_for(
                asyncio.gather(
                    *(unit_task(n) for n in range(tasks)), *(plain_task(n) for n in range(tasks))
                ),
                120,
            )
            return units, plain
        finally:
            await db.close()

    units, plain = asyncio.run(run())
    total = 2 * tasks * each
    assert sorted(p.offset for p in units + plain) == list(range(total))
    with unbundled.open(pg_url, events=[Deposited]) as db:
        values = [r.value for r in db.log.read("mixed", records_max=total + 10)]
        assert len(values) == total and len(set(values)) == total
        for position in units[:5] + plain[:5]:
            assert values[position.offset] is not None
        assert db.events.safe_position() == tasks * each
