"""The SQLite writer's leader path: a caller that finds the writer idle commits
its own request on its own thread; under load requests still queue and batch;
nothing run inside a commit may write through the store (it would wait for
itself)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from unbundled import AsyncLog, EventStore, Log, UsageError
from unbundled.eventstore import NewEvent, Projection, ProjectionTxn, StoredEvent
from unbundled.eventstore.api import new_event_id


def committing_threads(log: Log | AsyncLog) -> list[str]:
    """Record the name of the thread that runs each COMMIT on the writer's connection."""
    names: list[str] = []
    writer = log.backend._writer  # type: ignore[attr-defined]
    writer._conn.set_trace_callback(
        lambda sql: names.append(threading.current_thread().name) if sql == "COMMIT" else None
    )
    return names


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """``work(n)`` on ``count`` threads that start together; wait for all."""
    start = threading.Barrier(count)

    def body(n: int) -> None:
        start.wait()
        work(n)

    threads = [threading.Thread(target=body, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_lone_caller_commits_on_its_own_thread(tmp_path: Path) -> None:
    with Log.open(tmp_path / "a.db", sync="normal") as log:
        log.create_topic("t")
        names = committing_threads(log)
        for i in range(20):
            log.append("t", b"%d" % i)
        assert names == [threading.current_thread().name] * 20
        assert [r.value for r in log.read("t")] == [b"%d" % i for i in range(20)]


def test_asyncio_callers_always_queue(tmp_path: Path) -> None:
    async def main() -> list[str]:
        log = await AsyncLog.open(tmp_path / "b.db", sync="normal")
        try:
            await log.create_topic("t")
            names = committing_threads(log)
            for i in range(5):
                await log.append("t", b"%d" % i)
            return names
        finally:
            await log.close()

    names = asyncio.run(main())
    assert len(names) == 5 and all(name.startswith("unbundled-writer:") for name in names)


def test_many_threads_still_batch(tmp_path: Path) -> None:
    with Log.open(tmp_path / "c.db", sync="full") as log:
        log.create_topic("t", partitions=4)
        writer = log.backend._writer  # type: ignore[attr-defined]
        before = writer.transactions

        def work(n: int) -> None:
            for i in range(50):
                log.append("t", b"%d.%d" % (n, i), key=b"%d" % n)

        run_threads(32, work)
        assert sum(log.end_offsets("t").values()) == 32 * 50
        # 1,600 appends in far fewer commits: the writer kept batching.
        assert writer.transactions - before < 1_600 / 2


class WritesFromItsHandler(Projection):
    name = "bad"

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        self.store.append("other-1", [NewEvent(new_event_id(), "X", b"{}")])


def test_a_handler_cannot_write_through_the_store_it_runs_in(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "d.db", sync="normal") as store:
        store.append("acct-1", [NewEvent(new_event_id(), "A", b"{}")])
        runner = store.projections(WritesFromItsHandler(store))  # not started
        with pytest.raises(UsageError, match="from inside a write it is running"):
            runner.catch_up()
        assert [e.type for e in store.read_all()] == ["A"]  # nothing was written


def test_threads_sharing_an_idempotent_producer_still_batch(tmp_path: Path) -> None:
    """A producer submits under its lock (to keep sequences in order); had it
    committed inline there, its other threads would wait out each commit."""
    with Log.open(tmp_path / "e.db", sync="full") as log:
        log.create_topic("t")
        producer = log.producer("p")
        writer = log.backend._writer  # type: ignore[attr-defined]
        before = writer.transactions

        def work(n: int) -> None:
            for i in range(50):
                producer.append("t", b"%d.%d" % (n, i))

        run_threads(16, work)
        assert log.end_offsets("t")[0] == 16 * 50
        assert writer.transactions - before < 16 * 50 / 2
