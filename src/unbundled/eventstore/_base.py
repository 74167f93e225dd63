"""What the event store's facades share, below them and below the
subscriptions and projections that take a store: the stored event's shape,
serialization and validation (:class:`EventStoreBase`), new event ids.

``api`` (the sync facade) and ``aio`` (the async one) build on this; so do
``subscriptions`` and ``projections``, which the facades return, so that
none of them has to import another to know what a store is.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .. import limits
from .._bounds import check_int
from ..errors import Closed, CorruptionError, Error, EventSchemaMismatch, UsageError
from . import _core
from ._protocol import (
    EventStoreBackend,
    NewEvent,
    RecordedEvent,
    StreamWrite,
)
from .serialization import Event, Metadata, Serializer

if TYPE_CHECKING:
    from .shredding import Shredder

EventInput = Event | NewEvent


class _RandomPool:
    """Random bytes from ``os.urandom``, drawn 4 KiB at a time.

    ``os.urandom`` releases the GIL for its system call; one call per event
    let the writer thread take the GIL from the event loop at every append,
    which halved the appends per group commit. A child process starts with
    an empty pool (``os.register_at_fork``), so it never repeats its
    parent's bytes.
    """

    _SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0

    def take(self, count: int) -> bytes:
        with self._lock:
            at = self._at
            if at + count > len(self._buffer):
                self._buffer, at = os.urandom(self._SIZE), 0
            self._at = at + count
            return self._buffer[at : at + count]


_random_bytes = _RandomPool().take


def new_event_id() -> str:
    """A new event id: a UUIDv7 (RFC 9562), 48 bits of Unix milliseconds
    then 74 random bits, in canonical text form.

    Time-ordered ids land side by side in the store's unique index on ids, so
    a batch of appends touches a few index pages instead of one random page
    per event: on SQLite that halves the pages written per group commit.
    """
    rand = int.from_bytes(_random_bytes(10), "big")
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
