"""The PostgreSQL event-store backend against the real server: appends and
reads, expected versions, idempotent retries, multi-stream atomicity,
deletion, snapshots, projections, subject keys, errors and the URL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from unbundled import AsyncEventStore, Log
from unbundled._waiters import SyncWaiter
from unbundled.backends import open_backend
from unbundled.backends.postgres import PostgresBackend
from unbundled.errors import (
    Closed,
    DuplicateEventId,
    Error,
    ProjectionConflict,
    StreamDeleted,
    StreamNotFound,
    SubjectForgotten,
    Unavailable,
    UsageError,
    WrongExpectedVersion,
)
from unbundled.eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventStore,
    NewEvent,
    ProjectionTxn,
    Snapshot,
    StreamWrite,
)

from .conftest import server_url

pytestmark = pytest.mark.postgres


def event(kind: str = "Happened", data: bytes = b"{}", metadata: bytes = b"{}") -> NewEvent:
    return NewEvent(str(uuid.uuid4()), kind, data, metadata)


def append(
    backend: PostgresBackend, stream: str, events: list[NewEvent], expected: int = ANY
) -> AppendResult:
    results = append_many(backend, [StreamWrite(stream, expected, events)])
    return results[0]


def append_many(backend: PostgresBackend, writes: list[StreamWrite]) -> list[AppendResult]:
    waiter = SyncWaiter()
    backend.submit_events(writes, waiter)
    results: list[AppendResult] = waiter.wait()
    return results


def test_events_round_trip_exactly(backend: PostgresBackend) -> None:
    every_byte = bytes(range(256))
    first = event("Opened", every_byte, b'{"user": "\\u0000"}')
    second = event("Deposited", b"", b"")
    result = append(backend, "account-1", [first, second], NO_STREAM)
    assert result == AppendResult("account-1", 0, 1, (1, 2))
    stored = backend.read_stream("account-1", 0, 10)
    assert [(e.id, e.type, e.data, e.metadata) for e in stored] == [
        (first.id, "Opened", every_byte, b'{"user": "\\u0000"}'),
        (second.id, "Deposited", b"", b""),
    ]
    assert [(e.stream, e.version, e.position, e.schema_version) for e in stored] == [
        ("account-1", 0, 1, 1),
        ("account-1", 1, 2, 1),
    ]
    assert backend.read_all(0, 10) == stored
    assert backend.read_stream("account-1", 1, 10) == stored[1:]
    assert backend.read_stream("account-1", 5, 1, backwards=True) == stored[::-1][:1]
    assert backend.safe_position() == 2
    assert backend.stream_state("account-1") == (("account-1", 1, False, False))


def test_positions_are_dense_and_filters_select(backend: PostgresBackend) -> None:
    append(backend, "account-1", [event("Opened")])
    append(backend, "order-7", [event("Placed"), event("Paid")])
    with pytest.raises(WrongExpectedVersion):
        append(backend, "order-7", [event("Lost")], NO_STREAM)  # consumes no position
    append(backend, "account-2", [event("Opened")])
    everything = backend.read_all(0, 100)
    assert [e.position for e in everything] == [1, 2, 3, 4]
    assert [e.stream for e in backend.read_all(0, 100, categories=["account"])] == [
        "account-1",
        "account-2",
    ]
    assert [e.type for e in backend.read_all(1, 100, types=["Paid", "Opened"])] == [
        "Paid",
        "Opened",
    ]
    assert backend.read_all(2, 1) == everything[2:3]
    assert backend.list_streams("", 10) == ["account-1", "account-2", "order-7"]
    assert backend.list_streams("account-1", 10, category="account") == ["account-2"]


def test_expected_versions(backend: PostgresBackend) -> None:
    with pytest.raises(WrongExpectedVersion) as raised:
        append(backend, "s-1", [event()], STREAM_EXISTS)
    assert raised.value.details == {"stream": "s-1", "expected": STREAM_EXISTS, "actual": -1}
    append(backend, "s-1", [event()], NO_STREAM)
    append(backend, "s-1", [event()], 0)
    append(backend, "s-1", [event()], STREAM_EXISTS)
    with pytest.raises(WrongExpectedVersion) as raised:
        append(backend, "s-1", [event()], 1)
    assert raised.value.details == {"stream": "s-1", "expected": 1, "actual": 2}
    with pytest.raises(WrongExpectedVersion):
        append(backend, "s-1", [event()], NO_STREAM)
    assert append(backend, "s-1", [event()], ANY).first_version == 3
    # A failed append to a new stream leaves no trace of the stream.
    with pytest.raises(WrongExpectedVersion):
        append(backend, "s-2", [event()], 5)
    assert backend.list_streams("", 10) == ["s-1"]
    assert backend.stream_state("s-2") == ("s-2", NO_STREAM, False, False)


def test_a_retry_returns_the_original_result_and_writes_nothing(backend: PostgresBackend) -> None:
    events = [event(), event()]
    first = append(backend, "s-1", events, NO_STREAM)
    append(backend, "s-1", [event()])
    again = append(backend, "s-1", events, NO_STREAM)  # the expected version no longer holds
    assert again == first
    assert backend.safe_position() == 3
    changed = NewEvent(events[0].id, events[0].type, b'{"other": 1}')
    with pytest.raises(DuplicateEventId):
        append(backend, "s-1", [changed])
    with pytest.raises(DuplicateEventId):
        append(backend, "s-2", [events[0]])  # same id, other stream
    with pytest.raises(DuplicateEventId):
        append(backend, "s-1", [events[0], event()])  # partly stored
    assert backend.safe_position() == 3


def test_multi_stream_appends_are_all_or_nothing(backend: PostgresBackend) -> None:
    append(backend, "a-1", [event()], NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as raised:
        append_many(
            backend,
            [StreamWrite("b-1", NO_STREAM, [event()]), StreamWrite("a-1", 5, [event()])],
        )
    assert raised.value.details["stream"] == "a-1"
    assert backend.stream_state("b-1").version == NO_STREAM
    assert backend.safe_position() == 1
    results = append_many(
        backend,
        [StreamWrite("b-1", NO_STREAM, [event(), event()]), StreamWrite("a-1", 0, [event()])],
    )
    assert results == [AppendResult("b-1", 0, 1, (2, 3)), AppendResult("a-1", 1, 1, (4,))]
    with pytest.raises(UsageError):
        append_many(backend, [StreamWrite("c-1", ANY, [event()])] * 2)


def wait_until_waiting_for_lock(admin: psycopg.Connection[Any], pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


def test_a_failing_append_fails_alone_in_its_batch(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal")
    try:
        append(backend, "held-1", [event()])
        append(backend, "s-1", [event()], NO_STREAM)
        reused = event()
        append(backend, "other-1", [reused])
        with psycopg.connect(server_url(), autocommit=True) as blocker:
            # Hold the lock on held-1's row: the writer's next transaction
            # waits, and every request submitted meanwhile forms one batch.
            blocker.execute("BEGIN")
            blocker.execute(
                f'SELECT * FROM "{backend.schema}".streams WHERE stream = %s FOR UPDATE',
                ("held-1",),
            )
            first = SyncWaiter()
            before = backend._writer.transactions
            backend.submit_events([StreamWrite("held-1", ANY, [event()])], first)
            writer = backend._writer._conn
            assert writer is not None
            wait_until_waiting_for_lock(blocker, writer.info.backend_pid)
            requests = [
                [StreamWrite("s-1", 0, [event()])],  # ok
                [StreamWrite("s-1", 0, [event()])],  # conflicts with the one before
                [StreamWrite("new-1", NO_STREAM, [event()])],  # ok
                [StreamWrite("new-2", 3, [event()])],  # conflict on a new stream
                [StreamWrite("s-2", ANY, [reused])],  # reused id
                [StreamWrite("s-1", 1, [event()]), StreamWrite("new-1", 0, [event()])],  # ok
                [StreamWrite("bad\x00name", ANY, [event()])],  # PostgreSQL refuses NUL
            ]
            waiters = [SyncWaiter() for _ in requests]
            for writes, waiter in zip(requests, waiters, strict=True):
                backend.submit_events(writes, waiter)
            blocker.execute("COMMIT")
        first.wait()
        outcomes: list[object] = []
        for waiter in waiters:
            try:
                outcomes.append(waiter.wait())
            except Error as exc:
                outcomes.append(type(exc))
        assert backend._writer.transactions == before + 2, "the requests shared one transaction"
        assert outcomes[1:5] == [
            WrongExpectedVersion,
            [AppendResult("new-1", 0, 0, (6,))],
            WrongExpectedVersion,
            DuplicateEventId,
        ]
        assert outcomes[0] == [AppendResult("s-1", 1, 1, (5,))]
        assert outcomes[5] == [AppendResult("s-1", 2, 2, (7,)), AppendResult("new-1", 1, 1, (8,))]
        assert outcomes[6] is UsageError
        assert backend.list_streams("", 10) == ["held-1", "new-1", "other-1", "s-1"]
        assert [e.position for e in backend.read_all(0, 100)] == list(range(1, 9))
    finally:
        backend.close()


def test_concurrent_writers_in_two_backends_respect_expected_versions(pg_url: str) -> None:
    first = PostgresBackend(pg_url, sync="normal")
    second = PostgresBackend(pg_url, sync="normal")
    try:
        outcomes: list[str] = []
        lock = threading.Lock()

        def race(backend: PostgresBackend, stream: str) -> None:
            try:
                append(backend, stream, [event()], NO_STREAM)
                result = "ok"
            except WrongExpectedVersion:
                result = "conflict"
            with lock:
                outcomes.append(result)

        threads = [
            threading.Thread(target=race, args=(b, f"race-{n}"))
            for n in range(20)
            for b in (first, second)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["conflict"] * 20 + ["ok"] * 20
        assert all(first.stream_state(f"race-{n}").version == 0 for n in range(20))
        assert [e.position for e in second.read_all(0, 100)] == list(range(1, 21))
    finally:
        first.close()
        second.close()


def test_an_event_id_raced_in_by_another_process_is_reported(pg_url: str) -> None:
    first = PostgresBackend(pg_url, sync="normal")
    second = PostgresBackend(pg_url, sync="normal")
    try:
        append(first, "warmup-1", [event()])
        append(second, "warmup-2", [event()])
        same = event()
        with psycopg.connect(server_url(), autocommit=True) as blocker:
            # Hold the counter: both writers look the id up (absent), then
            # wait to write; the second to get the counter hits the unique
            # index, rolls back, replays, and finds the id stored.
            blocker.execute("BEGIN")
            blocker.execute(f'UPDATE "{first.schema}".positions SET last = last')
            waiters = [SyncWaiter(), SyncWaiter()]
            for backend, stream, waiter in zip(
                (first, second), ("a-1", "b-1"), waiters, strict=True
            ):
                backend.submit_events([StreamWrite(stream, ANY, [same])], waiter)
                conn = backend._writer._conn
                assert conn is not None
                wait_until_waiting_for_lock(blocker, conn.info.backend_pid)
            blocker.execute("COMMIT")
        outcomes: dict[str, str] = {}
        for waiter in waiters:
            try:
                outcomes["ok"] = waiter.wait()[0].stream
            except DuplicateEventId as exc:
                outcomes["duplicate"] = exc.details["stream"]
        assert sorted(outcomes.values()) == ["a-1", "b-1"]
        stored = [e for e in first.read_all(0, 10) if e.id == same.id]
        assert [e.stream for e in stored] == [outcomes["ok"]]
        assert [e.position for e in first.read_all(0, 10)] == [1, 2, 3]
        # Both writers go on working.
        assert append(first, "a-1", [event()]).positions == (4,)
        assert append(second, "b-1", [event()]).positions == (5,)
    finally:
        first.close()
        second.close()


def test_soft_and_hard_delete(backend: PostgresBackend) -> None:
    append(backend, "s-1", [event(), event()])
    append(backend, "s-2", [event()])
    backend.delete_stream("s-1", 1, hard=False)
    with pytest.raises(StreamNotFound):
        backend.read_stream("s-1", 0, 10)
    assert backend.stream_state("s-1") == ("s-1", 1, True, False)
    assert backend.list_streams("", 10) == ["s-2"]
    # A later append continues the versions; the old events stay hidden.
    result = append(backend, "s-1", [event()], NO_STREAM)
    assert (result.first_version, result.positions) == (2, (4,))
    assert [e.version for e in backend.read_stream("s-1", 0, 10)] == [2]
    with pytest.raises(WrongExpectedVersion):
        backend.delete_stream("s-2", 5, hard=True)
    backend.delete_stream("s-2", 0, hard=True)
    with pytest.raises(StreamDeleted):
        backend.read_stream("s-2", 0, 10)
    with pytest.raises(StreamDeleted):
        append(backend, "s-2", [event()])
    with pytest.raises(StreamDeleted):
        backend.delete_stream("s-2", ANY, hard=False)
    backend.delete_stream("never-1", ANY, hard=True)  # tombstone a name never used
    with pytest.raises(StreamDeleted):
        append(backend, "never-1", [event()], NO_STREAM)
    assert [e.stream for e in backend.read_all(0, 10)] == ["s-1", "s-1", "s-2", "s-1"]


def test_snapshots(backend: PostgresBackend) -> None:
    assert backend.load_snapshot("s-1") is None
    backend.save_snapshot(Snapshot("s-1", 4, "State", 1, b"\x00four", 10))
    backend.save_snapshot(Snapshot("s-1", 9, "State", 2, b"nine", 20))
    backend.save_snapshot(Snapshot("s-1", 4, "State", 1, b"four again", 30))
    assert backend.load_snapshot("s-1") == Snapshot("s-1", 9, "State", 2, b"nine", 20)
    assert backend.load_snapshot("s-1", 8) == Snapshot("s-1", 4, "State", 1, b"four again", 30)
    assert backend.load_snapshot("s-1", 3) is None
    assert backend.load_snapshot("s-1", 2**63 - 1) is not None


def test_projection_sql_commits_with_the_checkpoint(backend: PostgresBackend) -> None:
    table = f'"{backend.schema}".balances'

    def create(txn: ProjectionTxn) -> None:
        txn.sql.execute(f"CREATE TABLE {table} (account text PRIMARY KEY, amount int)")
        txn.sql.execute(f"INSERT INTO {table} VALUES ('a-1', 10)")
        txn.put("totals", "all", b"10")
        assert txn.get("totals", "all") == b"10"

    backend.project("balances", 0, 3, create)
    assert backend.checkpoints() == {"balances": 3}
    assert backend.get_document("totals", "all") == b"10"

    def fail(txn: ProjectionTxn) -> None:
        txn.sql.execute(f"UPDATE {table} SET amount = 99")
        txn.delete("totals", "all")
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        backend.project("balances", 3, 5, fail)

    def bad_sql(txn: ProjectionTxn) -> None:
        txn.sql.execute("SELECT * FROM no_such_table")

    with pytest.raises(psycopg.errors.UndefinedTable):  # the handler's own error, as it is
        backend.project("balances", 3, 5, bad_sql)
    with pytest.raises(ProjectionConflict) as raised:
        backend.project("balances", 2, 5, create)
    assert raised.value.details == {"projection": "balances", "expected": 2, "actual": 3}
    assert backend.checkpoints() == {"balances": 3}
    assert backend.get_document("totals", "all") == b"10"
    with psycopg.connect(server_url()) as conn:
        assert conn.execute(f"SELECT amount FROM {table}").fetchall() == [(10,)]
    backend.project("other", 0, 1, lambda txn: txn.put("totals", "b", b"1"))
    assert backend.list_documents("totals", "", 10) == [("all", b"10"), ("b", b"1")]
    assert backend.list_documents("totals", "all", 1) == [("b", b"1")]
    backend.reset_projection("balances", ["totals"])
    assert backend.checkpoints() == {"balances": 0, "other": 1}
    assert backend.list_documents("totals", "", 10) == []
    with pytest.raises(UsageError):
        backend.project("other", 1, 2, lambda txn: txn.put("c", "k", "text"))  # type: ignore[arg-type]


def test_a_handler_may_read_the_store_with_a_pool_of_one(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal", pool_size=1)
    try:
        append(backend, "s-1", [event()])
        seen: list[int] = []
        # The handler's read needs a second connection while the projection
        # holds the only one: it must not wait for itself.
        backend.project("p", 0, 1, lambda txn: seen.append(len(backend.read_all(0, 10))))
        assert seen == [1]
        assert backend.checkpoints() == {"p": 1}
    finally:
        backend.close()


def test_one_of_two_racing_projection_runners_wins(pg_url: str) -> None:
    first = PostgresBackend(pg_url, sync="normal")
    second = PostgresBackend(pg_url, sync="normal")
    try:
        inside = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []

        def slow(txn: ProjectionTxn) -> None:
            txn.put("c", "runner", b"first")
            inside.set()
            assert release.wait(10)

        def run_first() -> None:
            try:
                first.project("p", 0, 10, slow)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run_first)
        thread.start()
        assert inside.wait(10)
        # The second runner blocks on the checkpoint's row lock until the
        # first commits, then finds the checkpoint moved.
        threading.Timer(0.2, release.set).start()
        with pytest.raises(ProjectionConflict) as raised:
            second.project("p", 0, 10, lambda txn: txn.put("c", "runner", b"second"))
        thread.join()
        assert errors == []
        assert raised.value.details["actual"] == 10
        assert second.get_document("c", "runner") == b"first"
    finally:
        first.close()
        second.close()


def test_subject_keys(backend: PostgresBackend) -> None:
    assert backend.subject_key("ada", b"k1") == b"k1"
    assert backend.subject_key("ada", b"k2") == b"k1"
    assert backend.find_subject_keys(["ada", "bob"]) == {"ada": b"k1"}
    backend.forget_subject("ada")
    backend.forget_subject("ada")
    backend.forget_subject("bob")
    assert backend.find_subject_keys(["ada", "bob"]) == {"ada": None, "bob": None}
    with pytest.raises(SubjectForgotten):
        backend.subject_key("ada", b"k3")
    with pytest.raises(SubjectForgotten):
        backend.subject_key("bob", b"k3")


def test_close_commits_what_is_queued(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal")
    waiters = [SyncWaiter() for _ in range(50)]
    for n, waiter in enumerate(waiters):
        backend.submit_events([StreamWrite(f"s-{n}", NO_STREAM, [event()])], waiter)
    backend.close()
    assert sorted(p for w in waiters for p in w.wait()[0].positions) == list(range(1, 51))
    with pytest.raises(Closed):
        backend.submit_events([StreamWrite("s-1", ANY, [event()])], SyncWaiter())
    with pytest.raises(Closed):
        backend.read_all(0, 10)
    backend.close()  # idempotent
    reopened = PostgresBackend(pg_url)
    try:
        assert reopened.safe_position() == 50
    finally:
        reopened.close()


def test_the_writer_reconnects_after_losing_its_connection(backend: PostgresBackend) -> None:
    append(backend, "s-1", [event()])
    with psycopg.connect(server_url(), autocommit=True) as admin:
        conn = backend._writer._conn
        assert conn is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    # Nothing of the next batch was sent on the dead connection: it is
    # retried on a new one and succeeds.
    assert append(backend, "s-1", [event()], 0).positions == (2,)


def test_urls_open_backend_for_every_part(pg_url: str) -> None:
    backend = open_backend(pg_url, sync="normal")
    try:
        assert isinstance(backend, PostgresBackend)
    finally:
        backend.close()
    with EventStore.open(pg_url.replace("postgresql://", "postgres://"), sync="normal") as store:
        assert store.append("s-1", [event()]).positions == (1,)
        assert [e.stream for e in store.read_all()] == ["s-1"]
    with Log.open(pg_url.replace("postgresql://", "postgres://"), sync="normal") as log:
        log.create_topic("t")
        assert log.append("t", b"x").offset == 0
        assert [r.value for r in log.read("t", 0, 0)] == [b"x"]
    with pytest.raises(UsageError):
        PostgresBackend(server_url() + "?schema=Bad-Name")
    with pytest.raises(UsageError):
        PostgresBackend(pg_url, sync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as raised:
        PostgresBackend("postgresql://postgres:secret@127.0.0.1:1/test?connect_timeout=2")
    assert "secret" not in str(raised.value)
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


def test_asyncio_appends_are_group_committed(pg_url: str) -> None:
    async def main() -> list[int]:
        store = await AsyncEventStore.open(pg_url, sync="normal")
        try:
            results = await asyncio.gather(
                *(store.append(f"s-{n}", [event()], NO_STREAM) for n in range(50))
            )
            assert [e.stream for e in await store.read_all(0, limit=100)] == [
                r.stream for r in sorted(results, key=lambda r: r.positions)
            ]
            return sorted(p for r in results for p in r.positions)
        finally:
            await store.close()

    assert asyncio.run(main()) == list(range(1, 51))


def test_without_psycopg_the_url_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from unbundled import EventStore, NotSupported\n"
        "try:\n"
        "    EventStore.open('postgresql://nobody@127.0.0.1:1/x')\n"
        "except NotSupported as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'unbundled[postgres]'" in out.stdout, out.stderr
