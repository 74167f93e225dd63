"""The event-store part of the memory backend: the executable specification."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._ground import Waiter
from ...errors import (
    Closed,
    Error,
    NotSupported,
    ProjectionConflict,
    SubjectForgotten,
    UsageError,
)
from ...eventstore import _core
from ...eventstore._protocol import (
    NO_STREAM,
    AppendResult,
    ProjectionTxn,
    RecordedEvent,
    Snapshot,
    StreamState,
    StreamWrite,
    category_of,
)


@dataclass
class _Stream:
    state: StreamState
    events: list[RecordedEvent] = field(default_factory=list)  # index == version
    start: int = 0  # versions below were soft-deleted: no longer readable


class MemoryEvents:
    """Streams, ``$all`` and snapshots in lists and dicts, under the backend's lock."""

    clock: Callable[[], int]
    _bump: Callable[[], None]  # the log part's: one change counter for both
    _lock: threading.RLock
    _changed: threading.Condition
    _closed: bool
    _handler: int | None  # the thread running a projection handler, if any

    def _init_events(self) -> None:
        self._all: list[RecordedEvent] = []
        self._streams: dict[str, _Stream] = {}
        self._event_ids: dict[str, RecordedEvent] = {}
        self._snapshots: dict[str, list[Snapshot]] = {}
        self._subject_keys: dict[str, bytes | None] = {}  # None: forgotten
        self._events_token = 0

    def _check_events_open(self) -> None:
        if self._closed:
            raise Closed("the event store is closed")

    def submit_events(self, writes: Sequence[StreamWrite], done: Waiter) -> None:
        try:
            with self._lock:
                self._check_events_open()
                if self._handler == threading.get_ident():
                    # As on SQLite, where it would wait for itself forever.
                    raise UsageError(
                        "cannot append from inside a projection handler: "
                        "write through the handler's transaction"
                    )
                result: object = self._append(writes)
                self._events_token += 1
                self._bump()
        except Error as exc:
            result = exc
        done(result)

    def _append(self, writes: Sequence[StreamWrite]) -> list[AppendResult]:
        return self._write_events(writes, self._plan_events(writes))

    def _plan_events(self, writes: Sequence[StreamWrite]) -> _core.Plan:
        """Everything that can refuse ``writes``, before anything is changed."""
        for write in writes:
            _core.check_write(write)
        states = {w.stream: s.state for w in writes if (s := self._streams.get(w.stream))}
        existing = {
            e.id: found
            for w in writes
            for e in w.events
            if (found := self._event_ids.get(e.id)) is not None
        }
        return _core.plan_append(writes, states, existing)

    def _write_events(self, writes: Sequence[StreamWrite], plan: _core.Plan) -> list[AppendResult]:
        """Write planned ``writes`` (nothing here can fail)."""
        if plan.duplicate is not None:
            return plan.duplicate
        now = self.clock()
        results = []
        for write, first in zip(writes, plan.first_versions, strict=True):
            stream = self._streams.get(write.stream)
            if stream is None:
                stream = self._streams[write.stream] = _Stream(
                    StreamState(write.stream, NO_STREAM, False, False)
                )
            positions = []
            for i, event in enumerate(write.events):
                recorded = RecordedEvent(
                    event.id,
                    write.stream,
                    first + i,
                    len(self._all) + 1,
                    event.type,
                    event.schema_version,
                    event.data,
                    event.metadata,
                    now,
                )
                self._all.append(recorded)
                stream.events.append(recorded)
                self._event_ids[event.id] = recorded
                positions.append(recorded.position)
            last = first + len(write.events) - 1
            stream.state = StreamState(write.stream, last, False, False)
            results.append(AppendResult(write.stream, first, last, tuple(positions)))
        return results

    def read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool = False
    ) -> list[RecordedEvent]:
        with self._lock:
            self._check_events_open()
            found = self._streams.get(stream)
            _core.check_readable(stream, found.state if found else None)
            assert found is not None
            events = found.events
            if backwards:
                top = min(from_version, len(events) - 1)
                low = max(top - limit, found.start - 1)
                return [events[v] for v in range(top, low, -1)]
            first = max(from_version, found.start)
            return events[first : first + limit]

    def read_all(
        self,
        after_position: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        with self._lock:
            self._check_events_open()
            out: list[RecordedEvent] = []
            wanted_categories = set(categories) if categories is not None else None
            wanted_types = set(types) if types is not None else None
            for event in self._all[max(after_position, 0) :]:
                if wanted_categories is not None and category_of(event.stream) not in (
                    wanted_categories
                ):
                    continue
                if wanted_types is not None and event.type not in wanted_types:
                    continue
                out.append(event)
                if len(out) >= limit:
                    break
            return out

    def safe_position(self) -> int:
        with self._lock:
            return len(self._all)

    def stream_state(self, stream: str) -> StreamState:
        with self._lock:
            self._check_events_open()
            found = self._streams.get(stream)
            return found.state if found else StreamState(stream, NO_STREAM, False, False)

    def list_streams(self, after: str, limit: int, category: str | None = None) -> list[str]:
        with self._lock:
            self._check_events_open()
            names = sorted(
                name
                for name, s in self._streams.items()
                if not s.state.deleted
                and not s.state.tombstoned
                and (category is None or category_of(name) == category)
            )
            return names[bisect.bisect_right(names, after) :][:limit]

    def delete_stream(self, stream: str, expected_version: int, hard: bool) -> None:
        with self._lock:
            self._check_events_open()
            found = self._streams.get(stream)
            state = found.state if found else None
            version = _core.check_expected(stream, expected_version, state)
            if found is None:
                found = self._streams[stream] = _Stream(
                    StreamState(stream, NO_STREAM, False, False)
                )
            found.state = StreamState(stream, version, not hard, hard)
            # A soft-deleted stream restarts empty but keeps counting versions;
            # its events stay in $all.
            found.start = version + 1
            self._events_token += 1
            self._bump()

    def events_change_token(self) -> int:
        with self._lock:
            return self._events_token

    def wait_for_events(self, token: int, timeout_s: float) -> int:
        with self._lock:
            self._changed.wait_for(lambda: self._events_token != token or self._closed, timeout_s)
            return self._events_token

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._check_events_open()
            kept = self._snapshots.setdefault(snapshot.stream, [])
            kept[:] = [s for s in kept if s.version != snapshot.version] + [snapshot]
            kept.sort(key=lambda s: s.version)

    def load_snapshot(self, stream: str, max_version: int | None = None) -> Snapshot | None:
        with self._lock:
            self._check_events_open()
            for snapshot in reversed(self._snapshots.get(stream, [])):
                if max_version is None or snapshot.version <= max_version:
                    return snapshot
            return None

    def subject_key(self, subject: str, new_key: bytes) -> bytes:
        with self._lock:
            self._check_events_open()
            if subject not in self._subject_keys:
                self._subject_keys[subject] = new_key
            key = self._subject_keys[subject]
            if key is None:
                raise SubjectForgotten(f"subject {subject!r} was forgotten", subject=subject)
            return key

    def find_subject_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        with self._lock:
            return {s: self._subject_keys[s] for s in subjects if s in self._subject_keys}

    def forget_subject(self, subject: str) -> None:
        with self._lock:
            self._check_events_open()
            self._subject_keys[subject] = None


class _MemoryProjectionTxn:
    """Documents written by a projection batch, applied only if it succeeds."""

    def __init__(self, documents: dict[str, dict[str, bytes]]) -> None:
        self._documents = documents
        self.cleared: set[str] = set()  # collections emptied, before the writes
        self.writes: dict[tuple[str, str], bytes | None] = {}

    def get(self, collection: str, key: str) -> bytes | None:
        if (collection, key) in self.writes:
            return self.writes[(collection, key)]
        if collection in self.cleared:
            return None
        return self._documents.get(collection, {}).get(key)

    def put(self, collection: str, key: str, value: bytes) -> None:
        _core.check_document(collection, key, value)
        self.writes[(collection, key)] = value

    def delete(self, collection: str, key: str) -> None:
        self.writes[(collection, key)] = None

    def clear(self, collection: str) -> None:
        self.cleared.add(collection)
        for written in [w for w in self.writes if w[0] == collection]:
            del self.writes[written]

    @property
    def sql(self) -> Any:
        raise NotSupported("the memory backend has no SQL; use documents (get/put/delete)")

    def commit(self) -> None:
        for collection in self.cleared:
            self._documents.pop(collection, None)
        for (collection, key), value in self.writes.items():
            docs = self._documents.setdefault(collection, {})
            if value is None:
                docs.pop(key, None)
            else:
                docs[key] = value


class MemoryProjections:
    """Checkpoints and documents: the read-model side of the memory backend."""

    _lock: threading.RLock
    _bump: Callable[[], None]
    _check_events_open: Callable[[], None]
    _events_token: int

    def _init_projections(self) -> None:
        self._checkpoints: dict[str, int] = {}
        self._documents: dict[str, dict[str, bytes]] = {}
        self._handler: int | None = None

    def project(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        apply: Callable[[ProjectionTxn], None],
    ) -> None:
        with self._lock:
            self._check_events_open()
            current = self._checkpoints.get(name, 0)
            if current != expected_checkpoint:
                raise ProjectionConflict(
                    f"projection {name!r} is at {current}, not {expected_checkpoint}: "
                    "another runner moved it",
                    projection=name,
                    expected=expected_checkpoint,
                    actual=current,
                )
            self._apply_documents(apply, ())
            self._checkpoints[name] = new_checkpoint

    def _apply_documents(
        self, apply: Callable[[ProjectionTxn], None] | None, cleared: Sequence[str]
    ) -> None:
        """Empty ``cleared``, run ``apply`` and commit its writes; an
        exception from ``apply`` leaves nothing behind."""
        txn = _MemoryProjectionTxn(self._documents)
        for collection in cleared:
            txn.clear(collection)
        if apply is not None:
            self._handler = threading.get_ident()
            try:
                apply(txn)
            finally:
                self._handler = None
        txn.commit()

    def checkpoints(self) -> dict[str, int]:
        with self._lock:
            return dict(self._checkpoints)

    def reset_projection(
        self,
        name: str,
        collections: Sequence[str],
        apply: Callable[[ProjectionTxn], None] | None = None,
    ) -> None:
        with self._lock:
            self._check_events_open()
            self._apply_documents(apply, collections)
            self._checkpoints[name] = 0
            # Wake runners waiting for events: their projection starts over.
            self._events_token += 1
            self._bump()

    def get_document(self, collection: str, key: str) -> bytes | None:
        with self._lock:
            return self._documents.get(collection, {}).get(key)

    def list_documents(self, collection: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        with self._lock:
            docs = self._documents.get(collection, {})
            keys = sorted(k for k in docs if k > after)[:limit]
            return [(k, docs[k]) for k in keys]
