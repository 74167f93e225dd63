"""The event store's public, synchronous API.

>>> from unbundled.eventstore import EventStore, Event, NO_STREAM
>>> class Opened(Event):
...     owner: str
>>> with EventStore.open("memory://", events=[Opened]) as store:
...     result = store.append("account-1", [Opened(owner="ada")], expected_version=NO_STREAM)
...     [e.event for e in store.read("account-1")]
[Opened(owner='ada')]
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

from .. import _registry
from .._ground import SyncLevel
from .._ground.waiters import SyncWaiter
from .._registry import EVENTS
from . import _core
from ._base import (
    EventInput,
    EventStoreBase,
    StoredEvent,
    new_event_id,
)
from ._protocol import (
    ANY,
    AppendResult,
    RecordedEvent,
    StreamState,
    StreamWrite,
)
from .projections import Projection, ProjectionRunner
from .serialization import Event, Metadata, Serializer
from .subscriptions import Subscription, SubscriptionWorker, subscribe

__all__ = ["EventInput", "EventStore", "EventStoreBase", "StoredEvent", "new_event_id"]


class EventStore(EventStoreBase):
    """Streams of events with optimistic concurrency, over any event-store backend.

    Share one per process between threads: appends from all threads are
    group-committed (one transaction and one fsync for many appends).
    """

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        events: Iterable[type[Event]] = (),
        serializer: Serializer | None = None,
        **options: Any,
    ) -> EventStore:
        """Open the store at ``url``: a SQLite file (a path or ``sqlite:///path.db``;
        ``?mode=ro`` opens it read-only), ``memory://`` or
        ``postgresql://user@host/db?schema=name``. ``redis://`` and ``nats://``
        do not serve the event store: ``NotSupported``."""
        backend: Any = _registry.open(url, serving=EVENTS, sync=sync, **options)
        return cls(backend, events=events, serializer=serializer)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend (a SQLite or PostgreSQL backend finishes its queued
        appends first). Idempotent; afterwards every call raises ``Closed``."""
        if not self._closed:
            self._closed = True
            if self._shared:  # a Database's part: closing the database closes it
                return
            close = getattr(self.backend, "close", None)
            if close is not None:
                close()

    # --- writing --------------------------------------------------------------

    def append(
        self,
        stream: str,
        events: Sequence[EventInput],
        expected_version: int = ANY,
        *,
        ids: Sequence[str | uuid.UUID] | None = None,
        metadata: Metadata | None = None,
    ) -> AppendResult:
        """Append ``events`` to ``stream`` if it is at ``expected_version``
        (``ANY``, ``NO_STREAM``, ``STREAM_EXISTS`` or an exact version).

        Raises ``WrongExpectedVersion`` (naming the stream, the expected and
        the actual version) and writes nothing on a mismatch. Pass ``ids`` to
        make a retry safe: appending the same ids with the same content again
        returns the original result and writes nothing.
        """
        write = self._write(stream, events, expected_version, ids, metadata)
        return self._submit([write])[0]

    def append_many(
        self,
        writes: Sequence[tuple[str, Sequence[EventInput], int]],
        *,
        metadata: Metadata | None = None,
    ) -> list[AppendResult]:
        """Atomically append to several streams, each ``(stream, events,
        expected_version)``: all of them, or (on any conflict) none."""
        built = [self._write(s, evs, exp, None, metadata) for s, evs, exp in writes]
        return self._submit(built)

    def _submit(self, writes: list[StreamWrite]) -> list[AppendResult]:
        self._check_open()
        waiter = SyncWaiter()
        self.backend.submit_events(writes, waiter)
        results: list[AppendResult] = waiter.wait()
        return results

    def forget(self, subject: str) -> None:
        """Crypto-shred ``subject``: delete its key for good. Its events stay
        readable with their personal fields ``None``; appending new personal
        data for it raises ``SubjectForgotten``. Idempotent."""
        self._check_open()
        self.backend.forget_subject(subject)

    def delete(self, stream: str, expected_version: int = ANY, *, hard: bool = False) -> None:
        """Soft delete (reads stop, the history stays in ``$all``, a later append
        starts the stream again) or, with ``hard``, tombstone it for good."""
        self._check_open()
        self.backend.delete_stream(
            _core.check_stream_name(stream), _core.check_expected_version(expected_version), hard
        )

    # --- reading --------------------------------------------------------------

    def read(
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
        rows = self.read_raw(stream, from_version, limit=limit, backwards=backwards)
        return self._decode_many(rows)

    def read_raw(
        self,
        stream: str,
        from_version: int | None = None,
        *,
        limit: int = 10_000,
        backwards: bool = False,
    ) -> list[RecordedEvent]:
        """Like :meth:`read` without decoding: the events as stored (type,
        schema version, JSON bytes). For tools, and to look at an event that
        raises ``EventSchemaMismatch`` when decoded."""
        self._check_open()
        stream, start = self._read_args(stream, from_version, backwards)
        return self.backend.read_stream(stream, start, self._check_limit(limit), backwards)

    def iter_stream(self, stream: str, from_version: int = 0) -> Iterator[StoredEvent]:
        """Every event of ``stream`` from ``from_version``, page by page."""
        while True:
            page = self.read(stream, from_version, limit=1000)
            yield from page
            if len(page) < 1000:
                return
            from_version = page[-1].version + 1

    def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
    ) -> list[StoredEvent]:
        """Events of every stream after ``after_position``, in global order,
        up to the safe position (never skipping one that commits later)."""
        self._check_open()
        rows = self.backend.read_all(
            self._check_position(after_position),
            self._check_limit(limit),
            categories,
            self._type_names(types),
        )
        return self._decode_many(rows)

    def read_all_raw(self, after_position: int = 0, *, limit: int = 1000) -> list[RecordedEvent]:
        """Like :meth:`read_all` without decoding (for copying and tools)."""
        self._check_open()
        return self.backend.read_all(
            self._check_position(after_position), self._check_limit(limit), None, None
        )

    def state(self, stream: str) -> StreamState:
        """The stream's version (``NO_STREAM`` if none) and deletion state."""
        self._check_open()
        return self.backend.stream_state(_core.check_stream_name(stream))

    def streams(
        self, *, category: str | None = None, after: str = "", limit: int = 1000
    ) -> list[str]:
        """Names of live streams, sorted; page with ``after``."""
        self._check_open()
        return self.backend.list_streams(after, self._check_limit(limit), category)

    def safe_position(self) -> int:
        """Every event at or below this position is committed and readable."""
        self._check_open()
        return self.backend.safe_position()

    # --- subscriptions and projections ------------------------------------------

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
        handler: None = None,
        batch_size: int = 500,
    ) -> Subscription: ...

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
        handler: Callable[[StoredEvent], object],
        batch_size: int = 500,
    ) -> SubscriptionWorker: ...

    def subscribe(
        self,
        after_position: int = 0,
        *,
        categories: Sequence[str] | None = None,
        types: Sequence[str | type[Event]] | None = None,
        handler: Callable[[StoredEvent], object] | None = None,
        batch_size: int = 500,
    ) -> Subscription | SubscriptionWorker:
        """Events after ``after_position``, stored ones first, then live, each
        once, in order; see :mod:`unbundled.eventstore.subscriptions`. Iterate
        the subscription, or pass ``handler`` to run it on a thread (the
        returned worker's ``stop()`` ends it)."""
        return subscribe(
            self,
            after_position,
            categories=categories,
            types=types,
            handler=handler,
            batch_size=batch_size,
        )

    def projections(self, *projections: Projection, batch_size: int = 256) -> ProjectionRunner:
        """A runner (not started: use ``with`` or ``start()``) for ``projections``;
        see :mod:`unbundled.eventstore.projections`."""
        return ProjectionRunner(self, projections, batch_size=batch_size)
