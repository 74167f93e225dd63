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
from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import Any

from .._ground import SyncLevel
from .._ground.waiters import AsyncWaiter
from ..consistency.kv.api import KV
from ..errors import TopicNotFound
from ..eventstore.aio import AsyncEventStore
from ..idempotency.aio import AsyncIdempotency
from ..log._protocol import Headers, Message
from ..log.aio import AsyncLog
from ..transaction import _unit
from .api import _IDEMPOTENCY_SETTINGS, DatabaseBase, TransactionBase

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


class AsyncTransaction(TransactionBase):
    """Async twin of :class:`unbundled.Transaction`: the same writes, checked
    the same way (the writes other than the log's are
    :class:`~unbundled.database.api.TransactionBase`'s); ``append`` and
    ``append_batch`` are coroutines (the topic's settings may have to be
    read), and so is :meth:`commit`. ``sql`` functions run on the backend's
    thread."""

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
        """Async twin of :meth:`unbundled.Transaction.append`."""
        core = self._core
        core.check()
        core.require(_unit.RECORDS)
        log = self._db._log_part()
        config = log._configs.get(topic) or await log._config(topic)
        items = log._prepare_one(topic, config, value, key, headers, timestamp, partition)
        core.add_records(topic, items, config.partitions)

    async def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> None:
        """Async twin of :meth:`unbundled.Transaction.append_batch`."""
        self._core.check()
        self._core.require(_unit.RECORDS)
        log = self._db._log_part()
        config = log._configs.get(topic) or await log._config(topic)
        self._core.add_records(topic, log._items(topic, config, messages), config.partitions)

    async def commit(self) -> _unit.Committed:
        """Async twin of :meth:`unbundled.Transaction.commit`. Cancelled
        before the writer takes it, nothing is written; once taken it
        commits, and cancelling only ends the wait."""
        unit = self._unit_to_send()
        if unit is None:
            return _unit.EMPTY
        waiter = AsyncWaiter()
        self._core.backend.submit_unit(unit, waiter)
        try:
            committed: _unit.Committed = await waiter.future
        except TopicNotFound:
            self._forget_topics()
            raise
        return self._committed(committed)
