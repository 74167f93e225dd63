"""The asyncio twin of :mod:`unbundled.log.api`: ``AsyncLog``, ``AsyncProducer``,
``AsyncConsumer``, ``AsyncTransaction``.

Appends never hop through a thread: the task enqueues its batch for the
group-commit writer and awaits a future that the writer resolves, batched per
event loop; on a backend with an asyncio driver (NATS, ``OpensLoopWriter``)
the append is published from the caller's loop on a connection of its own.
Other calls (reads, topic admin, group membership) run the backend's
blocking call in a worker thread. The decisions are shared with the
sync API: validation in ``_core``, consumer logic in ``_consumer``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, cast

from .. import _registry, limits
from .._ground.waiters import AsyncWaiter
from .._registry import LOG
from ..errors import PartitionNotFound, TopicExists, TopicNotFound
from . import _core
from ._async_consumer import AsyncConsumer
from ._base import LogBase, _consumer_core, group_lag, partition_bounds
from ._consumer import OffsetReset
from ._producer import ProducerCore
from ._protocol import (
    CleanupPolicy,
    GroupInfo,
    Headers,
    LogBackend,
    LoopWriter,
    MaintenanceReport,
    Message,
    OpensLoopWriter,
    Position,
    ProducerStamp,
    Record,
    SyncLevel,
    TopicConfig,
    TopicInfo,
    TopicPartition,
    WriteBatch,
)
from ._transaction import LogTxnCore

T = TypeVar("T")


class AsyncLog(LogBase):
    """The log for asyncio programs. Same semantics as :class:`unbundled.Log`.

    A cancelled append is withdrawn (not written) if the writer has not
    taken it yet, and commits if it has; retry it with an idempotent
    producer and the same sequence (docs/how-to/asyncio.md).
    """

    def __init__(self, backend: LogBackend) -> None:
        super().__init__(backend)
        # Topic configs being looked up, shared by the tasks that need them (_config).
        self._config_loads: dict[str, asyncio.Future[TopicConfig]] = {}

    @classmethod
    async def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        **options: Any,
    ) -> AsyncLog:
        """Async twin of :meth:`unbundled.Log.open`; the backend is opened in a worker thread."""
        opening = partial(_registry.open, url, serving=LOG, sync=sync, **options)
        log = cls(await asyncio.to_thread(opening))
        try:
            # A backend with a writer for this loop (NATS) connects it now,
            # so a bad server fails here and the first append pays nothing.
            await log._loop_writer()
        except BaseException:
            await log.close()
            raise
        return log

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await asyncio.to_thread(fn, *args)

    # The backend's writer for one event loop (``OpensLoopWriter``: NATS).
    _native: bool | None = None  # decided on the first append
    _writer: asyncio.Future[LoopWriter] | None = None
    _writer_loop: asyncio.AbstractEventLoop | None = None

    async def _loop_writer(self) -> LoopWriter | None:
        """The backend's writer for the running loop, if it offers one, opened
        on first use. Only the first loop that appends gets one; appends from
        another loop take ``submit``."""
        if self._native is None:
            self._native = isinstance(self.backend, OpensLoopWriter)
        if not self._native:
            return None
        loop = asyncio.get_running_loop()
        if self._writer is None:
            backend = cast(OpensLoopWriter, self.backend)
            self._writer = asyncio.ensure_future(backend._open_loop_writer())
            self._writer_loop = loop
        elif self._writer_loop is not loop:
            return None
        opening = self._writer
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            return opening.result()
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            if not opening.cancelled():
                raise  # this caller was cancelled; the opening goes on
        except BaseException:
            pass
        if self._writer is opening:
            self._writer = None  # failed: the next append tries again
        return await opening  # raises its error

    async def __aenter__(self) -> AsyncLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Async twin of :meth:`unbundled.Log.close`: finishes queued writes and
        releases the backend (in a worker thread). Idempotent."""
        if not self._closed:
            self._closed = True
            await self._close_loop_writer()
            if self._shared:  # a Database's part: closing the database closes it
                return
            await asyncio.to_thread(self.backend.close)

    async def _close_loop_writer(self) -> None:
        opening, self._writer = self._writer, None
        if opening is None:
            return
        if not opening.done():
            opening.cancel()
            return
        if opening.cancelled() or opening.exception() is not None:
            return
        writer, loop = opening.result(), self._writer_loop
        if loop is asyncio.get_running_loop():
            await writer.aclose()
        elif loop is not None and not loop.is_closed():  # closed from another loop
            asyncio.run_coroutine_threadsafe(writer.aclose(), loop)

    # --- topics ---------------------------------------------------------------

    async def create_topic(
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
        """Async twin of :meth:`unbundled.Log.create_topic`."""
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
            await self._run(self.backend.create_topic, name, config)
        except TopicExists:
            if not exist_ok or await self._run(self.backend.topic_config, name) != config:
                raise
        self._configs[name] = config
        return config

    async def delete_topic(self, name: str) -> None:
        """Async twin of :meth:`unbundled.Log.delete_topic`."""
        self._configs.pop(name, None)
        await self._run(self.backend.delete_topic, _core.check_topic_name(name))

    async def topics(self) -> list[str]:
        """Async twin of :meth:`unbundled.Log.topics`."""
        return await self._run(self.backend.list_topics)

    async def describe_topic(self, name: str) -> TopicInfo:
        """Async twin of :meth:`unbundled.Log.describe_topic`."""
        return await self._run(self.backend.describe_topic, _core.check_topic_name(name))

    async def _config(self, topic: str) -> TopicConfig:
        config = self._configs.get(topic)
        if config is not None:
            return config
        # The first appends of many tasks share one lookup: a lookup each was
        # a burst of thread hops and backend reads that slowed every first
        # append (64 tasks: six times the time of the appends that follow).
        loads = self._config_loads
        pending = loads.get(topic)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = asyncio.ensure_future(
                self._run(self.backend.topic_config, _core.check_topic_name(topic))
            )
            loads[topic] = pending
            pending.add_done_callback(
                lambda done: loads.pop(topic) if loads.get(topic) is done else None
            )
        config = await asyncio.shield(pending)
        self._configs[topic] = config
        return config

    # --- writing --------------------------------------------------------------

    async def _submit(self, batch: WriteBatch) -> list[Position]:
        self._check_open()
        try:
            writer = await self._loop_writer()
            if writer is not None:
                return await writer.write(batch)
            waiter = AsyncWaiter()
            self.backend.submit(batch, waiter)
            positions: list[Position] = await waiter.future
        except (TopicNotFound, PartitionNotFound) as exc:
            self._forget(exc)
            raise
        return positions

    async def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> Position:
        """Async twin of :meth:`unbundled.Log.append`: the record goes to the
        group-commit writer from the event loop (no thread hop) and the task awaits
        its durability without blocking the loop."""
        config = self._configs.get(topic) or await self._config(topic)
        items = self._prepare_one(topic, config, value, key, headers, timestamp, partition)
        batch = WriteBatch({topic: items}, partitions={topic: config.partitions})
        return (await self._submit(batch))[0]

    async def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> list[Position]:
        """Async twin of :meth:`unbundled.Log.append_batch`."""
        config = self._configs.get(topic) or await self._config(topic)
        items = self._items(topic, config, messages)
        if not items:
            return []
        return await self._submit(WriteBatch({topic: items}, partitions={topic: config.partitions}))

    async def producer(self, producer_id: str) -> AsyncProducer:
        """Async twin of :meth:`unbundled.Log.producer` (a coroutine:
        registering the new epoch is a backend call)."""
        _core.check_producer_id(producer_id)
        epoch, last = await self._run(self.backend.init_producer, producer_id)
        return AsyncProducer(self, producer_id, epoch, last)

    def transaction(self, *, producer: AsyncProducer | None = None) -> AsyncTransaction:
        """Twin of :meth:`unbundled.Log.transaction` (not a coroutine); use the
        transaction with ``async with``."""
        self._check_open()
        return AsyncTransaction(self, producer)

    # --- reading --------------------------------------------------------------

    async def read(
        self,
        topic: str,
        partition: int = 0,
        offset: int = 0,
        *,
        records_max: int = 1000,
        bytes_max: int = 64 * 1024 * 1024,
    ) -> list[Record]:
        """Async twin of :meth:`unbundled.Log.read` (the read runs in a worker thread)."""
        self._check_read(topic, offset, records_max, bytes_max)
        return await self._run(self.backend.read, topic, partition, offset, records_max, bytes_max)

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
    ) -> AsyncConsumer:
        """Twin of :meth:`unbundled.Log.consumer` (not a coroutine: the consumer
        joins its group on its first poll); the consumer's methods that wait are
        coroutines."""
        self._check_open()
        return AsyncConsumer(
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

    async def groups(self) -> list[str]:
        """Async twin of :meth:`unbundled.Log.groups`."""
        return await self._run(self.backend.list_groups)

    async def describe_group(self, group: str) -> GroupInfo:
        """Async twin of :meth:`unbundled.Log.describe_group`."""
        return await self._run(self.backend.describe_group, _core.check_group_name(group))

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset to be written, per partition."""
        name = _core.check_topic_name(topic)
        bounds = await self._run(partition_bounds, self.backend, name)
        return {partition: end for partition, (_, end) in bounds.items()}

    async def lag(self, group: str) -> dict[TopicPartition, tuple[int | None, int, int]]:
        """Per partition of the group's topics: ``(committed, end, lag)``."""
        return await self._run(group_lag, self.backend, _core.check_group_name(group))

    async def scan(
        self,
        topic: str,
        partition: int = 0,
        offset: int = 0,
        *,
        follow: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Record]:
        """Every record of a partition from ``offset``; see :meth:`unbundled.Log.scan`."""
        self._check_read(topic, offset, 1, timeout_s=timeout_s)
        while True:
            token = await self._run(self.backend.change_token)
            records = await self.read(topic, partition, offset, records_max=10_000)
            for record in records:
                yield record
            if records:
                offset = records[-1].offset + 1
                continue
            if not follow:
                return
            wait_s = 1.0 if timeout_s is None else timeout_s
            if await self._run(self.backend.wait_for_change, token, wait_s) == token and (
                timeout_s is not None
            ):
                return

    async def maintain(self) -> MaintenanceReport:
        """Async twin of :meth:`unbundled.Log.maintain`."""
        return await self._run(self.backend.maintain)


class AsyncProducer:
    """The asyncio twin of :class:`unbundled.Producer`."""

    def __init__(self, log: AsyncLog, producer_id: str, epoch: int, last_sequence: int) -> None:
        self._log = log
        self.producer_id = producer_id
        self._core = ProducerCore(producer_id, epoch, last_sequence)

    @property
    def epoch(self) -> int:
        """This incarnation's epoch; see :attr:`unbundled.Producer.epoch`."""
        return self._core.epoch

    @property
    def last_sequence(self) -> int:
        """The highest sequence written durably under this producer id; see
        :attr:`unbundled.Producer.last_sequence`."""
        return self._core.last_sequence

    def stamp(self, sequence: int | None = None) -> ProducerStamp:
        """Async twin of :meth:`unbundled.Producer.stamp` (not a coroutine)."""
        return self._core.stamp(sequence)

    async def append(
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
        """Async twin of :meth:`unbundled.Producer.append`."""
        message = self._log._one(value, key, headers, timestamp, partition)
        return (await self.append_batch(topic, (message,), sequence=sequence))[0]

    async def append_batch(
        self, topic: str, messages: Iterable[bytes | Message], *, sequence: int | None = None
    ) -> list[Position]:
        """Async twin of :meth:`unbundled.Producer.append_batch`."""
        log = self._log
        config = log._configs.get(topic) or await log._config(topic)
        items = log._items(topic, config, messages)
        return await self._write(
            WriteBatch({topic: items}, (), None, {topic: config.partitions}), sequence
        )

    async def _write(self, batch: WriteBatch, sequence: int | None = None) -> list[Position]:
        # No await between stamping and submitting: sequences reach the
        # writer in order even with many tasks sharing this producer.
        stamp = self._core.stamp(sequence)
        positions = await self._log._submit(batch._replace(producer=stamp))
        self._core.written(stamp)
        return positions


class AsyncTransaction:
    """The asyncio twin of :class:`unbundled.Transaction` (``async with``)."""

    def __init__(self, log: AsyncLog, producer: AsyncProducer | None) -> None:
        self._log = log
        self._producer = producer
        self._core = LogTxnCore()
        self.positions: list[Position] = []

    async def __aenter__(self) -> AsyncTransaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._core.done:
            return
        if exc_type is None:
            await self.commit()
        else:
            self.abort()

    async def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> None:
        """Async twin of :meth:`unbundled.Transaction.append`
        (a coroutine: the topic's config may have to be read)."""
        message = self._log._one(value, key, headers, timestamp, partition)
        await self.append_batch(topic, (message,))

    async def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> None:
        """Async twin of :meth:`unbundled.Transaction.append_batch`."""
        self._core.check()
        log = self._log
        config = log._configs.get(topic) or await log._config(topic)
        self._core.add_items(topic, log._items(topic, config, messages), config.partitions)

    def commit_offsets(
        self,
        consumer: AsyncConsumer | None = None,
        *,
        group: str | None = None,
        offsets: dict[TopicPartition, int] | None = None,
    ) -> None:
        """Twin of
        :meth:`unbundled.Transaction.commit_offsets` (not a coroutine: nothing is written
        until :meth:`commit`)."""
        self._core.add_offsets(consumer, group, offsets)

    async def commit(self) -> list[Position]:
        """Async twin of :meth:`unbundled.Transaction.commit`."""
        batch = self._core.finish()
        if batch is None:
            return []
        if self._producer is not None:
            self.positions = await self._producer._write(batch)
        else:
            self.positions = await self._log._submit(batch)
        self._core.committed()
        return self.positions

    def abort(self) -> None:
        """Twin of :meth:`unbundled.Transaction.abort` (not a coroutine)."""
        self._core.abort()


__all__ = ["AsyncConsumer", "AsyncLog", "AsyncProducer", "AsyncTransaction", "LogBackend"]
