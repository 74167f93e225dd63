"""The asyncio twin of :mod:`unbundled.database.api`: ``await unbundled.open_async(url)``.

The parts are the async facades (``AsyncLog``, ``AsyncEventStore``,
``AsyncIdempotency``) over the same backend; ``db.kv`` is the key-value
store (its calls are short and synchronous). ``async with db.transaction()
as tx:`` commits like the sync transaction; it awaits the commit without
blocking the event loop, so many tasks' transactions share one commit.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from .._ground import SyncLevel
from .._ground.waiters import AsyncWaiter
from ..consistency.kv.api import KV
from ..errors import TopicNotFound
from ..eventstore._protocol import ANY
from ..eventstore.aio import AsyncEventStore
from ..eventstore.api import EventInput
from ..eventstore.serialization import Metadata
from ..idempotency.aio import AsyncIdempotency
from ..idempotency.api import Attempt
from ..log._protocol import Headers, Message, TopicPartition
from ..log.aio import AsyncConsumer, AsyncLog
from ..transaction import _unit
from ..transaction._core import TxKV
from .api import _IDEMPOTENCY_SETTINGS, DatabaseBase

__all__ = ["AsyncDatabase", "AsyncTransaction", "open_async"]


async def open_async(
    url: str | os.PathLike[str] = "unbundled.db",
    *,
    sync: SyncLevel = "full",
    events: Iterable[type[Any]] = (),
    **options: Any,
) -> AsyncDatabase:
    """Async twin of :func:`unbundled.open` (opens the backend in a worker thread)."""
    from ..backends import open_kv_backend

    settings = {k: options.pop(k) for k in list(options) if k in _IDEMPOTENCY_SETTINGS}
    backend = await asyncio.to_thread(partial(open_kv_backend, url, sync=sync, **options))
    return AsyncDatabase(backend, events=events, idempotency=settings)


class AsyncDatabase(DatabaseBase[AsyncLog, AsyncEventStore, AsyncIdempotency]):
    """Async twin of :class:`unbundled.Database`."""

    _log_type = AsyncLog
    _events_type = AsyncEventStore
    _idem_type = AsyncIdempotency

    @property
    def log(self) -> AsyncLog:
        """The log (:class:`unbundled.AsyncLog`) on this database's backend."""
        return self._log_part()

    @property
    def events(self) -> AsyncEventStore:
        """The event store (:class:`unbundled.AsyncEventStore`) on this database's backend."""
        return self._events_part()

    @property
    def idempotency(self) -> AsyncIdempotency:
        """Idempotency keys (:class:`unbundled.AsyncIdempotency`) on this database's backend."""
        return self._idem_part()

    @property
    def kv(self) -> KV:
        """The key-value store (:class:`unbundled.consistency.KV`, synchronous) on this backend."""
        return self._kv_part()

    def transaction(self) -> AsyncTransaction:
        """``async with db.transaction() as tx:``; see :class:`unbundled.Transaction`."""
        return AsyncTransaction(self)

    async def __aenter__(self) -> AsyncDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Async twin of :meth:`unbundled.Database.close`."""
        if self._closed:
            return
        for part in self._close_parts():
            result = part.close()
            if asyncio.iscoroutine(result):
                await result
        await asyncio.to_thread(self.backend.close)


class AsyncTransaction:
    """Async twin of :class:`unbundled.Transaction`: the same writes, checked
    the same way; ``append`` and ``append_batch`` are coroutines (the
    topic's settings may have to be read), and so is :meth:`commit`."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db
        self._core = db._transaction_core()
        self.result: _unit.Committed | None = None

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

    @property
    def kv(self) -> TxKV:
        """Key-value changes in this transaction (``write``, ``compare_and_set``, ``delete``)."""
        return self._core.kv

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
        """Async twin of :meth:`unbundled.Transaction.append`."""
        core = self._core
        core.check()
        core.require(_unit.RECORDS)
        log = self._db.log
        config = log._configs.get(topic) or await log._config(topic)
        items = log._prepare_one(topic, config, value, key, headers, timestamp, partition)
        core.add_records(topic, items, config.partitions)

    async def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> None:
        """Async twin of :meth:`unbundled.Transaction.append_batch`."""
        self._core.check()
        self._core.require(_unit.RECORDS)
        log = self._db.log
        config = log._configs.get(topic) or await log._config(topic)
        self._core.add_records(topic, log._items(topic, config, messages), config.partitions)

    def commit_offsets(
        self,
        consumer: AsyncConsumer | None = None,
        *,
        group: str | None = None,
        offsets: dict[TopicPartition, int] | None = None,
    ) -> None:
        """Twin of :meth:`unbundled.Transaction.commit_offsets`."""
        self._core.add_offsets(consumer, group, offsets)

    def append_events(
        self,
        stream: str,
        events: Sequence[EventInput],
        expected_version: int = ANY,
        *,
        ids: Sequence[str | uuid.UUID] | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        """Twin of :meth:`unbundled.Transaction.append_events`."""
        self._core.add_events(stream, events, expected_version, ids, metadata)

    def complete(self, attempt: Attempt, result: Any) -> None:
        """Twin of :meth:`unbundled.Transaction.complete`."""
        self._core.add_complete(attempt, result)

    def fail(self, attempt: Attempt, error: BaseException) -> None:
        """Twin of :meth:`unbundled.Transaction.fail`."""
        self._core.add_fail(attempt, error)

    def record_phase(self, attempt: Attempt, name: str, output: Any) -> None:
        """Twin of :meth:`unbundled.Transaction.record_phase`."""
        self._core.add_phase(attempt, name, output)

    def sql(self, call: Callable[[Any], object]) -> None:
        """Twin of :meth:`unbundled.Transaction.sql` (``call`` runs on the backend's thread)."""
        self._core.add_sql(call)

    async def commit(self) -> _unit.Committed:
        """Async twin of :meth:`unbundled.Transaction.commit`. Cancelled
        before the writer takes it, nothing is written; once taken it
        commits, and cancelling only ends the wait."""
        core = self._core
        core.check()
        core.done = True
        if not core.unit:
            self.result = _unit.EMPTY
            return self.result
        self._db._check_open()
        waiter = AsyncWaiter()
        core.backend.submit_unit(core.unit, waiter)
        try:
            committed: _unit.Committed = await waiter.future
        except TopicNotFound:
            if "log" in self._db._parts:
                self._db.log._configs.clear()
            raise
        self.result = core.finish(committed)
        return self.result

    def abort(self) -> None:
        """Twin of :meth:`unbundled.Transaction.abort`."""
        self._core.done = True
        self._core.unit = _unit.Unit()
