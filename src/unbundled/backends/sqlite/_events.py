"""The event-store part of the SQLite backend.

Appends share the log's group-commit writer: an :class:`EventStage` reads, in
one statement each per transaction, the state of every stream and every event
id the queued appends touch, decides each append with ``eventstore._core``
(the same code the memory model runs), and writes all of them with multi-row
INSERTs. SQLite has one writer at a time, so positions are assigned and
committed in order: the safe position is simply the last one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from itertools import chain
from typing import Any

from ..._ground import Waiter, crc32
from ...errors import (
    Closed,
    ProjectionConflict,
    SubjectForgotten,
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
from . import _events_read
from ._events_read import HEADER as _HEADER
from ._events_read import stream_row_crc, to_events
from ._log_stage import Stage
from ._writer import Request, Writer

_IN_MAX = 500  # ids or streams per "IN (...)" lookup
_ROWS_MAX = 256  # events per multi-row INSERT (11 columns each)
_STATES_MAX = 10_000  # stream states cached between transactions
_COLUMNS = (
    "position, id, stream, version, category, type, schema_version, data, metadata, "
    "recorded_ms, crc"
)
# What reads fetch: every column but category (derived from the stream). Each
# column fetched costs about as much as decoding an event's data.
_READ_COLUMNS = (
    "position, id, stream, version, type, schema_version, data, metadata, recorded_ms, crc"
)


def event_crc(
    position: int,
    version: int,
    event_id: str,
    stream: str,
    kind: str,
    data: bytes,
    metadata: bytes,
    schema_version: int,
    recorded_ms: int,
) -> int:
    """CRC-32 over an event's identity and content (see docs/reference/format.md)."""
    # One call over the concatenation: the same value as chaining the CRC over
    # each part in turn, at half the cost (this runs for every event read).
    return crc32(
        b"".join(
            (
                _HEADER.pack(schema_version, recorded_ms),
                event_id.encode(),
                stream.encode(),
                kind.encode(),
                metadata,
                data,
            )
        ),
        (position ^ version) & 0xFFFFFFFF,
    )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class EventStage:
    """Event appends of one writer transaction (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], int], path: str) -> None:
        self.conn = conn
        self.clock = clock
        self.path = path
        self.position: int | None = None  # last position assigned
        self.states: dict[str, StreamState] = {}
        self.listed: set[str] = set()  # streams with a live row in `streams`
        self.starts: dict[str, int] = {}  # first readable version of soft-deleted streams
        self.known: dict[str, RecordedEvent] = {}  # stored or staged events by id
        self.rows: list[tuple[Any, ...]] = []
        self.touched: set[str] = set()  # streams whose row must be written

    def begin(self, changed: bool) -> None:
        # Stream states are trusted across transactions only while no other
        # process wrote; ids are looked up afresh for each transaction.
        if changed or len(self.states) > _STATES_MAX:
            self.invalidate()
        self.known.clear()

    def invalidate(self) -> None:
        self.position = None
        self.states.clear()
        self.listed.clear()
        self.starts.clear()
        self.known.clear()
        self.rows.clear()
        self.touched.clear()

    def prepare(self, requests: list[Request]) -> None:
        writes = [w for r in requests if r.extra is not None for w in r.extra]  # type: ignore[attr-defined]
        self.prepare_writes(writes)

    def prepare_writes(self, writes: Sequence[StreamWrite]) -> None:
        """Read the state of every stream and event id ``writes`` touch."""
        if not writes:
            return
        streams = sorted({w.stream for w in writes} - self.states.keys())
        for chunk in _chunks(streams, _IN_MAX):
            # A stream's version is its last event's, found by one index seek
            # per stream: appends never rewrite a row of `streams` (a random
            # page per stream per commit), only create it or undelete it.
            for stream, version, deleted, tombstoned, start in self.conn.execute(
                "SELECT v.column1, (SELECT max(version) FROM events WHERE stream = v.column1), "
                "s.deleted, s.tombstoned, s.start_version FROM (VALUES "
                + ",".join(["(?)"] * len(chunk))
                + ") AS v LEFT JOIN streams AS s ON s.stream = v.column1",
                chunk,
            ):
                if version is None and deleted is None:
                    continue  # never existed
                self.states[stream] = StreamState(
                    stream,
                    NO_STREAM if version is None else version,
                    bool(deleted),
                    bool(tombstoned),
                )
                if deleted == 0 and tombstoned == 0:
                    self.listed.add(stream)
                elif start:
                    self.starts[stream] = start  # kept when an append undeletes it
        ids = [e.id for w in writes for e in w.events]
        for chunk in _chunks(ids, _IN_MAX):
            rows = self.conn.execute(
                f"SELECT {_READ_COLUMNS} FROM events WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for event in to_events(self.path, rows):
                self.known[event.id] = event
        if self.position is None:
            # The next position follows the last one committed; if the last
            # events were lost to damage, appending would reuse their positions.
            self.position = _events_read.last_position(self.conn, self.path)

    def stage(self, work: object) -> list[AppendResult]:
        writes: Sequence[StreamWrite] = work  # type: ignore[assignment]
        return self.queue(writes, self.plan(writes))

    def plan(self, writes: Sequence[StreamWrite]) -> _core.Plan:
        """Decide ``writes`` (raising a conflict) without queuing anything."""
        for write in writes:
            _core.check_write(write)
        existing = {
            e.id: found
            for w in writes
            for e in w.events
            if (found := self.known.get(e.id)) is not None
        }
        return _core.plan_append(writes, self.states, existing)

    def queue(self, writes: Sequence[StreamWrite], plan: _core.Plan) -> list[AppendResult]:
        """Queue the rows of planned ``writes`` (nothing here can fail)."""
        if plan.duplicate is not None:
            return plan.duplicate
        assert self.position is not None
        now = self.clock()
        results = []
        for write, first in zip(writes, plan.first_versions, strict=True):
            category = category_of(write.stream)
            positions = []
            for i, e in enumerate(write.events):
                self.position += 1
                version = first + i
                crc = event_crc(
                    self.position,
                    version,
                    e.id,
                    write.stream,
                    e.type,
                    e.data,
                    e.metadata,
                    e.schema_version,
                    now,
                )
                self.rows.append(
                    (
                        self.position,
                        e.id,
                        write.stream,
                        version,
                        category,
                        e.type,
                        e.schema_version,
                        e.data,
                        e.metadata,
                        now,
                        crc,
                    )
                )
                self.known[e.id] = RecordedEvent(
                    e.id,
                    write.stream,
                    version,
                    self.position,
                    e.type,
                    e.schema_version,
                    e.data,
                    e.metadata,
                    now,
                )
                positions.append(self.position)
            last = first + len(write.events) - 1
            self.states[write.stream] = StreamState(write.stream, last, False, False)
            if write.stream not in self.listed:
                self.touched.add(write.stream)  # new, or soft-deleted until now
                self.listed.add(write.stream)
            results.append(AppendResult(write.stream, first, last, tuple(positions)))
        return results

    def flush(self) -> None:
        # SQLite before 3.32 allows only 999 variables per statement by default.
        variables = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        for chunk in _chunks(self.rows, min(_ROWS_MAX, variables // 11)):
            self.conn.execute(
                f"INSERT INTO events({_COLUMNS}) VALUES "
                + ",".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk)),
                list(chain.from_iterable(chunk)),
            )
        if self.rows:
            # What a read of $all must reach: a damaged page cannot drop the
            # last events unnoticed (see _events_read).
            self.conn.execute(
                "UPDATE heads SET position = ? WHERE name = 'events'", (self.position,)
            )
        self.rows.clear()
        touched = sorted(self.touched)
        for chunk in _chunks(touched, min(_IN_MAX, variables // 4)):
            values = []
            for stream in chunk:
                start = self.starts.pop(stream, 0)
                crc = stream_row_crc(stream, start, False, False)
                values.append((stream, category_of(stream), start, crc))
            self.conn.execute(
                "INSERT INTO streams(stream, category, start_version, deleted, tombstoned, crc) "
                "VALUES "
                + ",".join(["(?,?,?,0,0,?)"] * len(values))
                + " ON CONFLICT(stream) DO UPDATE SET deleted = 0, crc = excluded.crc",
                list(chain.from_iterable(values)),
            )
        self.touched.clear()


class SqliteEvents:
    """The event-store methods of :class:`unbundled.backends.SqliteBackend`."""

    path: str
    clock: Callable[[], int]
    _writer: Writer
    _closed: bool
    _reading: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _call: Callable[[Callable[[sqlite3.Connection, Stage], Any]], Any]
    change_token: Callable[[], int]
    wait_for_change: Callable[[int, float], int]

    def submit_events(self, writes: Sequence[StreamWrite], done: Waiter) -> None:
        if self._closed:
            raise Closed(f"the event store at {self.path} is closed")
        self._writer.submit(Request(None, None, done, list(writes)))

    def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            return conn.execute(sql, params).fetchall()

    def _state(self, conn: sqlite3.Connection, stream: str) -> tuple[StreamState | None, int]:
        """The stream's state and its first readable version (after soft deletes)."""
        return _events_read.stream_state(conn, self.path, stream)

    def read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool = False
    ) -> list[RecordedEvent]:
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                state, start = self._state(conn, stream)
                _core.check_readable(stream, state)
                assert state is not None
                if backwards:
                    top = min(from_version, state.version)
                    versions = range(top, max(start, top - limit + 1) - 1, -1)
                    rows = conn.execute(
                        f"SELECT {_READ_COLUMNS} FROM events WHERE stream = ? AND version <= ? "
                        "AND version >= ? ORDER BY version DESC LIMIT ?",
                        (stream, from_version, start, limit),
                    ).fetchall()
                else:
                    first = max(from_version, start)
                    versions = range(first, min(state.version, first + limit - 1) + 1)
                    rows = conn.execute(
                        f"SELECT {_READ_COLUMNS} FROM events WHERE stream = ? AND version >= ? "
                        "ORDER BY version LIMIT ?",
                        (stream, first, limit),
                    ).fetchall()
            finally:
                conn.execute("COMMIT")
        events = to_events(self.path, rows)
        # Versions never have gaps and events are never removed: the read
        # must return exactly these, whatever the pages hold.
        _events_read.check_stream_read(self.path, stream, events, versions)
        return events

    def read_all(
        self,
        after_position: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        where = ["position > ?"]
        params: list[Any] = [after_position]
        if categories is not None:
            where.append(f"category IN ({','.join('?' * len(categories))})")
            params.extend(categories)
        if types is not None:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                head = _events_read.events_head(conn, self.path)
                rows = conn.execute(
                    f"SELECT {_READ_COLUMNS} FROM events WHERE {' AND '.join(where)} "
                    "ORDER BY position LIMIT ?",
                    [*params, limit],
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        events = to_events(self.path, rows)
        dense = categories is None and types is None
        _events_read.check_all_read(self.path, events, after_position, limit, head, dense)
        if not dense:
            _events_read.check_filters(self.path, events, categories, types)
        return events

    def safe_position(self) -> int:
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                return _events_read.last_position(conn, self.path)
            finally:
                conn.execute("COMMIT")

    def stream_state(self, stream: str) -> StreamState:
        with self._reading() as conn:
            state, _ = self._state(conn, stream)
        return state if state is not None else StreamState(stream, NO_STREAM, False, False)

    def list_streams(self, after: str, limit: int, category: str | None = None) -> list[str]:
        # Deleted streams are skipped in live_stream, after each row's check.
        # No lower bound on the first page: a row whose name a damaged page
        # made NULL (or not text) sorts first, and must be seen to be caught.
        columns = "stream, category, start_version, deleted, tombstoned, crc"
        out: list[str] = []
        while len(out) < limit:
            if category is not None:
                where, params = "WHERE category = ? AND stream > ?", [category, after]
            else:
                where, params = ("WHERE stream > ?", [after]) if after else ("", [])
            rows = self._read(
                f"SELECT {columns} FROM streams {where} ORDER BY stream LIMIT ?", [*params, limit]
            )
            out.extend(row[0] for row in rows if _events_read.live_stream(self.path, row, category))
            if len(rows) < limit:
                break
            after = rows[-1][0]
        return out[:limit]

    def delete_stream(self, stream: str, expected_version: int, hard: bool) -> None:
        def delete(conn: sqlite3.Connection, stage: Stage) -> None:
            state, _ = self._state(conn, stream)
            version = _core.check_expected(stream, expected_version, state)
            start = version + 1
            conn.execute(
                "INSERT INTO streams VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(stream) DO UPDATE SET "
                "start_version = excluded.start_version, deleted = excluded.deleted, "
                "tombstoned = excluded.tombstoned, crc = excluded.crc",
                (
                    stream,
                    category_of(stream),
                    start,
                    int(not hard),
                    int(hard),
                    stream_row_crc(stream, start, not hard, hard),
                ),
            )

        self._call(delete)

    def events_change_token(self) -> int:
        return self.change_token()

    def wait_for_events(self, token: int, timeout_s: float) -> int:
        return self.wait_for_change(token, timeout_s)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        def save(conn: sqlite3.Connection, stage: Stage) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?)",
                tuple(snapshot),
            )

        self._call(save)

    def load_snapshot(self, stream: str, max_version: int | None = None) -> Snapshot | None:
        rows = self._read(
            "SELECT stream, version, type, schema_version, data, recorded_ms FROM snapshots "
            "WHERE stream = ? AND version <= ? ORDER BY version DESC LIMIT 1",
            (stream, max_version if max_version is not None else 2**62),
        )
        return Snapshot(*rows[0]) if rows else None

    def subject_key(self, subject: str, new_key: bytes) -> bytes:
        def get_or_create(conn: sqlite3.Connection, stage: Stage) -> bytes:
            conn.execute(
                "INSERT INTO subject_keys VALUES (?, ?) ON CONFLICT(subject) DO NOTHING",
                (subject, new_key),
            )
            key = conn.execute(
                "SELECT key FROM subject_keys WHERE subject = ?", (subject,)
            ).fetchone()[0]
            if key is None:
                raise SubjectForgotten(f"subject {subject!r} was forgotten", subject=subject)
            return bytes(key)

        found = self.find_subject_keys([subject])
        if found.get(subject) is not None:
            return found[subject]  # type: ignore[return-value]
        result: bytes = self._call(get_or_create)
        return result

    def find_subject_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for chunk in _chunks(list(subjects), _IN_MAX):
            for subject, key in self._read(
                f"SELECT subject, key FROM subject_keys WHERE subject IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ):
                out[subject] = bytes(key) if key is not None else None
        return out

    def forget_subject(self, subject: str) -> None:
        def forget(conn: sqlite3.Connection, stage: Stage) -> None:
            conn.execute("INSERT OR REPLACE INTO subject_keys VALUES (?, NULL)", (subject,))

        self._call(forget)


class _SqliteProjectionTxn:
    """Documents and SQL on the writer's connection, inside the projection's SAVEPOINT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, collection: str, key: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM documents WHERE collection = ? AND key = ?", (collection, key)
        ).fetchone()
        return bytes(row[0]) if row is not None else None

    def put(self, collection: str, key: str, value: bytes) -> None:
        _core.check_document(collection, key, value)
        self._conn.execute(
            "INSERT OR REPLACE INTO documents VALUES (?, ?, ?)", (collection, key, value)
        )

    def delete(self, collection: str, key: str) -> None:
        self._conn.execute(
            "DELETE FROM documents WHERE collection = ? AND key = ?", (collection, key)
        )

    def clear(self, collection: str) -> None:
        self._conn.execute("DELETE FROM documents WHERE collection = ?", (collection,))

    @property
    def sql(self) -> sqlite3.Connection:
        return self._conn


class SqliteProjections:
    """Checkpoints and documents of :class:`unbundled.backends.SqliteBackend`.

    A projection batch runs on the writer thread inside a SAVEPOINT of a
    group-committed transaction: keep handlers short, they hold the write lock.
    """

    path: str
    _call: Callable[[Callable[[sqlite3.Connection, Stage], Any]], Any]
    _read: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

    def project(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        apply: Callable[[ProjectionTxn], None],
    ) -> None:
        def run(conn: sqlite3.Connection, stage: Stage) -> None:
            row = conn.execute(
                "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
            ).fetchone()
            current = row[0] if row is not None else 0
            if current != expected_checkpoint:
                raise ProjectionConflict(
                    f"projection {name!r} is at {current}, not {expected_checkpoint}: "
                    "another runner moved it",
                    projection=name,
                    expected=expected_checkpoint,
                    actual=current,
                )
            apply(_SqliteProjectionTxn(conn))
            conn.execute(
                "INSERT OR REPLACE INTO projection_checkpoints VALUES (?, ?)",
                (name, new_checkpoint),
            )

        self._call(run)

    def checkpoints(self) -> dict[str, int]:
        return dict(self._read("SELECT name, position FROM projection_checkpoints", ()))

    def reset_projection(
        self,
        name: str,
        collections: Sequence[str],
        apply: Callable[[ProjectionTxn], None] | None = None,
    ) -> None:
        # One writer transaction (waiting runners see its commit as a change).
        def reset(conn: sqlite3.Connection, stage: Stage) -> None:
            txn = _SqliteProjectionTxn(conn)
            for collection in collections:
                txn.clear(collection)
            if apply is not None:
                apply(txn)
            conn.execute("INSERT OR REPLACE INTO projection_checkpoints VALUES (?, 0)", (name,))

        self._call(reset)

    def get_document(self, collection: str, key: str) -> bytes | None:
        rows = self._read(
            "SELECT value FROM documents WHERE collection = ? AND key = ?", (collection, key)
        )
        return bytes(rows[0][0]) if rows else None

    def list_documents(self, collection: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        rows = self._read(
            "SELECT key, value FROM documents WHERE collection = ? AND key > ? "
            "ORDER BY key LIMIT ?",
            (collection, after, limit),
        )
        return [(k, bytes(v)) for k, v in rows]
