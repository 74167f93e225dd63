"""The log's records on NATS JetStream: one stream per partition.

Why a stream per partition: JetStream numbers messages per stream, densely
and in the order the stream leader stores them, so offset = stream sequence
- 1 is dense and monotone with nothing of our own to keep in step. (One
stream per topic would number all partitions together; dense per-partition
offsets would need a counter kept beside it, which is what JetStream
already does for a stream.) Retention and compaction (``_log_maintain``)
delete messages (``purge`` below a sequence, ``delete`` of one), which leaves gaps
below or among the offsets, as Kafka's do; a read skips them
(``next_by_subj``).

A record is one message (``_log_format``: the body led by its CRC-32). A
batch's messages carry ``Nats-Msg-Id``: ``<producer id>:<sequence>:<index>``
for an idempotent producer's, else ``<process's random id>.<batch number>:<index>``;
the stream drops a message whose id it saw within its duplicate window and
answers with the first one's sequence, so a batch published again (our
retry after a lost connection, or the caller's retry through its producer)
lands once. A single record without a producer (``Log.append``) carries no
header: a message id cost about a sixth of the server's throughput, and
headers as much again of the client's. Without an id it is never sent
again: after a lost acknowledgement the caller gets ``Timeout`` (outcome
unknown), as a lost COMMIT gives on PostgreSQL (N2).

Writing a batch (``_write``), in this order:

1. A batch holding appends *and* offset commits is refused with
   ``NotSupported``: JetStream cannot make both visible at once.
2. An idempotent producer's stamp is checked against its document
   (``_log_groups``): fenced, duplicate (answered from the window), or new.
3. Per partition, in batch order, the records are published pipelined
   under a per-partition lock of this process, so one process's batches
   never interleave in a partition (other processes' may). Publishing is
   retried, with the same message ids, on a lost connection. NATS 2.12's
   atomic batches are not used: they cover one stream (a partition, here),
   and a batch holding a message id the stream has seen is refused whole
   (error 10201), so a retry would get an error instead of its positions.
4. The producer's document takes the new sequence and positions.
5. ``ublog.<bucket>.changed`` is announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import nats.errors
from nats.js import errors as js_errors
from nats.js.api import StorageType, StreamConfig

from ... import limits
from ..._ground import Waiter
from ...errors import (
    Error,
    LimitExceeded,
    NotSupported,
    OffsetOutOfRange,
    Timeout,
    TopicExists,
    TopicNotFound,
)
from ...log import _core
from ...log._protocol import (
    AppendItem,
    OffsetCommit,
    PartitionInfo,
    Position,
    ProducerStamp,
    Record,
    TopicConfig,
    TopicInfo,
    TopicPartition,
    WriteBatch,
)
from . import _log_format
from ._log_meta import (
    Catalog,
    Documents,
    TopicEntry,
    catalog_subject,
    changed_subject,
    new_incarnation,
    record_subject,
    stream_name,
)
from ._publish import Acks

NO_MESSAGE_CODE = 10037
# Publishing a batch again after a lost connection; each try republishes
# with the same ids, so the stream keeps one copy of each record.
PUBLISH_TRIES_MAX = 3
# Announcements of writes (``ublog.<bucket>.changed``) at most this often
# per connection; a reader in another process wakes up to this much later.
ANNOUNCE_INTERVAL_S = 0.005
READ_PIPELINE_MAX = 64  # message gets in flight at once during a read
# NATS's own default; a store may ask for another (``dedupe_window_s=``).
DEDUPE_WINDOW_S_DEFAULT = 120.0
_CATALOG = msgspec.json.Decoder(Catalog)


class NatsLogRecords:
    """The record methods of :class:`~unbundled.backends.nats.NatsBackend`."""

    bucket: str
    url: str
    timeout_s: float
    clock: Callable[[], int]
    _connect: Callable[[list[str]], Awaitable[None]]  # NatsBackend's (a loop writer connects too)
    dedupe_window_s: float
    replicas: int
    _js: Any
    _nc: Any
    _acks: Acks  # record publishes (``_publish``)
    _stream: str  # the KV bucket's stream, which holds the documents
    _loop: asyncio.AbstractEventLoop
    _docs: Documents
    _run: Callable[..., Any]  # (make, what, *, long=False)
    _hand_over: Callable[[Callable[[], Any], Waiter, str], None]
    _error: Callable[[BaseException, str], Error]
    _closed: bool
    _payload_bytes_max: Callable[[], int]
    # Producers and offset commits: _log_groups.NatsLogGroups, which extends this class.
    _commit_offsets: Callable[[tuple[OffsetCommit, ...]], Awaitable[None]]
    _producer_check: Callable[[ProducerStamp], Awaitable[list[Position] | None]]
    _producer_record: Callable[[ProducerStamp, list[Position]], Awaitable[None]]

    def _init_records(self) -> None:
        # The last catalog read, refreshed when a topic or stream is missing;
        # a list of one so that loop writers' views (shallow copies) share it.
        self._catalog: list[Catalog | None] = [None]
        self._first_catalog: asyncio.Future[Catalog] | None = None  # see _entry
        self._partition_locks: dict[str, asyncio.Lock] = {}
        self._direct: dict[str, bool] = {}  # per stream: reads by direct get
        self._token = 0
        self._changed = threading.Condition()
        self._announcer: asyncio.Future[None] | None = None
        self._unannounced = False
        self._listening = False  # subscribed to announcements (by the first wait)
        self._listen_lock = threading.Lock()
        # Message ids of batches without a producer: this process's random
        # prefix and a counter (one uuid4 per batch cost a system call).
        self._batch_prefix = uuid.uuid4().hex
        self._batch_numbers = itertools.count()

    # --- the catalog ----------------------------------------------------------

    async def _load_catalog(self) -> Catalog:
        body, _ = await self._docs.load(catalog_subject(self.bucket))
        catalog = self._catalog[0] = _CATALOG.decode(body) if body else Catalog()
        return catalog

    async def _entry(self, name: str, fresh: bool = False) -> TopicEntry:
        catalog = None if fresh else self._catalog[0]
        if catalog is None and not fresh:
            # The first writes of a process (64 tasks, say) share one load
            # of the catalog: each loading it was a burst of 64 reads per
            # process at the start, which delayed every first append.
            if self._first_catalog is None or self._first_catalog.done():  # done: it failed
                self._first_catalog = asyncio.ensure_future(self._load_catalog())
            catalog = await asyncio.shield(self._first_catalog)
        if catalog is None or name not in catalog.topics:
            catalog = await self._load_catalog()
        entry = catalog.topics.get(name)
        if entry is None:
            raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
        return entry

    def create_topic(self, name: str, config: TopicConfig) -> None:
        incarnation = new_incarnation()

        async def create() -> None:
            # Streams first, then the catalog: a writer that finds the topic
            # always finds its streams. A lost race deletes what it made.
            for p in range(config.partitions):
                await self._js.add_stream(
                    StreamConfig(
                        name=stream_name(self.bucket, incarnation, p),
                        subjects=[record_subject(self.bucket, incarnation, p)],
                        storage=StorageType.FILE,
                        num_replicas=self.replicas,
                        duplicate_window=self.dedupe_window_s,
                        allow_direct=True,
                    )
                )

            def decide(body: bytes | None) -> tuple[bytes, None]:
                catalog = _CATALOG.decode(body) if body else Catalog()
                if name in catalog.topics:
                    raise TopicExists(f"topic {name!r} already exists", topic=name)
                if len(catalog.topics) >= limits.topics_max:
                    raise LimitExceeded(f"at most {limits.topics_max} topics", topic=name)
                catalog.topics[name] = TopicEntry(config, incarnation)
                return msgspec.json.encode(catalog), None

            try:
                await self._docs.update(catalog_subject(self.bucket), decide)
            except BaseException:
                await self._delete_streams(incarnation, config.partitions)
                raise
            await self._load_catalog()
            await self._announce()

        self._run(create, f"creating topic {name!r}")

    async def _delete_streams(self, incarnation: str, partitions: int) -> None:
        for p in range(partitions):
            # NotFound: never made, or deleted by a concurrent delete.
            with contextlib.suppress(js_errors.NotFoundError):
                await self._js.delete_stream(stream_name(self.bucket, incarnation, p))

    def delete_topic(self, name: str) -> None:
        async def delete() -> None:
            def decide(body: bytes | None) -> tuple[bytes, TopicEntry]:
                catalog = _CATALOG.decode(body) if body else Catalog()
                entry = catalog.topics.pop(name, None)
                if entry is None:
                    raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
                return msgspec.json.encode(catalog), entry

            entry = await self._docs.update(catalog_subject(self.bucket), decide)
            # Committed offsets name the incarnation they were committed for,
            # so groups need no rewrite: offsets of a gone one are ignored.
            await self._delete_streams(entry.incarnation, entry.config.partitions)
            await self._load_catalog()
            await self._announce()

        self._run(delete, f"deleting topic {name!r}")

    def list_topics(self) -> list[str]:
        catalog: Catalog = self._run(self._load_catalog, "listing topics")
        return sorted(catalog.topics)

    def topic_config(self, name: str) -> TopicConfig:
        entry: TopicEntry = self._run(lambda: self._entry(name, fresh=True), f"reading {name!r}")
        return entry.config

    async def _bounds(self, entry: TopicEntry, partition: int) -> tuple[int, int, int]:
        """``(start, end, records)`` of a partition, from its stream's state."""
        info = await self._js.stream_info(stream_name(self.bucket, entry.incarnation, partition))
        # Direct gets skip the API's JSON and base64; on an R1 stream its one
        # server answers them, so they are as fresh as the leader's. On a
        # replicated stream a follower might answer stale: not used there.
        self._direct[info.config.name] = bool(info.config.allow_direct) and (
            (info.config.num_replicas or 1) == 1
        )
        state = info.state
        end = int(state.last_seq)
        if entry.config.cleanup_policy == "compact":
            # Compaction leaves gaps but never moves the start (as in Kafka);
            # deleting a stream's first messages moves JetStream's first_seq.
            return 0, end, int(state.messages)
        start = end if not state.messages else int(state.first_seq) - 1
        return start, end, int(state.messages)

    async def _stream_info(
        self, name: str, partition: int
    ) -> tuple[TopicEntry, tuple[int, int, int]]:
        entry = await self._entry(name)
        _core.check_partition(name, partition, entry.config.partitions)
        try:
            return entry, await self._bounds(entry, partition)
        except js_errors.NotFoundError:
            entry = await self._entry(name, fresh=True)  # deleted, maybe created again
            _core.check_partition(name, partition, entry.config.partitions)
            return entry, await self._bounds(entry, partition)

    def describe_topic(self, name: str) -> TopicInfo:
        async def describe() -> TopicInfo:
            entry = await self._entry(name, fresh=True)
            infos = []
            for p in range(entry.config.partitions):
                start, end, count = await self._bounds(entry, p)
                # Payload bytes (key + value) as the other backends count
                # them: the stream's own byte count includes headers and
                # subjects, so this reads the partition (its cost grows with it).
                records = await self._scan(name, entry, p, start, end, None, None)
                size = sum(_core.payload_size(r.key, r.value) for r in records)
                infos.append(PartitionInfo(p, start, end, count, size))
            return TopicInfo(name, entry.config, tuple(infos))

        result: TopicInfo = self._run(describe, f"describing topic {name!r}", long=True)
        return result

    def offset_bounds(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        async def bounds() -> dict[TopicPartition, tuple[int, int]]:
            out = {}
            for tp in tps:
                _, (start, end, _) = await self._stream_info(tp.topic, tp.partition)
                out[tp] = (start, end)
            return out

        result: dict[TopicPartition, tuple[int, int]] = self._run(bounds, "reading offsets")
        return result

    # --- writing --------------------------------------------------------------

    def submit(self, batch: WriteBatch, done: Waiter) -> None:
        self._hand_over(lambda: self._write(batch), done, "an append")

    async def _write(self, batch: WriteBatch) -> list[Position]:
        appends = batch.appends
        if batch.producer is None and not batch.commits and len(appends) == 1:
            ((name, items),) = appends.items()
            if len(items) == 1:
                return await self._append_record(batch, name, items[0])
        return await self._write_batch(batch)

    async def _write_batch(self, batch: WriteBatch) -> list[Position]:
        appends = batch.appends
        if batch.commits and any(len(items) for items in appends.values()):
            raise NotSupported(
                "NATS JetStream cannot make records and offset commits visible together: "
                "a transaction on nats:// may append or commit offsets, not both (commit "
                "after the append; an idempotent producer makes a retried append land "
                "once, see docs/explanation/log.md, NATS)",
                backend="nats",
                part="records and offset commits in one transaction",
            )
        stamp = batch.producer
        if stamp is not None:
            seen = await self._producer_check(stamp)
            if seen is not None:
                return seen
        if batch.commits:
            await self._commit_offsets(batch.commits)
            if stamp is not None:
                await self._producer_record(stamp, [])
            await self._announce()
            return []
        plan = []  # (topic, entry, items)
        for name, items in appends.items():
            if not len(items):
                continue
            entry = await self._entry(name)
            _core.check_partition_count(name, batch.partitions, entry.config.partitions)
            for item in items:
                _core.check_partition(name, item.partition, entry.config.partitions)
            plan.append((name, entry, items))
        if stamp is not None:
            prefix = f"{stamp.producer_id}:{stamp.sequence}"
        else:
            prefix = f"{self._batch_prefix}.{next(self._batch_numbers)}"
        positions: list[Position] = []
        index = 0
        for name, entry, items in plan:
            positions += await self._publish_topic(name, entry, items, prefix, index, batch)
            index += len(items)
        if stamp is not None:
            await self._producer_record(stamp, positions)
        await self._announce()
        return positions

    async def _append_record(
        self, batch: WriteBatch, name: str, item: AppendItem
    ) -> list[Position]:
        """``_write`` of one record without a producer (``Log.append``), with
        less bookkeeping: with 64 tasks appending, the client's CPU per
        record is what limits throughput."""
        entry = await self._entry(name)
        _core.check_partition_count(name, batch.partitions, entry.config.partitions)
        _core.check_partition(name, item.partition, entry.config.partitions)
        try:
            (seq,) = await self._publish_partition(
                entry, item.partition, [self._message(name, item, None)]
            )
        except nats.errors.NoRespondersError:
            # No stream: nothing was stored. The general path finds the
            # topic's new incarnation, or says it is gone.
            return await self._write_batch(batch)
        except nats.errors.TimeoutError:
            raise Timeout(
                f"no acknowledgement of an append to {name}[{item.partition}] within "
                f"{self.timeout_s} s from the NATS server at {self.url}: the record may or "
                "may not be stored, and it was not sent again (it has no message id to "
                "deduplicate it); append through an idempotent producer to retry safely",
                backend="nats",
                topic=name,
                partition=item.partition,
            ) from None
        await self._announce()
        return [Position(name, item.partition, seq - 1)]

    async def _publish_topic(
        self,
        name: str,
        entry: TopicEntry,
        items: Sequence[AppendItem],
        prefix: str,
        first_index: int,
        batch: WriteBatch,
    ) -> list[Position]:
        """Publish one topic's records, partition by partition, in order."""
        out: list[Position | None] = [None] * len(items)
        by_partition: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            by_partition.setdefault(item.partition, []).append(i)
        for partition, indexes in by_partition.items():
            messages = [
                self._message(name, items[i], f"{prefix}:{first_index + i}") for i in indexes
            ]
            try:
                seqs = await self._publish_partition(entry, partition, messages)
            except nats.errors.NoRespondersError:
                # The stream is gone: the topic was deleted (maybe created again).
                fresh = await self._entry(name, fresh=True)
                _core.check_partition_count(name, batch.partitions, fresh.config.partitions)
                if fresh.incarnation == entry.incarnation:
                    raise
                entry = fresh
                seqs = await self._publish_partition(entry, partition, messages)
            for i, seq in zip(indexes, seqs, strict=True):
                out[i] = Position(name, partition, seq - 1)
        return [p for p in out if p is not None]

    def _message(
        self, topic: str, item: AppendItem, msg_id: str | None
    ) -> tuple[bytes, dict[str, str] | None]:
        return _log_format.encode(topic, item, msg_id, self._payload_bytes_max())

    async def _publish_partition(
        self,
        entry: TopicEntry,
        partition: int,
        messages: list[tuple[bytes, dict[str, str] | None]],
    ) -> list[int]:
        """Stream sequences of ``messages``, published in order (pipelined)."""
        subject = record_subject(self.bucket, entry.incarnation, partition)
        lock = self._partition_locks.get(subject)
        if lock is None:
            lock = self._partition_locks[subject] = asyncio.Lock()
        if len(messages) == 1 and not lock.locked():
            # One record cannot be split, and nats-py writes it before this
            # task first yields: nothing can come between the check and the
            # write. So single appends share the partition concurrently and
            # only wait for a batch being published.
            return await self._publish_tries(subject, messages)
        async with lock:
            return await self._publish_tries(subject, messages)

    async def _publish_tries(
        self, subject: str, messages: list[tuple[bytes, dict[str, str] | None]]
    ) -> list[int]:
        # A message without an id is sent once: sent again, it could be stored twice.
        tries = PUBLISH_TRIES_MAX if all(h is not None for _, h in messages) else 1
        for attempt in range(tries):
            try:
                if len(messages) == 1:  # in this task: written before it yields
                    body, headers = messages[0]
                    return [await self._acks.publish(subject, body, headers)]
                # nats-py writes each message in the order the tasks start;
                # one connection keeps that order to the server.
                return list(
                    await asyncio.gather(*(self._acks.publish(subject, b, h) for b, h in messages))
                )
            except (nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError):
                if attempt == tries - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))  # let nats-py reconnect
        raise AssertionError("unreachable")

    async def _announce(self) -> None:
        """Wake readers: ours through the token at once, other processes' by
        the core message, sent once this turn of the event loop is over.

        One message per turn of the event loop, however many writes ended in
        it: with 64 tasks appending, a message per append doubled what the
        connection sent. Not awaited: the records are stored already, and a
        lost announcement delays other processes' readers by their wait's
        timeout, nothing more."""
        self._bump()  # before the write returns: its caller may look at the token
        self._unannounced = True
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.ensure_future(self._send_announcements())

    async def _send_announcements(self) -> None:
        # At most one announcement per ANNOUNCE_INTERVAL_S, and one after
        # the last write: every other process's reader receives each one,
        # so with many writers they cost the server more than the records.
        while self._unannounced:
            self._unannounced = False
            with contextlib.suppress(Exception):
                await self._nc.publish(changed_subject(self.bucket), b"")
            await asyncio.sleep(ANNOUNCE_INTERVAL_S)

    # --- reading --------------------------------------------------------------

    def read(
        self, topic: str, partition: int, offset: int, records_max: int, bytes_max: int
    ) -> list[Record]:
        async def read() -> list[Record]:
            entry, (start, end, _) = await self._stream_info(topic, partition)
            if offset < start or offset > end:
                raise OffsetOutOfRange(
                    f"offset {offset} is outside {topic}[{partition}]'s range {start}..{end}",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    start_offset=start,
                    end_offset=end,
                )
            return await self._scan(topic, entry, partition, offset, end, records_max, bytes_max)

        result: list[Record] = self._run(read, f"a read of {topic}[{partition}]")
        return result

    async def _scan(
        self,
        topic: str,
        entry: TopicEntry,
        partition: int,
        offset: int,
        end: int,
        records_max: int | None,
        bytes_max: int | None,
    ) -> list[Record]:
        """Records from ``offset`` below ``end``, skipping gaps: pipelined
        message gets of the next stored message at each sequence."""
        stream = stream_name(self.bucket, entry.incarnation, partition)
        subject = record_subject(self.bucket, entry.incarnation, partition)
        out: list[Record] = []
        size = 0
        seq = offset + 1
        while seq <= end and (records_max is None or len(out) < records_max):
            want = end - seq + 1
            if records_max is not None:
                want = min(want, records_max - len(out))
            count = min(want, READ_PIPELINE_MAX)
            msgs = await asyncio.gather(
                *(self._get_next(stream, subject, seq + i) for i in range(count))
            )
            last = seq - 1
            for msg in msgs:
                if msg is None or int(msg.seq) <= last or int(msg.seq) > end:
                    continue
                last = int(msg.seq)
                record = self._decode_record(topic, entry, partition, msg)
                size += _core.payload_size(record.key, record.value)
                if out and bytes_max is not None and size > bytes_max:
                    return out
                out.append(record)
                if records_max is not None and len(out) >= records_max:
                    return out
            if last < seq:
                break  # nothing stored at or after seq
            seq = last + 1
        return out

    async def _get_next(self, stream: str, subject: str, seq: int) -> Any:
        direct = self._direct.get(stream, False)
        try:
            return await self._js.get_msg(
                stream, seq=seq, subject=subject, next=True, direct=direct
            )
        except js_errors.NotFoundError as exc:
            # A direct get says "none" with status 404 (no error code).
            if exc.err_code == NO_MESSAGE_CODE or (direct and exc.err_code is None):
                return None
            raise

    def _decode_record(self, topic: str, entry: TopicEntry, partition: int, msg: Any) -> Record:
        stream = stream_name(self.bucket, entry.incarnation, partition)
        return _log_format.decode(topic, partition, stream, msg)

    # --- change notification --------------------------------------------------

    async def _subscribe_changes(self) -> None:
        async def changed(_msg: Any) -> None:
            self._bump()

        await self._nc.subscribe(changed_subject(self.bucket), cb=changed)

    def _bump(self) -> None:
        with self._changed:
            self._token += 1
            self._changed.notify_all()

    def _listen(self) -> None:
        """Subscribe to other processes' announcements when this process
        first asks for the token: a process that only writes never receives
        them (with 16 writing processes, each would receive every other's).
        A reader takes the token before it reads, so no announcement of a
        write it did not see can be missed."""
        with self._listen_lock:
            if not self._listening:
                self._run(self._subscribe_changes, "subscribing to changes")
                self._listening = True

    def change_token(self) -> int:
        if not self._listening:
            self._listen()
        with self._changed:
            return self._token

    def wait_for_change(self, token: int, timeout_s: float) -> int:
        if not self._listening:
            self._listen()
        with self._changed:
            self._changed.wait_for(lambda: self._token != token or self._closed, timeout_s)
            return self._token
