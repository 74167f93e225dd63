"""Aggregates: objects whose state is the fold of their own stream of events.

An aggregate's command methods check the rules against the current state and
``record`` new events; ``apply`` turns an event into a state change (and is
all that replay uses, so loading never re-checks old rules). A
:class:`Repository` loads aggregates (optionally as of a version or a time),
saves their new events with the version they were loaded at as the expected
version (so a concurrent save raises ``WrongExpectedVersion`` naming the
stream instead of silently interleaving), and keeps snapshots so that
loading a long stream reads only its tail.

>>> from unbundled.eventstore import EventStore, Event
>>> class Added(Event):
...     n: int
>>> class Counter(Aggregate):
...     category = "counter"
...     def __init__(self, id: str) -> None:
...         super().__init__(id)
...         self.total = 0
...     def add(self, n: int) -> None:
...         self.record(Added(n=n))
...     @applies(Added)
...     def _added(self, event: Added) -> None:
...         self.total += event.n
>>> with EventStore.open("memory://") as store:
...     counters = Repository(store, Counter)
...     counter = counters.create("c1")
...     counter.add(2); counter.add(3)
...     _ = counters.save(counter)
...     loaded = counters.load("c1")
...     (loaded.stream, loaded.version, loaded.total)
('counter-c1', 1, 5)

Snapshots are a cache: events stay the truth. A snapshot stores the state
struct an aggregate returns from ``to_snapshot`` (a :class:`SnapshotState`,
versioned and upcast exactly like an event); one whose version no upcaster
bridges, or whose type is not the aggregate's, is ignored and the stream is
replayed from the start instead, which gives the same state, only slower.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from .. import limits
from .._bounds import check_int, check_optional_int
from .._ground import now_ms
from ..errors import NotSupported, StreamNotFound, UsageError
from . import _core
from ._protocol import NO_STREAM, AppendResult, Snapshot
from .api import EventStore, StoredEvent, new_event_id
from .serialization import Event, Metadata, Serializer, Upcaster, type_name

__all__ = ["Aggregate", "Repository", "SnapshotState", "applies"]

_log = logging.getLogger("unbundled.eventstore")

A = TypeVar("A", bound="Aggregate")
F = TypeVar("F", bound=Callable[..., None])

_PAGE = 1000  # events per read while replaying
_SNAPSHOT_TRIES = 3  # snapshots tried per load before replaying from the start


def applies(*event_types: type[Event]) -> Callable[[F], F]:
    """Mark an aggregate method as the handler of ``event_types`` in ``apply``."""
    for event_type in event_types:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise UsageError(f"@applies takes Event subclasses, got {event_type!r}")

    def mark(fn: F) -> F:
        fn.__applies__ = (*getattr(fn, "__applies__", ()), *event_types)  # type: ignore[attr-defined]
        return fn

    return mark


class SnapshotState(Event, frozen=True):
    """Base class of the state an aggregate stores in a snapshot. Declared and
    evolved like an event: a type name, a ``schema_version``, upcasters
    registered with :meth:`Repository.snapshot_upcaster`, and optionally
    ``personal_data`` (so forgetting a subject shreds its snapshots too)."""


class Aggregate:
    """Base class of aggregates. Subclasses set ``category`` (the stream name
    is ``f"{category}-{id}"``), write command methods that ``record`` events,
    and handle each event type in a method marked ``@applies(EventType)``.

    ``version`` is the stream version of the last event applied or recorded
    (``NO_STREAM``, -1, for a new aggregate). To be snapshotted, a subclass
    sets ``snapshot_type`` and implements ``to_snapshot`` and ``restore``.
    """

    category: ClassVar[str] = ""
    snapshot_type: ClassVar[type[SnapshotState] | None] = None
    _handlers: ClassVar[dict[type[Event], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.category and ("-" in cls.category or not _core._STREAM_NAME.fullmatch(cls.category)):
            raise UsageError(
                f"{cls.__name__}.category {cls.category!r} must be a stream-name prefix "
                "without '-' or white space (the stream is category-id)",
                category=cls.category,
            )
        handlers: dict[type[Event], str] = {}
        for klass in reversed(cls.__mro__):  # subclasses override their bases
            for name, attr in vars(klass).items():
                for event_type in getattr(attr, "__applies__", ()):
                    handlers[event_type] = name
        cls._handlers = handlers

    def __init__(self, id: str) -> None:
        if not isinstance(id, str) or not id:
            raise UsageError(f"an aggregate id is a non-empty string, got {id!r}", id=id)
        self.id = id
        _core.check_stream_name(self.stream)
        self.version = NO_STREAM
        self._saved_version = NO_STREAM  # the expected version of the next save
        self._pending: list[tuple[str, Event]] = []  # (event id, event): retries stay idempotent
        self.snapshot_version: int | None = None  # the snapshot this was loaded from, if any
        self.replayed_events = 0  # events applied when it was loaded

    @property
    def stream(self) -> str:
        """The stream's name: ``{category}-{id}``, e.g. ``account-42``."""
        return f"{self.category}-{self.id}"

    @property
    def pending(self) -> tuple[Event, ...]:
        """Events recorded since the last load or save, not yet stored."""
        return tuple(event for _, event in self._pending)

    @classmethod
    def event_types(cls) -> tuple[type[Event], ...]:
        """The event classes this aggregate applies."""
        return tuple(cls._handlers)

    def apply(self, event: Event) -> None:
        """Change the state by ``event`` (through its ``@applies`` handler).
        Does not move ``version``: replay and ``record`` do."""
        name = self._handlers.get(type(event))
        if name is None:
            kind = type_name(type(event)) if isinstance(event, Event) else type(event).__name__
            raise UsageError(
                f"{type(self).__name__} does not handle {kind} events: add a method "
                f"marked @applies({kind})",
                aggregate=type(self).__name__,
                event_type=kind,
            )
        getattr(self, name)(event)

    def record(self, event: Event) -> None:
        """Apply a new event at once and keep it for the next save."""
        self.apply(event)  # first: a handler that raises leaves nothing recorded
        self._pending.append((new_event_id(), event))
        self.version += 1

    def to_snapshot(self) -> SnapshotState:
        """The state as a ``snapshot_type`` instance (override to snapshot)."""
        raise NotSupported(f"{type(self).__name__} does not implement to_snapshot")

    def restore(self, state: Any) -> None:
        """Set the state from a ``snapshot_type`` instance (override to snapshot)."""
        raise NotSupported(f"{type(self).__name__} does not implement restore")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stream} v{self.version}>"


class Repository(Generic[A]):
    """Loads and saves aggregates of one class in an :class:`EventStore`.

    With ``snapshot_every=N`` a save that carries the stream across a
    multiple of N events writes a snapshot of the saved state. That write is
    best effort: it happens after the append has committed and a failure
    there (the backend, a bug in ``to_snapshot``) never fails the save; it is
    logged to the ``unbundled.eventstore`` logger and counted in
    ``snapshot_failures``, and the next load simply replays more events.
    Existing snapshots are used on load whenever the class has a
    ``snapshot_type``.
    """

    def __init__(
        self,
        store: EventStore,
        aggregate: type[A],
        *,
        snapshot_every: int | None = None,
    ) -> None:
        if not (isinstance(aggregate, type) and issubclass(aggregate, Aggregate)):
            raise UsageError(f"{aggregate!r} is not an Aggregate subclass")
        if not aggregate.category:
            raise UsageError(f"{aggregate.__name__} must set a category")
        if snapshot_every is not None:
            check_int("snapshot_every", snapshot_every, 1, limits.snapshot_every_events_max)
            if aggregate.snapshot_type is None:
                raise UsageError(
                    f"{aggregate.__name__} has no snapshot_type: it cannot be snapshotted"
                )
        self.store = store
        self.aggregate = aggregate
        self.snapshot_every = snapshot_every
        self.snapshot_failures = 0
        # Events must decode to their classes even before this process wrote one.
        store.serializer.register(*aggregate.event_types())
        state = aggregate.snapshot_type
        self.snapshot_serializer = Serializer([state] if state is not None else [])

    def snapshot_upcaster(
        self, state_type: str, from_version: int
    ) -> Callable[[Upcaster], Upcaster]:
        """Register ``fn`` to turn a stored snapshot state of ``state_type`` at
        ``from_version`` into ``from_version + 1`` (a dict in, a dict out)."""
        return self.snapshot_serializer.upcaster(state_type, from_version)

    def create(self, id: str | None = None) -> A:
        """A new, unsaved aggregate (a random id if none is given). Its first
        save expects the stream not to exist."""
        return self.aggregate(id if id is not None else uuid.uuid4().hex)

    # --- loading ----------------------------------------------------------------

    def load(
        self,
        id: str,
        *,
        as_of_version: int | None = None,
        as_of_time: int | None = None,
    ) -> A:
        """The aggregate as of now, as of stream version ``as_of_version``, or
        as of ``as_of_time`` (ms since the epoch: the events recorded at or
        before it, in stream order). A version past the end gives the current
        state. ``StreamNotFound`` if the stream has no event (or none by then);
        ``StreamDeleted`` if it was deleted for good.

        Saving an aggregate loaded in the past raises ``WrongExpectedVersion``
        unless nothing was written after it: the past is read-only.
        """
        if as_of_version is not None and as_of_time is not None:
            raise UsageError("pass as_of_version or as_of_time, not both")
        check_optional_int("as_of_version", as_of_version, 0, limits.position_max)
        check_optional_int("as_of_time", as_of_time, 0, limits.timestamp_ms_max)
        aggregate = self.aggregate(id)
        snapshot_max = as_of_version
        for attempt in range(_SNAPSHOT_TRIES + 1):
            # After a few unusable snapshots replay from the start: in time
            # travel that reads no more than the events recorded by then.
            found = None
            if attempt < _SNAPSHOT_TRIES:
                found = self._find_snapshot(aggregate.stream, snapshot_max)
            base = found[0] if found is not None else 0
            events = self._events(aggregate.stream, base, as_of_version)
            if found is not None:
                # The snapshot's own event must still be readable (not soft-
                # deleted) and, in time travel, recorded by then.
                first = next(events, None)
                if (
                    first is None
                    or first.version != found[0]
                    or (as_of_time is not None and first.recorded_ms > as_of_time)
                ):
                    snapshot_max = found[0] - 1
                    continue
                aggregate.restore(found[1])
                aggregate.version = aggregate._saved_version = found[0]
                aggregate.snapshot_version = found[0]
            for stored in events:
                if as_of_time is not None and stored.recorded_ms > as_of_time:
                    break
                self._replay(aggregate, stored)
            break
        if aggregate.version == NO_STREAM:
            raise StreamNotFound(
                f"stream {aggregate.stream!r} has no events"
                + (f" recorded at or before {as_of_time}" if as_of_time is not None else ""),
                stream=aggregate.stream,
            )
        return aggregate

    def _events(self, stream: str, first: int, last: int | None) -> Iterator[StoredEvent]:
        """Events ``first..last`` (``None``: to the end), page by page."""
        while last is None or first <= last:
            limit = _PAGE if last is None else min(_PAGE, last - first + 1)
            page = self.store.read(stream, first, limit=limit)
            yield from page
            if len(page) < limit:
                return
            first = page[-1].version + 1

    def _replay(self, aggregate: A, stored: StoredEvent) -> None:
        if not isinstance(stored.event, Event):
            raise UsageError(
                f"{stored.stream} v{stored.version} is a {stored.type!r} event, which "
                f"{type(aggregate).__name__} does not handle",
                stream=stored.stream,
                event_type=stored.type,
            )
        aggregate.apply(stored.event)
        aggregate.version = aggregate._saved_version = stored.version
        aggregate.replayed_events += 1

    def _find_snapshot(self, stream: str, max_version: int | None) -> tuple[int, Any] | None:
        state_type = self.aggregate.snapshot_type
        if state_type is None or (max_version is not None and max_version < 0):
            return None
        snapshot = self.store.backend.load_snapshot(stream, max_version)
        if snapshot is None or snapshot.type != type_name(state_type):
            return None
        data = snapshot.data
        if b'"$personal"' in data:
            data = self.store.shredder.unseal(self.store.backend, snapshot.type, data)
        try:
            state = self.snapshot_serializer.decode(snapshot.type, snapshot.schema_version, data)
        except UsageError:
            return None  # no upcaster bridges its version: replay instead
        return snapshot.version, state

    # --- saving -----------------------------------------------------------------

    def save(self, aggregate: A, *, metadata: Metadata | None = None) -> AppendResult | None:
        """Append the aggregate's pending events, expecting the stream at the
        version it was loaded (or last saved) at. ``WrongExpectedVersion``
        (naming the stream) if someone else wrote since: nothing is written,
        the events stay pending; load again and retry the command. Retrying a
        save after an error of unknown outcome is safe: the events keep their
        ids, so a save that did commit is recognised and not written twice.
        Returns None if there was nothing to save."""
        if not isinstance(aggregate, self.aggregate):
            raise UsageError(f"this repository saves {self.aggregate.__name__}, not {aggregate!r}")
        if not aggregate._pending:
            return None
        before = aggregate._saved_version
        result = self.store.append(
            aggregate.stream,
            [event for _, event in aggregate._pending],
            expected_version=before,
            ids=[event_id for event_id, _ in aggregate._pending],
            metadata=metadata,
        )
        aggregate._pending.clear()
        # The store's count wins (a soft-deleted stream continues its versions).
        aggregate.version = aggregate._saved_version = result.last_version
        every = self.snapshot_every
        if every is not None and (before + 1) // every < (result.last_version + 1) // every:
            try:
                self.snapshot(aggregate)
            except Exception as exc:  # best effort: the events are committed
                self.snapshot_failures += 1
                _log.warning(
                    "snapshot of %s at v%d failed: %r", aggregate.stream, result.last_version, exc
                )
        return result

    def snapshot(self, aggregate: A) -> Snapshot:
        """Store a snapshot of ``aggregate``'s saved state now, and return it."""
        state_type = self.aggregate.snapshot_type
        if state_type is None:
            raise NotSupported(f"{self.aggregate.__name__} has no snapshot_type")
        if aggregate._pending or aggregate.version == NO_STREAM:
            raise UsageError(
                f"save {aggregate.stream} before snapshotting it: a snapshot "
                "holds only stored events"
            )
        state = aggregate.to_snapshot()
        if type(state) is not state_type:
            raise UsageError(
                f"{type(aggregate).__name__}.to_snapshot returned {type(state).__name__}, "
                f"not its snapshot_type {state_type.__name__}"
            )
        kind, schema_version, data = self.snapshot_serializer.encode(state)
        if state_type.personal_data:
            data = self.store.shredder.seal(self.store.backend, state, kind, data)
        clock: Callable[[], int] = getattr(self.store.backend, "clock", now_ms)
        snapshot = Snapshot(
            aggregate.stream, aggregate.version, kind, schema_version, data, clock()
        )
        self.store.backend.save_snapshot(snapshot)
        return snapshot
