"""The event store's records and the backend protocol every backend implements.

Versions count from 0 within a stream (the first event is version 0), and the
global position counts from 1 across all streams (0 means "before the
first event"), as in KurrentDB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import msgspec

from .._ground import Waiter

# Expected-version sentinels (an int >= 0 means "exactly this version").
#: Expected version: append whatever version the stream is at (no check).
ANY = -2
#: Expected version: the stream must not exist (the first append creates it).
#: Also the version of a stream without events.
NO_STREAM = -1
#: Expected version: the stream must exist, at any version.
STREAM_EXISTS = -4


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append, already serialized. ``id`` makes the append idempotent."""

    id: str
    type: str
    data: bytes
    metadata: bytes = b"{}"
    schema_version: int = 1


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """A stored event: where it is (stream, version, global position) and what."""

    id: str
    stream: str
    version: int
    position: int
    type: str
    schema_version: int
    data: bytes
    metadata: bytes
    recorded_ms: int

    @property
    def category(self) -> str:
        """The stream's category: ``account`` for ``account-42`` (see :func:`category_of`)."""
        return category_of(self.stream)


class StreamWrite(NamedTuple):
    """Events for one stream, with the version the writer expects it to be at."""

    stream: str
    expected_version: int
    events: Sequence[NewEvent]


class AppendResult(NamedTuple):
    """Where one stream's events landed: versions ``first..last``, positions in order."""

    stream: str
    first_version: int
    last_version: int
    positions: tuple[int, ...]


class StreamState(NamedTuple):
    """``version`` is the last event's version (``NO_STREAM`` if none)."""

    stream: str
    version: int
    deleted: bool  # soft-deleted: reads stop, an append starts it again
    tombstoned: bool  # hard-deleted: never again


class Snapshot(NamedTuple):
    """An aggregate's state at one version of its stream, as stored: the
    state's type, schema version and JSON, and when it was taken (ms)."""

    stream: str
    version: int  # the stream version the snapshot's state includes
    type: str
    schema_version: int
    data: bytes
    recorded_ms: int


def category_of(stream: str) -> str:
    """``account-42`` is in category ``account``: the part before the first dash."""
    head, dash, _ = stream.partition("-")
    return head if dash else stream


class ProjectionTxn(Protocol):
    """What a projection's handler may do inside its transaction: read and
    write documents (a read model any backend can hold), or, on SQL backends,
    run SQL on the transaction's own connection."""

    def get(self, collection: str, key: str) -> bytes | None:
        """The document, as committed or as written earlier in this transaction."""

    def put(self, collection: str, key: str, value: bytes) -> None:
        """Insert or replace a document."""

    def delete(self, collection: str, key: str) -> None:
        """Remove a document (no error if absent)."""

    def clear(self, collection: str) -> None:
        """Remove every document of ``collection`` (a rebuild's reset)."""

    @property
    def sql(self) -> Any:
        """The DB-API connection inside the transaction (``sqlite3``, psycopg).
        ``NotSupported`` on the memory backend."""


@runtime_checkable
class EventStorage(Protocol):
    """The event store's first capability: streams, ``$all`` and appends.
    Thread-safe; appends are group-committed."""

    url: str

    def submit_events(self, writes: Sequence[StreamWrite], done: Waiter) -> None:
        """Queue an atomic append to one or more streams.

        ``done`` gets a list of :class:`AppendResult` (one per write, in order)
        or a typed error, after the append is durable. All or nothing: a
        failed expected version (``WrongExpectedVersion``), a deleted stream,
        or a reused event id with different content (``DuplicateEventId``)
        writes nothing. Idempotent: if every event id of the call already
        exists with the same stream, type, data and metadata, nothing is
        written and the original results are returned.
        """

    def read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool = False
    ) -> list[RecordedEvent]:
        """Events of one stream from ``from_version`` (inclusive), at most ``limit``.
        Raises ``StreamNotFound`` for a stream that never existed or was
        soft-deleted, ``StreamDeleted`` for a hard-deleted one."""

    def read_all(
        self,
        after_position: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        """Events with ``position > after_position`` and at most the safe
        position, in position order, optionally only of some categories or
        types. Never skips: an event not returned now never appears later
        below a position that was returned."""

    def safe_position(self) -> int:
        """The highest position below which every event is committed and visible."""

    def stream_state(self, stream: str) -> StreamState:
        """Version and deletion state; ``NO_STREAM`` version if it never existed."""

    def list_streams(self, after: str, limit: int, category: str | None = None) -> list[str]:
        """Stream names greater than ``after``, sorted, at most ``limit``."""

    def delete_stream(self, stream: str, expected_version: int, hard: bool) -> None:
        """Soft delete (reads stop; a later append continues the versions) or
        hard delete (a tombstone: reads and appends raise ``StreamDeleted``).
        The events stay in ``$all`` either way."""

    def events_change_token(self) -> int:
        """A counter that moves when events are committed (any process)."""

    def wait_for_events(self, token: int, timeout_s: float) -> int:
        """Block until the token moves or ``timeout_s`` passes; return it."""


@runtime_checkable
class SnapshotStorage(Protocol):
    """Aggregates' snapshots, beside their streams."""

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot of ``snapshot.stream`` at ``snapshot.version``
        (replacing one at that same version; older ones are kept for time travel)."""

    def load_snapshot(self, stream: str, max_version: int | None = None) -> Snapshot | None:
        """The latest snapshot at or below ``max_version`` (None: any)."""


@runtime_checkable
class ProjectionStorage(Protocol):
    """Projections: checkpoints committed with their read models' documents."""

    def project(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        apply: Callable[[ProjectionTxn], None],
    ) -> None:
        """Run ``apply`` and move projection ``name``'s checkpoint from
        ``expected_checkpoint`` to ``new_checkpoint`` in one transaction: the
        read model and the checkpoint commit together or not at all. Raises
        ``ProjectionConflict`` (nothing applied) if the checkpoint is not at
        ``expected_checkpoint``: another runner moved it."""

    def checkpoints(self) -> dict[str, int]:
        """Every projection's checkpoint (the last position it has applied)."""

    def reset_projection(
        self,
        name: str,
        collections: Sequence[str],
        apply: Callable[[ProjectionTxn], None] | None = None,
    ) -> None:
        """Delete the documents of ``collections``, run ``apply`` (if given)
        and set ``name``'s checkpoint to 0, whatever it was, in one
        transaction: a rebuild starts from here. An exception from ``apply``
        leaves everything as it was and is raised as it is. Moves the events
        change token, so runners waiting for events look at the checkpoint again."""

    def get_document(self, collection: str, key: str) -> bytes | None:
        """A committed document, or None."""

    def list_documents(self, collection: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        """``(key, value)`` with keys greater than ``after``, sorted, at most ``limit``."""


@runtime_checkable
class SubjectKeys(Protocol):
    """Crypto-shredding: a key per data subject, forgotten for good."""

    def subject_key(self, subject: str, new_key: bytes) -> bytes:
        """The encryption key of ``subject`` (crypto-shredding), creating it
        as ``new_key`` if it has none. Raises ``SubjectForgotten`` if the
        subject was forgotten: its key is gone for good."""

    def find_subject_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        """Keys of existing subjects; ``None`` for forgotten ones; absent for unknown."""

    def forget_subject(self, subject: str) -> None:
        """Delete the subject's key for good (data encrypted with it becomes
        unreadable) and remember that it was forgotten. Idempotent."""


@runtime_checkable
class EventStoreBackend(EventStorage, SnapshotStorage, ProjectionStorage, SubjectKeys, Protocol):
    """Everything the event store needs: streams, snapshots, projections, subject keys."""
