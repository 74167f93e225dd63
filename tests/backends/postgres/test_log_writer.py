"""The log's group-commit writer on PostgreSQL: the requests queued while a
transaction runs share the next one, a refused batch fails alone in it, and
a writer that fails for a reason it does not expect tells every caller."""

from __future__ import annotations

import time

import pytest

from tests.backends.postgres.conftest import server_url
from tests.backends.postgres.test_backend import wait_until_waiting_for_lock
from unbundled import Log, Message, ThreadFailed, TopicPartition
from unbundled._waiters import SyncWaiter
from unbundled.backends.postgres import _log_stage
from unbundled.errors import (
    Error,
    PartitionNotFound,
    ProducerFenced,
    StaleGeneration,
    TopicNotFound,
)
from unbundled.log._protocol import AppendItem, OffsetCommit, ProducerStamp, WriteBatch

pytestmark = pytest.mark.postgres


def batch(topic: str, partition: int, value: bytes, **more: object) -> WriteBatch:
    return WriteBatch({topic: [AppendItem(partition, None, value, (), 1)]}, **more)  # type: ignore[arg-type]


def test_batches_queued_meanwhile_share_a_transaction_and_fail_alone(pg_url: str) -> None:
    import psycopg

    with Log.open(pg_url, sync="normal") as log:
        log.create_topic("t", 2)
        log.create_topic("held")
        epoch = log.producer("p").epoch
        worker = log.consumer("t", group="g", member_id="m", lease_ms=60_000)
        worker.poll(0.01)
        backend = log.backend
        with psycopg.connect(server_url(), autocommit=True) as blocker:
            # Hold the lock on held[0]'s row: the writer's next transaction
            # waits, and every batch submitted meanwhile forms one batch.
            blocker.execute("BEGIN")
            blocker.execute(
                f'SELECT * FROM "{backend.schema}".log_partitions AS p '  # type: ignore[attr-defined]
                "WHERE p.partition = 0 AND p.topic_id = (SELECT id FROM "
                f'"{backend.schema}".log_topics WHERE name = %s) FOR UPDATE',  # type: ignore[attr-defined]
                ("held",),
            )
            first = SyncWaiter()
            backend.submit(batch("held", 0, b"first"), first)
            writer = backend._log_writer_started  # type: ignore[attr-defined]
            deadline = time.monotonic() + 10
            while writer._conn is None and time.monotonic() < deadline:  # it connects first
                time.sleep(0.01)
            wait_until_waiting_for_lock(blocker, writer._conn.info.backend_pid)
            before = writer.transactions
            stale = OffsetCommit(
                "g", "m", {TopicPartition("t", 0): 1}, {TopicPartition("t", 0): 99}
            )
            batches = [
                batch("t", 0, b"a"),  # ok
                batch("nope", 0, b"x"),  # no such topic
                batch("t", 5, b"x"),  # no such partition
                batch("t", 1, b"b", producer=ProducerStamp("p", epoch + 1, 0)),  # fenced
                batch("t", 1, b"c", commits=(stale,)),  # a generation it never had
                batch("t", 0, b"d", producer=ProducerStamp("p", epoch, 0)),  # ok
                batch("t", 0, b"d", producer=ProducerStamp("p", epoch, 0)),  # its retry
            ]
            waiters = [SyncWaiter() for _ in batches]
            for one, waiter in zip(batches, waiters, strict=True):
                backend.submit(one, waiter)
            blocker.execute("COMMIT")
        first.wait()
        outcomes: list[object] = []
        for waiter in waiters:
            try:
                outcomes.append([(p.partition, p.offset) for p in waiter.wait()])
            except Error as exc:
                outcomes.append(type(exc))
        assert writer.transactions == before + 2, "the batches shared one transaction"
        assert outcomes == [
            [(0, 0)],
            TopicNotFound,
            PartitionNotFound,
            ProducerFenced,
            StaleGeneration,
            [(0, 1)],
            [(0, 1)],  # answered from the producer's window, written once
        ]
        assert [r.value for r in log.read("t", 0)] == [b"a", b"d"]
        assert log.read("t", 1) == []
        worker.close()


def test_a_writer_that_fails_tells_every_caller(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Log.open(pg_url, sync="normal") as log:
        log.create_topic("t")
        log.append("t", b"fine")

        def broken(self: object, batch: WriteBatch) -> object:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(_log_stage.LogStage, "decide", broken)
        with pytest.raises(ThreadFailed, match="injected fault"):
            log.append("t", b"lost")
        with pytest.raises(ThreadFailed, match="injected fault"):
            log.append_batch("t", [Message(b"later")])
        monkeypatch.undo()
        assert [r.value for r in log.read("t")] == [b"fine"]  # reads go on
