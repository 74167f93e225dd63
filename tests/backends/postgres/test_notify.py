"""Waiting for events on PostgreSQL: LISTEN/NOTIFY wakes a waiter when
another backend (another process, as far as the server can tell) commits,
and losing the listening connection falls back to polling, then reconnects."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from unbundled._waiters import SyncWaiter
from unbundled.backends.postgres import PostgresBackend
from unbundled.eventstore import ANY, EventStore, NewEvent, StreamWrite

from .conftest import server_url

pytestmark = pytest.mark.postgres


def append_soon(backend: PostgresBackend, stream: str, delay_s: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)  # let the waiter block first; the test does not depend on it
        waiter = SyncWaiter()
        event = NewEvent(str(uuid.uuid4()), "Happened", b"{}")
        backend.submit_events([StreamWrite(stream, ANY, [event])], waiter)
        waiter.wait()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_commit_elsewhere_wakes_a_waiter(pg_url: str) -> None:
    reader = PostgresBackend(pg_url, sync="normal")
    writer = PostgresBackend(pg_url, sync="normal")
    try:
        token = reader.events_change_token()
        assert reader.wait_for_events(token, 0.05) == token  # nothing happened
        assert reader._notifier._listening
        thread = append_soon(writer, "s-1", 0.1)
        moved = reader.wait_for_events(token, 30)
        thread.join()
        assert moved != token
        assert [e.stream for e in reader.read_all(0, 10)] == ["s-1"]
        # A delete is a change too.
        token = reader.events_change_token()
        writer.delete_stream("s-1", ANY, hard=False)
        assert reader.wait_for_events(token, 30) != token
    finally:
        reader.close()
        writer.close()


def test_losing_the_listener_falls_back_to_polling_then_listens_again(pg_url: str) -> None:
    reader = PostgresBackend(pg_url, sync="normal")
    writer = PostgresBackend(pg_url, sync="normal")
    try:
        token = reader.events_change_token()
        with psycopg.connect(server_url(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %%' AND application_name = %s",
                (f"unbundled {reader.schema}",),
            ).fetchall()
        assert killed == [(True,)]
        # Whether the poll or the reconnection notices first, every commit
        # after the token wakes the waiter.
        seen = 0
        deadline = time.monotonic() + 60
        for n in range(3):
            thread = append_soon(writer, f"s-{n}", 0.05)
            while seen < n + 1:
                assert time.monotonic() < deadline, f"event {n} never woke the waiter"
                token = reader.wait_for_events(token, 30)
                seen = len(reader.read_all(0, 10))
            thread.join()
        assert seen == 3
        while not reader._notifier._listening:
            assert time.monotonic() < deadline, "the listener never reconnected"
            time.sleep(0.01)
    finally:
        reader.close()
        writer.close()


def test_close_wakes_waiters(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal")
    token = backend.events_change_token()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(backend.wait_for_events(token, 60)))
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    backend.close()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - started < 30
    assert result == [token]


def test_a_subscription_catches_up_then_follows_another_store(pg_url: str) -> None:
    with EventStore.open(pg_url, sync="normal") as reader, EventStore.open(pg_url) as writer:
        writer.append("account-1", [NewEvent(str(uuid.uuid4()), "Opened", b"{}")])
        writer.append("order-1", [NewEvent(str(uuid.uuid4()), "Placed", b"{}")])
        subscription = reader.subscribe(after_position=0, categories=["account"])
        first = next(subscription)
        assert (first.stream, first.position) == ("account-1", 1)
        thread = append_soon(writer.backend, "account-2", 0.05)  # type: ignore[arg-type]
        live = next(subscription)
        thread.join()
        assert (live.stream, live.position) == ("account-2", 3)
        subscription.stop()
