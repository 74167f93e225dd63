"""The log's public, synchronous API: ``Log``, ``Producer``, ``Consumer``, ``Transaction``.

>>> from unbundled import Log
>>> with Log.open("memory://") as log:
...     _ = log.create_topic("orders", partitions=3)
...     pos = log.append("orders", b"hello", key=b"customer-7")
...     [r.value for r in log.read("orders", pos.partition, pos.offset)]
[b'hello']
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from .. import _registry, limits
from .._ground.waiters import SyncWaiter
from .._registry import LOG
from ..errors import PartitionNotFound, TopicExists, TopicNotFound
from . import _core
from ._base import LogBase, _consumer_core, group_lag, partition_bounds
from ._consumer import OffsetReset
from ._producer import ProducerCore
from ._protocol import (
    CleanupPolicy,
    GroupInfo,
    Headers,
    MaintenanceReport,
    Message,
    Position,
    ProducerStamp,
    Record,
    SyncLevel,
    TopicConfig,
    TopicInfo,
    TopicPartition,
    WriteBatch,
)
from ._sync_consumer import Consumer
from ._transaction import LogTxnCore


class Log(LogBase):
    """A durable, partitioned, append-only log (Kafka's model, in a library).

    Open one per process and share it between threads: appends from all
    threads are group-committed. Use as a context manager or call
    :meth:`close`.
    """

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        **options: Any,
    ) -> Log:
        """Open the log at ``url``: a SQLite file (a path or ``sqlite:///path.db``;
        ``?mode=ro`` opens it read-only), ``memory://`` or
        ``postgresql://user@host/db?schema=name`` or ``nats://host:port?bucket=name``
        (NATS JetStream: see docs/explanation/log.md, "On NATS JetStream", for
        what differs). ``redis://`` does not serve the log: ``NotSupported``."""
        return cls(_registry.open(url, serving=LOG, sync=sync, **options))

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued writes and release the backend. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._shared:  # a Database's part: closing the database closes it
                return
            self.backend.close()

    # --- topics ---------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        cleanup_policy: CleanupPolicy = "delete",
        tombstone_retention_ms: int = 86_400_000,
        record_bytes_max: int = limits.record_bytes_default,
        exist_ok: bool = False,
    ) -> TopicConfig:
        """Create topic ``name`` with ``partitions`` partitions and return its
        config; blocks until that is committed. Raises ``TopicExists`` if the
        name is taken; with ``exist_ok``, an existing topic with the same config
        is fine (so the call is idempotent) while a different config still
        raises ``TopicExists``. ``UsageError`` for a bad name, a setting out
        of its bounds (``limits.partitions_max``, ``limits.record_bytes_max``);
        ``LimitExceeded`` for a topic beyond ``limits.topics_max``."""
        self._check_open()
        _core.check_topic_name(name)
        config = self._topic_config(
            partitions,
            retention_ms,
            retention_bytes,
            cleanup_policy,
            tombstone_retention_ms,
            record_bytes_max,
        )
        try:
            self.backend.create_topic(name, config)
        except TopicExists:
            if not exist_ok or self.backend.topic_config(name) != config:
                raise
        self._configs[name] = config
        return config

    def delete_topic(self, name: str) -> None:
        """Delete topic ``name`` with its records and every group's committed
        offsets for it; blocks until that is committed. A topic created later
        under the same name starts empty. Raises ``TopicNotFound`` if there is
        no such topic (so it is not idempotent), ``UsageError`` for a bad name."""
        self._check_open()
        self._configs.pop(name, None)
        self.backend.delete_topic(_core.check_topic_name(name))

    def topics(self) -> list[str]:
        """The names of the existing topics, sorted. Raises ``Closed`` after :meth:`close`."""
        self._check_open()
        return self.backend.list_topics()

    def describe_topic(self, name: str) -> TopicInfo:
        """Topic ``name``'s config and, per partition, its first stored offset,
        next offset, record count and size, as committed now. Raises
        ``TopicNotFound``, or ``UsageError`` for a bad name."""
        self._check_open()
        return self.backend.describe_topic(_core.check_topic_name(name))

    def _config(self, topic: str) -> TopicConfig:
        config = self._configs.get(topic)
        if config is None:
            self._check_open()
            config = self._configs[topic] = self.backend.topic_config(_core.check_topic_name(topic))
        return config

    # --- writing --------------------------------------------------------------

    def _submit(self, batch: WriteBatch, producer: Producer | None = None) -> list[Position]:
        if producer is not None:
            return producer._write(batch)
        self._check_open()
        waiter = SyncWaiter()
        self.backend.submit(batch, waiter)
        return self._wait(waiter)

    def _wait(self, waiter: SyncWaiter) -> list[Position]:
        """The positions of a submitted batch, once durable."""
        try:
            positions: list[Position] = waiter.wait()
        except (TopicNotFound, PartitionNotFound) as exc:
            self._forget(exc)
            raise
        return positions

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> Position:
        """Append one record to ``topic`` and return its position, once it is
        durable at the log's sync level (blocks until then; concurrent appends
        from other threads share the commit).

        The partition is ``partition`` if given, else chosen from ``key``
        (the same key always lands in the same partition), else a sticky one
        for keyless records. Raises ``TopicNotFound`` or ``PartitionNotFound``
        (nothing written), ``RecordTooLarge`` for a record above the topic's
        ``record_bytes_max`` (or a key above ``limits.key_bytes_max``),
        ``UsageError`` for a bad value, key or header, ``Closed`` after
        :meth:`close`. Not idempotent: a retry after an
        unknown outcome may append twice; use :meth:`producer` for that.
        """
        config = self._configs.get(topic) or self._config(topic)
        items = self._prepare_one(topic, config, value, key, headers, timestamp, partition)
        return self._submit(WriteBatch({topic: items}, partitions={topic: config.partitions}))[0]

    def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> list[Position]:
        """Append many records atomically (all or none), in order, and return
        their positions once durable. Keyless records of one batch go to one
        partition. Raises what :meth:`append` raises, for the first bad record
        (nothing written), and ``LimitExceeded`` for a batch above
        ``limits.batch_records_max`` records or ``limits.batch_bytes_max`` bytes."""
        config = self._config(topic)
        items = self._items(topic, config, messages)
        if not items:
            return []
        return self._submit(WriteBatch({topic: items}, partitions={topic: config.partitions}))

    def producer(self, producer_id: str) -> Producer:
        """An idempotent producer named ``producer_id``; see :class:`Producer`.
        Opening it starts a new epoch and fences earlier producers with the same
        id (their appends raise ``ProducerFenced``). Blocks while the epoch is
        registered. ``UsageError`` for an empty or too long id."""
        return Producer(self, producer_id)

    def transaction(self, *, producer: Producer | None = None) -> Transaction:
        """``with log.transaction() as tx:`` appends and offset commits that
        become visible together when the block ends, or not at all."""
        self._check_open()
        return Transaction(self, producer)

    # --- reading --------------------------------------------------------------

    def read(
        self,
        topic: str,
        partition: int = 0,
        offset: int = 0,
        *,
        records_max: int = 1000,
        bytes_max: int = 64 * 1024 * 1024,
    ) -> list[Record]:
        """Records of one partition from ``offset`` on, in offset order, at most
        ``records_max``; ``[]`` at the end of the partition. Only committed
        records, never a partial transaction; does not wait for new ones (see
        :meth:`scan` or a consumer). Raises ``TopicNotFound``,
        ``PartitionNotFound``, ``OffsetOutOfRange`` for an offset below the
        first stored one (removed by retention) or beyond the end, and
        ``CorruptionError`` rather than return a damaged record."""
        self._check_open()
        self._check_read(topic, offset, records_max, bytes_max)
        return self.backend.read(topic, partition, offset, records_max, bytes_max)

    def scan(
        self,
        topic: str,
        partition: int = 0,
        offset: int = 0,
        *,
        follow: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[Record]:
        """Every record of a partition from ``offset``; with ``follow``, keep
        waiting for new ones (without spinning) until ``timeout_s`` of quiet."""
        self._check_read(topic, offset, 1, timeout_s=timeout_s)
        while True:
            token = self.backend.change_token()
            records = self.read(topic, partition, offset, records_max=10_000)
            yield from records
            if records:
                offset = records[-1].offset + 1
                continue
            if not follow:
                return
            before = token
            token = self.backend.wait_for_change(token, 1.0 if timeout_s is None else timeout_s)
            if token == before and timeout_s is not None:
                return

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset to be written, per partition."""
        self._check_open()
        bounds = partition_bounds(self.backend, _core.check_topic_name(topic))
        return {partition: end for partition, (_, end) in bounds.items()}

    # --- consumers ------------------------------------------------------------

    def consumer(
        self,
        topics: str | Sequence[str],
        *,
        group: str | None = None,
        member_id: str | None = None,
        auto_commit: bool = True,
        auto_commit_interval_s: float = 0.0,
        offset_reset: OffsetReset = "earliest",
        lease_ms: int = 10_000,
        partitions: Sequence[TopicPartition] | None = None,
        instance_id: str | None = None,
    ) -> Consumer:
        """A consumer of ``topics``. With ``group``, partitions are shared among
        the group's members and progress is committed to the group (at-least-once:
        by default each poll commits what the previous poll returned). Without
        a group, it reads every partition (or ``partitions``) and commits nothing.

        ``instance_id`` makes the member *static* (Kafka's KIP-345): a
        consumer opened later with the same instance id (say, the same worker
        restarted) takes this one's partitions at once instead of after its
        lease, and this one is fenced (``InstanceFenced``). ``member_id``
        names one incarnation and cannot be combined with ``instance_id``."""
        self._check_open()
        return Consumer(
            self,
            _consumer_core(
                topics,
                group,
                member_id,
                auto_commit,
                auto_commit_interval_s,
                offset_reset,
                lease_ms,
                partitions,
                instance_id,
            ),
        )

    def groups(self) -> list[str]:
        """The names of the consumer groups that have members or committed
        offsets, sorted."""
        self._check_open()
        return self.backend.list_groups()

    def describe_group(self, group: str) -> GroupInfo:
        """Consumer group ``group``'s generation, members (with their
        partitions and leases) and committed offsets. Raises ``NotFound`` for
        a group without members or committed offsets, ``UsageError`` for a bad name."""
        self._check_open()
        return self.backend.describe_group(_core.check_group_name(group))

    def lag(self, group: str) -> dict[TopicPartition, tuple[int | None, int, int]]:
        """Per partition of the group's topics: ``(committed, end, lag)``.
        A partition without a committed offset counts from its start offset."""
        self._check_open()
        return group_lag(self.backend, _core.check_group_name(group))

    def maintain(self) -> MaintenanceReport:
        """Apply retention and compaction now and report what was removed, per
        topic (SQLite also does it every minute). Safe at any time: consumers
        past the removed records are unaffected, and one behind them is
        reset by its ``offset_reset``."""
        self._check_open()
        return self.backend.maintain()


class Producer:
    """An idempotent producer: every append carries ``(producer_id, sequence)``
    and the log writes each sequence at most once, so a retry after an unknown
    outcome (a crash, a timeout) cannot duplicate a record.

    Opening a producer starts a new *epoch* and fences older instances with the
    same id (``ProducerFenced``). Sequences grow by one per call unless given:
    pass your own (say, the number of the input line) and, after a restart,
    skip the input up to :attr:`last_sequence`. Sequences must increase but
    may skip. A retry of one of the last 64 requests returns its original
    positions; an older sequence raises ``OutOfOrderSequence``.
    """

    def __init__(self, log: Log, producer_id: str) -> None:
        self._log = log
        self.producer_id = _core.check_producer_id(producer_id)
        epoch, last_sequence = log.backend.init_producer(self.producer_id)
        self._core = ProducerCore(self.producer_id, epoch, last_sequence)
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        """This incarnation's epoch; opening the id again fences this one."""
        return self._core.epoch

    @property
    def last_sequence(self) -> int:
        """The highest sequence written durably under this producer id, ``-1``
        if none: the log's value when this producer was opened (also after a
        crash: it commits with the records), raised by each append that
        returned. Resume a numbered input after it."""
        return self._core.last_sequence

    def stamp(self, sequence: int | None = None) -> ProducerStamp:
        """Take the next sequence number (or ``sequence``) without writing."""
        with self._lock:
            return self._core.stamp(sequence)

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
        sequence: int | None = None,
    ) -> Position:
        """Append one record as the next sequence number (or
        ``sequence``) and return its position, once durable; see
        :meth:`Log.append <unbundled.Log.append>` for the arguments. Safe to retry
        after an unknown outcome with the same ``sequence``: a retry of one of the
        last ``limits.producer_window_requests_max`` requests writes nothing and
        returns the original position. Raises ``ProducerFenced`` once the producer id
        was opened again, ``OutOfOrderSequence`` for an older sequence (nothing
        written), and what :meth:`Log.append <unbundled.Log.append>` raises."""
        message = self._log._one(value, key, headers, timestamp, partition)
        return self.append_batch(topic, (message,), sequence=sequence)[0]

    def append_batch(
        self, topic: str, messages: Iterable[bytes | Message], *, sequence: int | None = None
    ) -> list[Position]:
        """Append atomically as one sequence number; a retry returns the original positions."""
        log = self._log
        config = log._config(topic)
        items = log._items(topic, config, messages)
        return self._write(
            WriteBatch({topic: items}, (), None, {topic: config.partitions}), sequence
        )

    def _write(self, batch: WriteBatch, sequence: int | None = None) -> list[Position]:
        """Stamp ``batch``, write it, wait until it is durable."""
        log = self._log
        # Take the sequence and enqueue under one lock, so the writer sees
        # sequences in order even when threads share this producer; and never
        # commit inline under it (the other threads would wait out the commit
        # instead of batching with it).
        with self._lock:
            stamp = self._core.stamp(sequence)
            waiter = SyncWaiter(inline=False)
            log._check_open()
            log.backend.submit(batch._replace(producer=stamp), waiter)
        positions = log._wait(waiter)
        with self._lock:  # threads finishing out of order must not lower it
            self._core.written(stamp)
        return positions


class Transaction:
    """Appends and offset commits that commit atomically; see :meth:`Log.transaction`.

    Nothing is written until the ``with`` block ends without an exception (or
    :meth:`commit` is called); then everything becomes visible at once. Reads
    inside the block do not see the transaction's own appends. After commit,
    :attr:`positions` holds the appended records' positions in order.
    """

    def __init__(self, log: Log, producer: Producer | None) -> None:
        self._log = log
        self._producer = producer
        self._core = LogTxnCore()
        self.positions: list[Position] = []

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._core.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> None:
        """Add one record for ``topic`` to the transaction; see
        :meth:`Log.append` for the arguments and the partition chosen.
        Nothing is written until :meth:`commit`. The record is checked now:
        ``TopicNotFound``, ``PartitionNotFound``, ``RecordTooLarge`` or
        ``UsageError`` leave the transaction as it was. Raises ``UsageError``
        once the transaction is committed or aborted."""
        self.append_batch(topic, (self._log._one(value, key, headers, timestamp, partition),))

    def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> None:
        """Add records for ``topic``, in order, to the transaction; checked
        now as in :meth:`append`, written only by :meth:`commit`."""
        self._core.check()
        config = self._log._config(topic)
        self._core.add_items(topic, self._log._items(topic, config, messages), config.partitions)

    def commit_offsets(
        self,
        consumer: Consumer | None = None,
        *,
        group: str | None = None,
        offsets: dict[TopicPartition, int] | None = None,
    ) -> None:
        """Commit a consumer's consumed positions (fenced by its generation) as
        part of this transaction: the exactly-once consume-transform-produce step.
        ``group`` with ``offsets`` commits for a group without members."""
        self._core.add_offsets(consumer, group, offsets)

    def commit(self) -> list[Position]:
        """Write everything added, atomically, and return the appended
        records' positions in the order they were added (also kept in
        :attr:`positions`). Blocks until durable. The ``with`` block calls it
        when it ends without an exception.

        All or nothing: on any error nothing of the transaction is visible,
        e.g. ``StaleGeneration`` when a consumer whose offsets it commits lost
        a partition meanwhile, ``ProducerFenced`` for a fenced producer,
        ``TopicNotFound`` for a topic deleted since. Either way the
        transaction is finished: a second ``commit()`` raises ``UsageError``;
        start a new transaction to try again.
        """
        batch = self._core.finish()
        if batch is None:
            return []
        self.positions = self._log._submit(batch, self._producer)
        self._core.committed()
        return self.positions

    def abort(self) -> None:
        """Discard everything; nothing of this transaction becomes visible.
        The ``with`` block calls it when it ends with an exception. Idempotent."""
        self._core.abort()
