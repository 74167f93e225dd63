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
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import msgspec

from .. import _registry, limits
from .._bounds import check_int
from .._ground import SyncLevel
from .._ground.waiters import SyncWaiter
from .._registry import EVENTS
from ..errors import Closed, CorruptionError, Error, EventSchemaMismatch, UsageError
from . import _core
from ._protocol import (
    ANY,
    AppendResult,
    EventStoreBackend,
    NewEvent,
    RecordedEvent,
    StreamState,
    StreamWrite,
)
from .serialization import Event, Metadata, Serializer

if TYPE_CHECKING:
    from .projections import Projection, ProjectionRunner
    from .shredding import Shredder
    from .subscriptions import Subscription, SubscriptionWorker

EventInput = Event | NewEvent


def new_event_id() -> str:
    """A new event id: a UUIDv7 (RFC 9562), 48 bits of Unix milliseconds
    then 74 random bits, in canonical text form.

    Time-ordered ids land side by side in the store's unique index on ids, so
    a batch of appends touches a few index pages instead of one random page
    per event: on SQLite that halves the pages written per group commit.
    """
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version 7
        | (rand >> 62 & 0xFFF) << 64
        | 0b10 << 62  # the RFC 4122 / 9562 variant
        | rand & (1 << 62) - 1
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_END = 2**62  # a version past the end of any stream: "from the end"


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """A stored event, decoded: ``event`` is the typed event (a dict for a type
    no class is registered for), upcast to the current schema version."""

    id: str
    stream: str
    version: int
    position: int
    type: str
    schema_version: int
    event: Any
    metadata: Metadata
    recorded_ms: int


class EventStoreBase:
    """What the sync and async facades share: serialization and validation."""

    _shared = False  # True for a part of a Database, which owns the backend

    def __init__(
        self,
        backend: EventStoreBackend,
        *,
        events: Iterable[type[Event]] = (),
        serializer: Serializer | None = None,
        shredder: Shredder | None = None,
    ) -> None:
        self.backend = backend
        self.serializer = serializer if serializer is not None else Serializer(events)
        if serializer is not None:
            self.serializer.register(*events)
        self._shredder = shredder
        self._closed = False

    @property
    def shredder(self) -> Shredder:
        """Encrypts events' personal data by subject; made on first use, so the
        ``cryptography`` package (``unbundled[crypto]``) is needed only then."""
        if self._shredder is None:
            from .shredding import Shredder

            self._shredder = Shredder()
        return self._shredder

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the event store is closed")

    def _new_events(
        self,
        events: Sequence[EventInput],
        ids: Sequence[str | uuid.UUID] | None,
        metadata: Metadata | None,
    ) -> tuple[list[NewEvent], list[NewEvent]]:
        """The events to store, and those of them given already serialized
        (checked by :meth:`_check_serialized` once their sizes are known fine)."""
        if isinstance(events, Event | NewEvent):
            raise UsageError("append takes a sequence of events, not one event")
        if ids is not None and len(ids) != len(events):
            raise UsageError(f"{len(ids)} ids for {len(events)} events")
        meta = self._metadata(metadata) if metadata is not None else b"{}"
        out = []
        serialized = []
        for i, event in enumerate(events):
            event_id = _core.check_event_id(ids[i]) if ids is not None else new_event_id()
            if isinstance(event, NewEvent):
                _check_fields(event)
                given = event if ids is None else msgspec.structs.replace(event, id=event_id)
                out.append(given)
                serialized.append(given)
                continue
            if not isinstance(event, Event):
                raise UsageError(
                    f"events must be Event or NewEvent instances, got {type(event).__name__}"
                )
            kind, version, data = self.serializer.encode(event)
            if type(event).personal_data:
                data = self.shredder.seal(self.backend, event, kind, data)
            out.append(NewEvent(event_id, kind, data, meta, version))
        return out, serialized

    def _metadata(self, metadata: Metadata) -> bytes:
        """The append's metadata as stored, checked to read back as it is."""
        if not isinstance(metadata, Metadata):
            raise UsageError(f"metadata must be a Metadata, got {type(metadata).__name__}")
        try:
            data = self.serializer.encode_metadata(metadata)
            self.serializer.decode_metadata(data)
        except (TypeError, CorruptionError) as exc:
            raise UsageError(f"metadata cannot be stored: {exc}; nothing was written") from None
        return data

    def _check_serialized(self, event: NewEvent) -> None:
        """A serialized event must read back: as its registered class (or as
        a JSON object for a type without one), with metadata that decodes."""
        # Sealed personal data decodes only with its subject's key, at read
        # time: here it must at least be a JSON object, as any event.
        sealed = b'"$personal"' in event.data
        try:
            # (A type no class is registered for decodes as a JSON object.)
            kind = "" if sealed else event.type
            self.serializer.decode(kind, event.schema_version, event.data)
            if event.metadata != b"{}":
                self.serializer.decode_metadata(event.metadata)
        except (EventSchemaMismatch, CorruptionError) as exc:
            raise UsageError(
                f"event {event.id} ({event.type} v{event.schema_version}) would not be "
                f"readable: {exc.message}; nothing was written",
                **{**exc.details, "event_type": event.type, "event_id": event.id},
            ) from None

    def _write(
        self,
        stream: str,
        events: Sequence[EventInput],
        expected_version: int,
        ids: Sequence[str | uuid.UUID] | None,
        metadata: Metadata | None,
    ) -> StreamWrite:
        built, serialized = self._new_events(events, ids, metadata)
        write = StreamWrite(
            _core.check_stream_name(stream),
            _core.check_expected_version(expected_version),
            built,
        )
        _core.check_write(write)
        for event in serialized:
            self._check_serialized(event)
        return write

    def _decode(self, recorded: RecordedEvent) -> StoredEvent:
        return self._decode_many((recorded,))[0]

    def _decode_many(self, rows: Sequence[RecordedEvent]) -> list[StoredEvent]:
        # The read path of every event: lookups hoisted out of the loop, and
        # the usual empty metadata built directly instead of parsed.
        decode = self.serializer.decode
        current = self.serializer.current_decoders()
        decode_metadata = self.serializer.decode_metadata
        out: list[StoredEvent] = []
        append = out.append
        for r in rows:
            data = r.data
            kind = r.type
            fast = current.get((kind, r.schema_version))
            try:
                if b'"$personal"' in data:  # sealed personal data: decrypt, or None if forgotten
                    data = self.shredder.unseal(self.backend, kind, data)
                    fast = None
                # A registered type at its current version decodes in one call;
                # anything else (upcasts, unknown types, bad data) goes the long way.
                if fast is None:
                    event = decode(kind, r.schema_version, data)
                else:
                    try:
                        event = fast.decode(data)
                    except msgspec.DecodeError:
                        event = decode(kind, r.schema_version, data)  # raises, naming why
                metadata = r.metadata
                meta = Metadata() if metadata == b"{}" else decode_metadata(metadata)
            except (EventSchemaMismatch, CorruptionError) as exc:
                raise _located(exc, r) from None
            append(
                StoredEvent(
                    r.id,
                    r.stream,
                    r.version,
                    r.position,
                    kind,
                    r.schema_version,
                    event,
                    meta,
                    r.recorded_ms,
                )
            )
        return out

    @staticmethod
    def _read_args(stream: str, from_version: int | None, backwards: bool) -> tuple[str, int]:
        """A stream read's checked name and first version."""
        _core.check_stream_name(stream)
        return stream, EventStoreBase._check_from_version(from_version, backwards)

    @staticmethod
    def _type_names(types: Sequence[str | type[Event]] | None) -> list[str] | None:
        if types is None:
            return None
        return [t if isinstance(t, str) else (t.event_type or t.__name__) for t in types]

    @staticmethod
    def _check_limit(limit: int) -> int:
        return check_int("limit", limit, 1, limits.read_events_max)

    @staticmethod
    def _check_position(after_position: int) -> int:
        return check_int("after_position", after_position, 0, limits.position_max)

    @staticmethod
    def _check_from_version(from_version: int | None, backwards: bool) -> int:
        if from_version is None:
            return _END if backwards else 0
        return check_int("from_version", from_version, 0, limits.position_max)


def _check_fields(event: NewEvent) -> None:
    """msgspec does not check a struct's field types when it is made."""
    if type(event.data) is not bytes or type(event.metadata) is not bytes:
        raise UsageError(f"event {event.id}: data and metadata must be bytes", event_id=event.id)
    if type(event.schema_version) is not int:
        raise UsageError(
            f"event {event.id}: schema_version must be an int, got {event.schema_version!r}",
            event_id=event.id,
        )


def _located(exc: Error, recorded: RecordedEvent) -> Error:
    """``exc`` (a stored event that does not decode) naming where the event is."""
    where = {
        "stream": recorded.stream,
        "version": recorded.version,
        "position": recorded.position,
        "event_id": recorded.id,
    }
    return type(exc)(
        f"{exc.message} [event {recorded.id}, {recorded.stream}@{recorded.version}, "
        f"position {recorded.position}: read it as stored with read_raw()]",
        **{**exc.details, **where, "raw": recorded},
    )


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
        from .subscriptions import subscribe

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
        from .projections import ProjectionRunner

        return ProjectionRunner(self, projections, batch_size=batch_size)
