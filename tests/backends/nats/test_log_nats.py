"""The log on NATS JetStream: what only NATS needs checking.

The log's contract runs on NATS through the matrix (``tests/log``); here:
message-id dedupe when a batch is published again (after a crash between
the records and the producer's document) and what the duplicate window
limits; a commit decided against a group that changes before it is
stored; waking a reader of another connection; checksums; two connections
appending to one partition; ``destroy`` removing the record streams.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

import unbundled
from tests.backends.nats._nats import admin, bucket_url, delete_bucket, fresh_bucket, server
from unbundled import (
    AsyncLog,
    BackendError,
    CorruptionError,
    Log,
    Message,
    NotSupported,
    RecordTooLarge,
    StaleGeneration,
    TopicPartition,
    UsageError,
)
from unbundled.backends import destroy
from unbundled.backends.nats import NatsBackend
from unbundled.backends.nats._log_meta import (
    Documents,
    ProducerDoc,
    producer_subject,
    record_subject,
    stream_name,
    stream_pattern,
)
from unbundled.log._protocol import AppendItem
from unbundled.testing import SimClock

pytestmark = pytest.mark.nats


@pytest.fixture
def url() -> Iterator[str]:
    name = fresh_bucket("test_log")
    server()  # skip (or fail with CI=true) before anything else without the server
    yield bucket_url(name)
    delete_bucket(name)


def nats(log: Log) -> NatsBackend:
    backend = log.backend
    assert isinstance(backend, NatsBackend)
    return backend


def forget_producer(backend: NatsBackend, producer_id: str) -> None:
    """What a crash between publishing and step 4 leaves: records in, the
    producer's document not updated (its epoch kept)."""
    subject = producer_subject(backend.bucket, producer_id)

    def decide(body: bytes | None) -> tuple[bytes, None]:
        doc = msgspec.json.decode(body or b"{}", type=ProducerDoc)
        return msgspec.json.encode(ProducerDoc(epoch=doc.epoch)), None

    backend._run(lambda: backend._docs.update(subject, decide), "forgetting")


def publish_prefix(
    backend: NatsBackend, topic: str, values: list[bytes], msg_ids: list[str]
) -> None:
    """Publish the first records of a batch as ``_write`` would, then stop
    (a writer that died half-way through a batch)."""

    async def publish() -> None:
        entry = await backend._entry(topic)
        messages = [
            backend._message(topic, AppendItem(0, None, v, (), backend.clock()), msg_id)
            for v, msg_id in zip(values, msg_ids, strict=True)
        ]
        await backend._publish_partition(entry, 0, messages)

    backend._run(publish, "publishing a prefix")


def test_a_batch_cut_short_is_completed_once_by_its_retry(url: str) -> None:
    with Log.open(url) as log:
        log.create_topic("t")
        producer = log.producer("p")
        publish_prefix(nats(log), "t", [b"a", b"b"], ["p:0:0", "p:0:1"])
        positions = producer.append_batch("t", [b"a", b"b", b"c"], sequence=0)
        assert [p.offset for p in positions] == [0, 1, 2], "the prefix's records are the batch's"
        assert [r.value for r in log.read("t")] == [b"a", b"b", b"c"]
        assert producer.last_sequence == 0


def test_a_retry_after_a_lost_producer_update_lands_once(url: str) -> None:
    with Log.open(url) as log:
        log.create_topic("t")
        first = log.producer("p").append_batch("t", [b"a", b"b"], sequence=7)
        forget_producer(nats(log), "p")
        again = log.producer("p")  # restarted: its document says nothing was written
        assert again.last_sequence == -1
        assert again.append_batch("t", [b"a", b"b"], sequence=7) == first
        assert [r.value for r in log.read("t")] == [b"a", b"b"]


def test_beyond_the_duplicate_window_a_lost_update_means_a_duplicate(url: str) -> None:
    """What the guarantees page states: message ids dedupe only within the
    stream's duplicate window (two minutes unless configured; 0.3 s here)."""
    with Log.open(url, dedupe_window_s=0.3) as log:
        log.create_topic("t")
        log.producer("p").append("t", b"a", sequence=0)
        forget_producer(nats(log), "p")
        time.sleep(0.5)
        log.producer("p").append("t", b"a", sequence=0)
        assert [r.value for r in log.read("t")] == [b"a", b"a"]


def test_a_retry_within_the_producer_window_dedupes_after_the_duplicate_window(url: str) -> None:
    """The producer's own window (its document) answers a retry however old."""
    with Log.open(url, dedupe_window_s=0.3) as log:
        log.create_topic("t")
        producer = log.producer("p")
        first = producer.append("t", b"a", sequence=0)
        time.sleep(0.5)
        assert producer.append("t", b"a", sequence=0) == first
        assert [r.value for r in log.read("t")] == [b"a"]


class Interleaved(Documents):
    """Runs ``between`` once, after a change was decided and before it is
    stored: another client's change of the same document gets in first."""

    def __init__(self, docs: Documents, between: Any) -> None:
        super().__init__(docs._js, docs._stream, docs._url)
        self.between = between

    async def store(self, subject: str, body: bytes, last: int) -> bool:
        # Only the commit's change (the first that stores an offset), not a
        # heartbeat's before it.
        if self.between is not None and b'"committed":[[' in body:
            between, self.between = self.between, None
            await between()
            stored = await super().store(subject, body, last)
            assert not stored, "the other client's change came first"
            return stored
        return await super().store(subject, body, last)


def test_a_commit_decided_before_a_rebalance_is_fenced_when_stored(url: str) -> None:
    clock = SimClock()
    with Log.open(url, clock=clock) as old_log, Log.open(url, clock=clock) as new_log:
        old_log.create_topic("t")
        old_log.append_batch("t", [b"a", b"b"])
        zombie = old_log.consumer("t", group="g", member_id="zombie", lease_ms=1000)
        assert len(zombie.poll(1.0)) == 2
        backend = nats(old_log)

        async def heir_joins() -> None:
            clock.advance(1001)  # the zombie's lease runs out; the heir's join expires it
            heir = new_log.consumer("t", group="g", member_id="heir")
            await asyncio.to_thread(heir.poll, 0.01)

        backend._docs = Interleaved(backend._docs, heir_joins)
        with pytest.raises(StaleGeneration) as info:
            zombie.commit()
        assert backend._docs.between is None, "the heir joined between decide and store"
        assert info.value.details["member_id"] == "zombie"
        assert new_log.describe_group("g").committed == {}
        assert [m.member_id for m in new_log.describe_group("g").members] == ["heir"]


def test_a_reader_wakes_when_another_connection_appends(url: str) -> None:
    with Log.open(url) as reader, Log.open(url) as writer:
        reader.create_topic("t")
        backend = nats(reader)
        token = backend.change_token()
        while backend.wait_for_change(token, 0.1) != token:  # our own echoes, arriving
            token = backend.change_token()
        started = time.monotonic()
        assert backend.wait_for_change(token, 0.2) == token, "nothing changed: it waits"
        assert time.monotonic() - started >= 0.2
        token = backend.change_token()
        threading.Timer(0.1, lambda: writer.append("t", b"x")).start()
        started = time.monotonic()
        assert backend.wait_for_change(token, 5.0) != token
        assert time.monotonic() - started < 2.0
        with reader.consumer("t", group="g") as consumer:
            got = consumer.poll(5.0)
            threading.Timer(0.1, lambda: writer.append("t", b"y")).start()
            got += consumer.poll(5.0)
            assert [r.value for r in got] == [b"x", b"y"]


def test_a_damaged_record_is_corruption(url: str) -> None:
    """A record's CRC is the first 4 bytes of its body; records written before
    that kept it in a ``Ub-Crc`` header and still read. A damaged one of
    either form is ``CorruptionError``."""
    with Log.open(url) as log:
        log.create_topic("t")
        log.append("t", b"new")
        backend = nats(log)
        entry = backend._run(lambda: backend._entry("t"), "reading the catalog")
        subject = record_subject(backend.bucket, entry.incarnation, 0)
        old = msgspec.msgpack.encode((None, b"old", [], 0))
        evil = msgspec.msgpack.encode((None, b"evil", [], 0))

        async def write(js: Any) -> None:
            await js.publish(subject, old, headers={"Ub-Crc": str(zlib.crc32(old))})
            await js.publish(subject, evil, headers={"Ub-Crc": "12345"})
            await js.publish(subject, (zlib.crc32(evil) ^ 1).to_bytes(4, "big") + evil)
            await js.publish(subject, b"\x00")  # shorter than a CRC

        admin(write)
        assert [r.value for r in log.read("t", 0, 0, records_max=2)] == [b"new", b"old"]
        for offset in (2, 3, 4):
            with pytest.raises(CorruptionError) as info:
                log.read("t", 0, offset)
            assert info.value.details["offset"] == offset


def test_a_single_append_carries_no_headers_and_a_batch_carries_message_ids(url: str) -> None:
    """Why: a message id costs the server about a sixth of its throughput, so
    only records that may be sent again (a batch's, a producer's) carry one."""
    with Log.open(url) as log:
        log.create_topic("t")
        log.append("t", b"one")
        log.append_batch("t", [b"a", b"b"])
        log.producer("p").append_batch("t", [b"c"], sequence=0)
        backend = nats(log)
        entry = backend._run(lambda: backend._entry("t"), "reading the catalog")
        stream = stream_name(backend.bucket, entry.incarnation, 0)

        async def headers(js: Any) -> list[Any]:
            return [(await js.get_msg(stream, seq)).headers for seq in range(1, 5)]

        got = admin(headers)
        assert got[0] is None
        assert [h.keys() for h in got[1:]] == [{"Nats-Msg-Id"}] * 3
        assert got[3]["Nats-Msg-Id"] == "p:0:0"


def test_two_connections_appending_keep_offsets_dense(url: str) -> None:
    with Log.open(url) as one, Log.open(url) as two:
        one.create_topic("t")
        written: list[int] = []

        def append(log: Log, tag: bytes) -> None:
            for i in range(40):
                written.append(log.append("t", tag + b"%d" % i).offset)

        threads = [
            threading.Thread(target=append, args=(log, tag))
            for log, tag in ((one, b"a"), (two, b"b"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(written) == list(range(80))
        assert len({r.value for r in one.read("t", records_max=100)}) == 80


def test_destroy_removes_the_record_streams(url: str) -> None:
    with Log.open(url) as log:
        log.create_topic("a", 2)
        log.create_topic("b")
        log.append("a", b"x")
        bucket = nats(log).bucket
    report = destroy(url, dry_run=True)
    assert sum("UBLOG_" in item for item in report.items) == 3
    destroy(url, confirm=True)

    async def names(js: Any) -> list[str]:
        return [info.config.name for info in await js.streams_info()]

    left = [n for n in admin(names) if re.fullmatch(stream_pattern(bucket), n) or bucket in n]
    assert left == []


def test_topics_and_groups_are_shared_by_connections(url: str) -> None:
    with Log.open(url) as one, Log.open(url) as two:
        one.create_topic("t", 2)
        assert two.topics() == ["t"]
        two.append("t", b"x", partition=1)
        with one.consumer("t", group="g", auto_commit=False) as consumer:
            assert [r.value for r in consumer.poll(2.0)] == [b"x"]
            consumer.commit()
        assert two.describe_group("g").committed == {
            TopicPartition("t", 0): 0,
            TopicPartition("t", 1): 1,
        } or two.describe_group("g").committed == {TopicPartition("t", 1): 1}
        two.delete_topic("t")
        two.create_topic("t", 2)
        assert one.describe_group("g").committed == {}, "offsets of the old topic are gone"


def test_a_record_over_the_servers_message_limit_is_refused_before_sending(url: str) -> None:
    """The topic allows 1 MiB records (the default), the server's max_payload
    (1 MiB by default) holds less beside the encoding and headers."""
    with Log.open(url) as log:
        log.create_topic("t")
        backend = nats(log)
        assert backend.server_version >= (2, 9)
        big = b"x" * (backend._payload_bytes_max() - 100)
        with pytest.raises(RecordTooLarge) as info:
            log.append("t", big)
        assert info.value.details["backend"] == "nats"
        assert log.read("t") == []
        assert log.append("t", b"small").offset == 0, "the connection is still fine"


def test_single_appends_never_split_a_batch_of_the_same_process(url: str) -> None:
    """Single appends share a partition without its lock; a batch holds it:
    each batch's offsets stay contiguous among concurrent single appends."""
    with Log.open(url) as log:
        log.create_topic("t")
        batches: list[list[int]] = []

        def singles() -> None:
            for i in range(60):
                log.append("t", b"s%d" % i)

        def batcher() -> None:
            for i in range(6):
                positions = log.append_batch("t", [b"b%d-%d" % (i, j) for j in range(15)])
                batches.append([p.offset for p in positions])

        threads = [threading.Thread(target=singles) for _ in range(3)]
        threads.append(threading.Thread(target=batcher))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for offsets in batches:
            assert offsets == list(range(offsets[0], offsets[0] + 15)), offsets
        assert log.end_offsets("t") == {0: 270}


def test_two_connections_maintaining_at_once_both_succeed(url: str) -> None:
    """Compaction deletes messages one by one: one already deleted by the
    other connection's pass is not an error."""
    clock = SimClock()
    with Log.open(url, clock=clock) as one, Log.open(url, clock=clock) as two:
        one.create_topic("c", cleanup_policy="compact")
        one.append_batch("c", [Message(b"%d" % i, key=b"k") for i in range(30)])
        reports: list[dict[str, int]] = []
        threads = [
            threading.Thread(target=lambda log=log: reports.append(log.maintain().removed))
            for log in (one, two)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(reports) == 2
        assert sum(r.get("c", 0) for r in reports) == 29, "each removal counted once"
        assert [(r.offset, r.value) for r in one.read("c")] == [(29, b"29")]


def test_the_async_log_runs_on_nats(url: str) -> None:
    """AsyncLog's appends are awaited on the caller's loop while the backend
    answers from its own loop thread."""

    async def main() -> list[int]:
        log = await AsyncLog.open(url)
        try:
            await log.create_topic("t")
            positions = await asyncio.gather(*(log.append("t", b"%d" % i) for i in range(50)))
            return sorted(p.offset for p in positions)
        finally:
            await log.close()

    assert asyncio.run(main()) == list(range(50))


def test_replicas_are_checked_and_given_to_the_record_streams(url: str) -> None:
    for bad in (0, 6, 1.0, "3"):
        with pytest.raises(UsageError, match="replicas"):
            Log.open(url, replicas=bad)
    with Log.open(url, replicas=1) as log:
        log.create_topic("t")
        backend = nats(log)
        entry = backend._run(lambda: backend._entry("t"), "reading the catalog")
        name = stream_name(backend.bucket, entry.incarnation, 0)

        async def replicas(js: Any) -> int:
            return int((await js.stream_info(name)).config.num_replicas)

        assert admin(replicas) == 1
        # A single server refuses R3 streams: the error names the server's answer.
    with Log.open(url, replicas=3) as log, pytest.raises(BackendError, match="replica"):
        log.create_topic("r3")


def test_a_transaction_across_the_parts_refuses_log_records(url: str) -> None:
    """``db.transaction()`` on nats:// has no records + offsets + KV unit:
    adding a record is refused at once, and nothing is written."""
    with unbundled.open(url) as db:
        db.log.create_topic("t")
        tx = db.transaction()
        with pytest.raises(NotSupported) as refused:
            tx.append("t", b"x")
        assert "nats://" in str(refused.value)
        assert db.log.read("t") == []


def test_a_scan_may_outlast_the_guard_while_a_stuck_call_times_out(url: str) -> None:
    """describe_topic and maintain read whole partitions, which takes as long
    as the partitions are big: they wait while the loop thread answers;
    anything else past 3 x timeout_s + the guard is a stuck loop (Timeout)."""
    with Log.open(url, timeout_s=0.1) as log:
        backend = nats(log)
        backend.guard_extra_s = 0.2  # the guard: 0.5 s

        async def slow() -> str:
            await asyncio.sleep(1.0)
            return "done"

        assert backend._run(slow, "a long scan", long=True) == "done"
        with pytest.raises(unbundled.Timeout):
            backend._run(slow, "a request")


def test_ctrl_c_during_a_long_scan_cancels_it(url: str) -> None:
    """N8: Ctrl-C stops describe_topic or maintain: the caller gets
    KeyboardInterrupt and the scan on the loop thread is cancelled."""
    with Log.open(url) as log:
        backend = nats(log)
        cancelled = threading.Event()

        async def scan() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        ctrl_c = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        ctrl_c.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            backend._run(scan, "a long scan", long=True)
        assert time.monotonic() - started < 5.0
        assert cancelled.wait(5.0), "the scan went on after Ctrl-C"
