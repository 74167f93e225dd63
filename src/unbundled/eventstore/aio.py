"""The asyncio twin of :mod:`unbundled.eventstore.api`: ``AsyncEventStore``.

Appends never hop through a thread: the task hands its writes to the
backend's group-commit writer with an :class:`~unbundled._waiters.AsyncWaiter`
and awaits the future, which the writer resolves together with every other
append of the same batch on the same event loop (one ``call_soon_threadsafe``
per loop per batch). That is what lets many tasks on one loop share each
fsync. Reads run the blocking backend call, and the decoding, in a worker
thread. Validation and serialization are the sync facade's
(:class:`~unbundled.eventstore.api.EventStoreBase`), so both behave alike.

>>> import asyncio
>>> from unbundled.eventstore import AsyncEventStore, Event, NO_STREAM
>>> class Opened(Event):
...     owner: str
>>> async def main() -> list[object]:
...     async with await AsyncEventStore.open("memory://", events=[Opened]) as store:
...         await store.append("account-1", [Opened(owner="ada")], expected_version=NO_STREAM)
...         return [e.event for e in await store.read("account-1")]
>>> asyncio.run(main())
[Opened(owner='ada')]
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

from .. import _registry
from .._ground import SyncLevel
from .._ground.waiters import AsyncWaiter
from .._registry import EVENTS
from . import _core
from ._base import EventInput, EventStoreBase, StoredEvent
from ._protocol import ANY, AppendResult, NewEvent, RecordedEvent, StreamState, StreamWrite
from .serialization import Event, Metadata, Serializer
from .subscriptions import AsyncSubscription

T = TypeVar("T")

_PAGE = 1000  # events per read in iter_stream


class AsyncEventStore(EventStoreBase):
    """Streams of events for asyncio programs. Same semantics as
    :class:`unbundled.EventStore`; share one per process between tasks (and
    event loops): their appends are group-committed together."""

    @classmethod
    async def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        events: Iterable[type[Event]] = (),
        serializer: Serializer | None = None,
        **options: Any,
    ) -> AsyncEventStore:
        """Open the store at ``url``, as :meth:`EventStore.open` does (a SQLite
        file, ``memory://`` or ``postgresql://``). Opening may create or
        migrate the file, so it runs in a worker thread."""
        opening = partial(_registry.open, url, serving=EVENTS, sync=sync, **options)
        backend: Any = await asyncio.to_thread(opening)
        return cls(backend, events=events, serializer=serializer)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        return await asyncio.to_thread(fn, *args)

    async def __aenter__(self) -> AsyncEventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the backend (waits for queued appends to finish). Idempotent."""
        if not self._closed:
            self._closed = True
            if self._shared:  # a Database's part: closing the database closes it
                return
            close = getattr(self.backend, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    # --- writing --------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[EventInput],
        expected_version: int = ANY,
        *,
        ids: Sequence[str | uuid.UUID] | None = None,
        metadata: Metadata | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` if it is at ``expected_version``; see
        :meth:`unbundled.EventStore.append`. Returns once the events are durable.

        Cancelled before the writer takes it, nothing is written; after,
        it commits. Retry a cancelled append with the same ``ids``."""
        if _personal((events,)):
            write = await self._run(self._write, stream, events, expected_version, ids, metadata)
        else:
            write = self._write(stream, events, expected_version, ids, metadata)
        return (await self._submit([write]))[0]

    async def append_many(
        self,
        writes: Sequence[tuple[str, Sequence[EventInput], int]],
        *,
        metadata: Metadata | None = None,
    ) -> list[AppendResult]:
        """Atomically append to several streams, each ``(stream, events,
        expected_version)``: all of them, or (on any conflict) none."""

        def build() -> list[StreamWrite]:
            return [self._write(s, evs, exp, None, metadata) for s, evs, exp in writes]

        built = await self._run(build) if _personal([w[1] for w in writes]) else build()
        return await self._submit(built)

    async def _submit(self, writes: list[StreamWrite]) -> list[AppendResult]:
        self._check_open()
        waiter = AsyncWaiter()
        self.backend.submit_events(writes, waiter)
        # Cancelled before the writer takes it, the append is withdrawn (not
        # written); once taken, it commits and cancelling only ends the wait.
        # The caller cannot tell which: retry with the same ids (a no-op if
        # it committed).
        results: list[AppendResult] = await waiter.future
        return results

    async def forget(self, subject: str) -> None:
        """Crypto-shred ``subject``; see :meth:`unbundled.EventStore.forget`."""
        await self._run(self.backend.forget_subject, subject)

    async def delete(self, stream: str, expected_version: int = ANY, *, hard: bool = False) -> None:
        """Soft delete, or with ``hard`` tombstone, ``stream``; see
        :meth:`unbundled.EventStore.delete`."""
        await self._run(
            self.backend.delete_stream,
            _core.check_stream_name(stream),
            _core.check_expected_version(expected_version),
            hard,
        )

    # --- reading --------------------------------------------------------------

    def _read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool
    ) -> list[StoredEvent]:
        return self._decode_many(self.backend.read_stream(stream, from_version, limit, backwards))

    async def read(
        self,
        stream: str,
        from_version: int | None = None,
        *,
        limit: int = 10_000,
        backwards: bool = False,
    ) -> list[StoredEvent]:
        """Events of ``stream`` from ``from_version`` (default: the first, or
        with ``backwards`` the last), decoded (and upcast). Raises
        ``StreamNotFound`` / ``StreamDeleted``."""
        stream, start = self._read_args(stream, from_version, backwards)
        limit = self._check_limit(limit)
        return await self._run(self._read_stream, stream, start, limit, backwards)

    async def read_raw(
        self,
        stream: str,
        from_version: int | None = None,
        *,
        limit: int = 10_000,
        backwards: bool = False,
    ) -> list[RecordedEvent]:
        """Like :meth:`read` without decoding; see :meth:`unbundled.EventStore.read_raw`."""
        stream, start = self._read_args(stream, from_version, backwards)
        return await self._run(
            self.backend.read_stream, stream, start, self._check_limit(limit), backwards
        )

    async def iter_stream(self, stream: str, from_version: int = 0) -> AsyncIterator[StoredEvent]:
        """Every event of ``stream`` from ``from_version``, page by page."""
        while True:
            page = await self.read(stream, from_version, limit=_PAGE)
            for event in page:
                yield event
            if len(page) < _PAGE:
                return
            from_version = page[-1].version + 1

    def _read_all(
        self,
        after_position: int,
        limit: int,
        categories: Sequence[str] | None,
        types: list[str] | None,
    ) -> list[StoredEvent]:
        return self._decode_many(self.backend.read_all(after_position, limit, categories, types))

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
    ) -> list[StoredEvent]:
        """Events of every stream after ``after_position``, in global order, up
        to the safe position (never skipping one that commits later)."""
        return await self._run(
            self._read_all,
            self._check_position(after_position),
            self._check_limit(limit),
            categories,
            self._type_names(types),
        )

    async def read_all_raw(
        self, after_position: int = 0, *, limit: int = 1000
    ) -> list[RecordedEvent]:
        """Like :meth:`read_all` without decoding (for copying and tools)."""
        return await self._run(
            self.backend.read_all,
            self._check_position(after_position),
            self._check_limit(limit),
            None,
            None,
        )

    async def state(self, stream: str) -> StreamState:
        """The stream's version (``NO_STREAM`` if none) and deletion state."""
        return await self._run(self.backend.stream_state, _core.check_stream_name(stream))

    async def streams(
        self, *, category: str | None = None, after: str = "", limit: int = 1000
    ) -> list[str]:
        """Names of live streams, sorted; page with ``after``."""
        return await self._run(self.backend.list_streams, after, self._check_limit(limit), category)

    async def safe_position(self) -> int:
        """Every event at or below this position is committed and readable."""
        return await self._run(self.backend.safe_position)

    def subscribe(
        self,
        after_position: int = 0,
        *,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
        batch_size: int = 500,
    ) -> AsyncSubscription:
        """Events after ``after_position``, stored ones first, then live, each
        once, in order: ``async with store.subscribe() as sub: async for e in sub``.
        See :class:`unbundled.eventstore.AsyncSubscription`."""
        return AsyncSubscription(
            self, after_position, categories=categories, types=types, batch_size=batch_size
        )


def _personal(batches: Iterable[Sequence[EventInput]]) -> bool:
    """Whether any event has personal data: sealing it fetches (or creates)
    the subject's key from the backend, a blocking call kept off the loop."""
    return any(
        isinstance(event, Event) and type(event).personal_data
        for events in batches
        if not isinstance(events, Event | NewEvent)  # one event: _write explains the mistake
        for event in events
    )


__all__ = ["AsyncEventStore"]
