"""The event store's reads and its writes other than appends, on PostgreSQL.

Appends go through the group-commit :class:`~._writer.Writer`. Everything
else runs on a pooled connection: a read is one statement (one snapshot, so
it sees a consistent state), a write is one short transaction that locks
the row it checks (a stream, a checkpoint) like the writer does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..._ground import Waiter
from ...errors import Closed, SubjectForgotten, UsageError
from ...eventstore import _core
from ...eventstore._protocol import (
    NO_STREAM,
    RecordedEvent,
    Snapshot,
    StreamState,
    StreamWrite,
)
from ._notify import Notifier
from ._schema import Conn, Pool, translated
from ._stage import EVENT_COLUMNS
from ._writer import Writer

_ALL_MAX = 2**62  # "no upper bound" for versions


def _event(row: tuple[Any, ...]) -> RecordedEvent:
    return RecordedEvent(*row)


class PostgresEvents:
    """The event-store methods of :class:`unbundled.backends.PostgresBackend`."""

    url: str
    schema: str
    channel: str
    _where: str
    _closed: bool
    _pool: Pool
    _writer: Writer
    _notifier: Notifier
    _handling: threading.local  # .name: the projection whose handler this thread runs

    def _run(self, fn: Callable[[Conn], Any]) -> Any:
        """``fn(conn)`` on a pooled connection, psycopg errors translated."""
        if self._closed:
            raise Closed(f"the event store at {self._where} is closed")
        with translated(self._where), self._pool.connection() as conn:
            return fn(conn)

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[tuple[Any, ...]]:
        def read(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.cursor(binary=True).execute(sql, params).fetchall()

        result: list[tuple[Any, ...]] = self._run(read)
        return result

    # --- appends and reads ----------------------------------------------------

    def submit_events(self, writes: Sequence[StreamWrite], done: Waiter) -> None:
        if self._closed:
            raise Closed(f"the event store at {self._where} is closed")
        if getattr(self._handling, "name", None) is not None:
            # It would commit on its own, not with the projection's batch:
            # a retried batch would append it twice.
            done(
                UsageError(
                    "cannot append from inside a projection handler "
                    f"({self._handling.name!r}): write through the handler's transaction"
                )
            )
            return
        self._writer.submit(writes, done)

    def read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool = False
    ) -> list[RecordedEvent]:
        s = f'"{self.schema}"'
        if backwards:
            where, order = "e.version <= %(v)s AND e.version >= t.start_version", "DESC"
        else:
            where, order = "e.version >= greatest(%(v)s, t.start_version)", ""
        columns = ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        # One statement, so the stream's state and its events are one snapshot.
        rows = self._rows(
            f"SELECT t.version, t.deleted, t.tombstoned, x.* FROM {s}.streams AS t "
            f"LEFT JOIN LATERAL (SELECT {columns} FROM {s}.events AS e "
            f"WHERE e.stream = t.stream AND {where} ORDER BY e.version {order} "
            "LIMIT %(limit)s) AS x ON true "
            f"WHERE t.stream = %(stream)s ORDER BY x.version {order}",
            {"stream": stream, "v": min(from_version, _ALL_MAX), "limit": limit},
        )
        state = StreamState(stream, rows[0][0], rows[0][1], rows[0][2]) if rows else None
        _core.check_readable(stream, state)
        return [_event(row[3:]) for row in rows if row[3] is not None]

    def read_all(
        self,
        after_position: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        # One statement sees one snapshot, and transactions that write events
        # commit in position order (the counter lock): what it sees is a
        # prefix of the positions, so nothing below the last one returned
        # can appear later.
        where = ["position > %(after)s"]
        params: dict[str, Any] = {"after": after_position, "limit": limit}
        if categories is not None:
            where.append("category = ANY(%(categories)s::text[])")
            params["categories"] = list(categories)
        if types is not None:
            where.append("type = ANY(%(types)s::text[])")
            params["types"] = list(types)
        rows = self._rows(
            f'SELECT {EVENT_COLUMNS} FROM "{self.schema}".events WHERE {" AND ".join(where)} '
            "ORDER BY position LIMIT %(limit)s",
            params,
        )
        return [_event(row) for row in rows]

    def safe_position(self) -> int:
        rows = self._rows(f'SELECT last FROM "{self.schema}".positions WHERE id = 1', ())
        return int(rows[0][0])

    def stream_state(self, stream: str) -> StreamState:
        rows = self._rows(
            f'SELECT version, deleted, tombstoned FROM "{self.schema}".streams WHERE stream = %s',
            (stream,),
        )
        if not rows:
            return StreamState(stream, NO_STREAM, False, False)
        return StreamState(stream, *rows[0])

    def list_streams(self, after: str, limit: int, category: str | None = None) -> list[str]:
        sql = (
            f'SELECT stream FROM "{self.schema}".streams WHERE stream > %(after)s '
            "AND version >= 0 AND NOT deleted AND NOT tombstoned"
        )
        if category is not None:
            # split_part(s, '-', 1) is category_of(s): the part before the first dash.
            sql += " AND split_part(stream, '-', 1) = %(category)s"
        rows = self._rows(
            sql + " ORDER BY stream LIMIT %(limit)s",
            {"after": after, "limit": limit, "category": category},
        )
        return [r[0] for r in rows]

    def delete_stream(self, stream: str, expected_version: int, hard: bool) -> None:
        s = f'"{self.schema}"'

        def delete(conn: Conn) -> None:
            with conn.transaction():
                conn.execute(
                    f"INSERT INTO {s}.streams VALUES (%s, -1, 0, false, false) "
                    "ON CONFLICT DO NOTHING",
                    (stream,),
                )
                row = conn.execute(
                    f"SELECT version, deleted, tombstoned FROM {s}.streams "
                    "WHERE stream = %s FOR UPDATE",
                    (stream,),
                ).fetchone()
                assert row is not None
                state = StreamState(stream, *row)
                version = _core.check_expected(stream, expected_version, state)
                conn.execute(
                    f"UPDATE {s}.streams SET version = %s, start_version = %s, deleted = %s, "
                    "tombstoned = %s WHERE stream = %s",
                    (version, version + 1, not hard, hard, stream),
                )
                conn.execute("SELECT pg_notify(%s, 'delete')", (self.channel,))

        self._run(delete)
        self._notifier.bump()

    def events_change_token(self) -> int:
        return self._notifier.token()

    def wait_for_events(self, token: int, timeout_s: float) -> int:
        return self._notifier.wait(token, timeout_s)

    # --- snapshots and subject keys ----------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> None:
        def save(conn: Conn) -> None:
            conn.execute(
                f'INSERT INTO "{self.schema}".snapshots VALUES (%s, %s, %s, %s, %s, %s) '
                "ON CONFLICT (stream, version) DO UPDATE SET type = excluded.type, "
                "schema_version = excluded.schema_version, data = excluded.data, "
                "recorded_ms = excluded.recorded_ms",
                tuple(snapshot),
            )

        self._run(save)

    def load_snapshot(self, stream: str, max_version: int | None = None) -> Snapshot | None:
        rows = self._rows(
            "SELECT stream, version, type, schema_version, data, recorded_ms "
            f'FROM "{self.schema}".snapshots WHERE stream = %s AND version <= %s '
            "ORDER BY version DESC LIMIT 1",
            (stream, min(max_version, _ALL_MAX) if max_version is not None else _ALL_MAX),
        )
        return Snapshot(*rows[0]) if rows else None

    def subject_key(self, subject: str, new_key: bytes) -> bytes:
        s = f'"{self.schema}"'

        def get_or_create(conn: Conn) -> Any:
            # Two statements, each its own snapshot: the SELECT sees the key
            # another process created while our INSERT waited for it.
            conn.execute(
                f"INSERT INTO {s}.subject_keys VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (subject, new_key),
            )
            return conn.execute(
                f"SELECT key FROM {s}.subject_keys WHERE subject = %s", (subject,)
            ).fetchone()

        found = self.find_subject_keys([subject])
        if subject in found:
            key = found[subject]
        else:
            row = self._run(get_or_create)
            key = bytes(row[0]) if row[0] is not None else None
        if key is None:
            raise SubjectForgotten(f"subject {subject!r} was forgotten", subject=subject)
        return key

    def find_subject_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        rows = self._rows(
            f'SELECT subject, key FROM "{self.schema}".subject_keys '
            "WHERE subject = ANY(%s::text[])",
            (list(subjects),),
        )
        return {s: bytes(k) if k is not None else None for s, k in rows}

    def forget_subject(self, subject: str) -> None:
        def forget(conn: Conn) -> None:
            conn.execute(
                f'INSERT INTO "{self.schema}".subject_keys VALUES (%s, NULL) '
                "ON CONFLICT (subject) DO UPDATE SET key = NULL",
                (subject,),
            )

        self._run(forget)
