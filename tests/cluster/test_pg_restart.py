"""PostgreSQL restarted under writers: callers get ``Unavailable``, and retries
with the same ids leave no duplicates and lose nothing acknowledged.

A private server (``unbundled.testing.pginstance``) is restarted twice
while four threads append: once ``fast`` (clients disconnected, a
checkpoint) and once ``immediate`` (every process aborted, crash recovery
at the next start) after a second down. Each writer appends numbered
events to its own stream with an exact expected version and event ids,
and retries a failed append with the same ids and expected version until
it succeeds: the idempotent rule must answer a retry of an append that did
commit (its COMMIT's answer lost) with the original result.

Then every stream holds exactly the acknowledged events, once each, in
order, at dense versions; no append hung; and every error a caller saw was
a retryable ``Unavailable`` or ``Timeout`` (a ``BackendError``).

The same test for the log: an idempotent producer's retries and a group
consumer across the restarts, every acknowledged record there exactly once;
and for transactions of an event and its outbox record: each there whole
or not at all.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest

import unbundled
from tests.cluster._logcheck import log_or_skip, run_producers_through
from unbundled import Event, EventStore
from unbundled.consistency import KV
from unbundled.errors import BackendError, StreamNotFound
from unbundled.testing.pginstance import PostgresInstance

pytestmark = pytest.mark.postgres

WRITERS = 4
RETRY_S = 0.05
CALL_S_MAX = 30.0  # an append that takes longer is a hang
RUN_S = 1.0  # between the faults


class Deposited(Event, frozen=True):
    amount: int


@dataclass
class Writer:
    """What one writer thread did."""

    stream: str
    acked: list[str] = field(default_factory=list)  # event ids, in order
    errors: Counter[str] = field(default_factory=Counter)
    retried_ok: int = 0  # appends that succeeded after an error
    slowest_s: float = 0.0
    crashed: BaseException | None = None


def _restarts(pg: PostgresInstance) -> None:
    """The faults: a fast restart, a second of work, an immediate (crash)
    restart after a second down."""
    pg.restart("fast")
    time.sleep(RUN_S)
    pg.restart("immediate", down_s=1.0)


def test_eventstore_appends_across_restarts(pg_instance: PostgresInstance) -> None:
    url = f"{pg_instance.url}?schema=restart"
    writers = [Writer(f"account-{i}") for i in range(WRITERS)]
    stop = threading.Event()

    with EventStore.open(url, events=[Deposited]) as store:

        def work(writer: Writer) -> None:
            version = -1  # NO_STREAM
            n = 0
            try:
                while not stop.is_set():
                    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{writer.stream}.{n}"))
                    failed = False
                    while True:
                        started = time.monotonic()
                        try:
                            result = store.append(
                                writer.stream,
                                [Deposited(amount=n)],
                                expected_version=version,
                                ids=[event_id],
                            )
                        except BackendError as exc:
                            writer.errors[type(exc).__name__] += 1
                            failed = True
                            time.sleep(RETRY_S)
                            continue
                        finally:
                            took = time.monotonic() - started
                            writer.slowest_s = max(writer.slowest_s, took)
                        break
                    assert result.first_version == version + 1, (writer.stream, n, result)
                    version = result.last_version
                    writer.acked.append(event_id)
                    writer.retried_ok += failed
                    n += 1
            except BaseException as exc:  # an untyped or wrong error: reported below
                writer.crashed = exc

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in writers]
        for thread in threads:
            thread.start()
        try:
            time.sleep(RUN_S)
            _restarts(pg_instance)
            time.sleep(RUN_S)
        finally:
            stop.set()
            for thread in threads:
                thread.join(CALL_S_MAX + 10)
        assert not any(thread.is_alive() for thread in threads), "an append hung"

    summary = ", ".join(
        f"{w.stream}: {len(w.acked)} acked, errors {dict(w.errors)}, "
        f"{w.retried_ok} retried ok, slowest {w.slowest_s:.2f} s"
        for w in writers
    )
    print(summary)  # shown with -s
    crashed = [w.crashed for w in writers if w.crashed is not None]
    assert not crashed, f"{crashed!r}; {summary}"
    assert all(w.slowest_s < CALL_S_MAX for w in writers), summary
    # The restarts were felt, as Unavailable (or Timeout): retryable errors.
    seen = sum((w.errors for w in writers), Counter[str]())
    assert seen, f"no caller saw the restarts: {summary}"
    assert set(seen) <= {"Unavailable", "Timeout"}, summary
    assert all(len(w.acked) >= 5 for w in writers), summary

    with EventStore.open(url, events=[Deposited]) as store:
        for writer in writers:
            events = list(store.iter_stream(writer.stream))
            assert [e.id for e in events] == writer.acked, writer.stream
            assert [e.version for e in events] == list(range(len(writer.acked)))
        everything = store.read_all_raw(0, limit=10_000)
        ids = [e.id for e in everything]
        assert len(ids) == len(set(ids)) == sum(len(w.acked) for w in writers)
        positions = [e.position for e in everything]
        assert positions == sorted(set(positions))


def test_log_idempotent_producer_across_restarts(pg_instance: PostgresInstance) -> None:
    """The log on PostgreSQL: producers append numbered records through an
    idempotent producer (a retry re-sends the same sequence) while the server
    restarts; every acknowledged record is there exactly once."""
    with log_or_skip(f"{pg_instance.url}?schema=logrestart") as log:
        run = run_producers_through(log, lambda: _restarts(pg_instance), consume=True)
        run.assert_no_loss_no_duplicates(consumed=True)
    print(run.summary())
    assert run.errors, f"no producer saw the restarts: {run.summary()}"
    assert set(run.errors) <= {"Unavailable", "Timeout"}, run.summary()


def test_after_a_restart_pooled_reads_do_not_fail(pg_instance: PostgresInstance) -> None:
    """Idle pooled connections the server closed are replaced when borrowed:
    a restart between two calls costs no caller an error (it cost one
    ``Unavailable`` per pooled connection before)."""
    url = f"{pg_instance.url}?schema=pooled"
    with EventStore.open(url, events=[Deposited]) as store, KV.open(url) as kv:
        store.append("account-1", [Deposited(amount=1)])
        kv.write("x", b"1")
        warm = [
            threading.Thread(target=lambda: [store.read("account-1") for _ in range(30)])
            for _ in range(4)
        ]
        for thread in warm:  # several pooled connections, idle afterwards
            thread.start()
        for thread in warm:
            thread.join()
        for mode in ("fast", "immediate"):
            pg_instance.restart(mode)
            for _ in range(8):
                assert [e.event.amount for e in store.read("account-1")] == [1]
                got = kv.read("x")
                assert got is not None and got.value == b"1"


def test_connections_detect_a_silent_server(pg_instance: PostgresInstance) -> None:
    """Every connection of the backend has TCP keepalives and a user timeout
    on its socket (40 s by default; the URL's values win), so a call cut off
    from the server fails within that instead of the kernel's ~15 minutes."""
    from unbundled.backends.postgres._schema import connect

    def options(url: str) -> tuple[int, int, int]:
        conn = connect(url, "full", "test", "public")
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                return (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                )
        finally:
            conn.close()

    assert options(pg_instance.url) == (1, 10, 40_000)
    assert options(f"{pg_instance.url}?tcp_user_timeout=2000&keepalives_idle=1") == (1, 1, 2000)


def test_units_with_records_across_restarts(pg_instance: PostgresInstance) -> None:
    """Transactions of an event and its outbox record, group-committed by
    the event writer, while the server restarts. A caller that gets
    ``Unavailable`` or ``Timeout`` does what the transactions page says:
    checks whether its transaction committed (its event id is there), and
    retries only if not. Afterwards every stream holds the acknowledged
    events once each, and the outbox holds exactly one record per event:
    no event without its record, no record without its event."""
    url = f"{pg_instance.url}?schema=unitrestart"
    writers = [Writer(f"order-{i}") for i in range(WRITERS)]
    stop = threading.Event()

    with unbundled.open(url, events=[Deposited]) as db:
        db.log.create_topic("outbox", partitions=2)

        def committed(stream: str, event_id: str) -> bool:
            while True:
                try:
                    return any(e.id == event_id for e in db.events.iter_stream(stream))
                except StreamNotFound:
                    return False
                except BackendError:
                    time.sleep(RETRY_S)  # the server is still down: ask again

        def work(writer: Writer) -> None:
            version, n = -1, 0
            try:
                while not stop.is_set():
                    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{writer.stream}.{n}"))
                    failed = False
                    while True:
                        started = time.monotonic()
                        try:
                            with db.transaction() as tx:
                                tx.append_events(
                                    writer.stream, [Deposited(amount=n)], version, ids=[event_id]
                                )
                                tx.append("outbox", event_id.encode(), key=writer.stream.encode())
                        except BackendError as exc:
                            writer.errors[type(exc).__name__] += 1
                            failed = True
                            if committed(writer.stream, event_id):
                                break
                            time.sleep(RETRY_S)
                            continue
                        finally:
                            writer.slowest_s = max(writer.slowest_s, time.monotonic() - started)
                        break
                    version += 1
                    writer.acked.append(event_id)
                    writer.retried_ok += failed
                    n += 1
            except BaseException as exc:  # an untyped or wrong error: reported below
                writer.crashed = exc

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in writers]
        for thread in threads:
            thread.start()
        try:
            time.sleep(RUN_S)
            _restarts(pg_instance)
            time.sleep(RUN_S)
        finally:
            stop.set()
            for thread in threads:
                thread.join(CALL_S_MAX + 10)
        assert not any(thread.is_alive() for thread in threads), "a transaction hung"

    summary = ", ".join(
        f"{w.stream}: {len(w.acked)} acked, errors {dict(w.errors)}, "
        f"{w.retried_ok} after an error, slowest {w.slowest_s:.2f} s"
        for w in writers
    )
    print(summary)  # shown with -s
    crashed = [w.crashed for w in writers if w.crashed is not None]
    assert not crashed, f"{crashed!r}; {summary}"
    seen = sum((w.errors for w in writers), Counter[str]())
    assert seen, f"no caller saw the restarts: {summary}"
    assert set(seen) <= {"Unavailable", "Timeout"}, summary
    assert all(len(w.acked) >= 5 for w in writers), summary

    with unbundled.open(url, events=[Deposited]) as db:
        events = []
        for writer in writers:
            stored = [e.id for e in db.events.iter_stream(writer.stream)]
            assert stored == writer.acked, writer.stream
            events += stored
        records = [
            r.value.decode()
            for partition in range(2)
            for r in db.log.read("outbox", partition, records_max=100_000)
            if r.value is not None
        ]
        assert sorted(records) == sorted(events), "one outbox record per event, no other"
