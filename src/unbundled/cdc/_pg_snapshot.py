"""Reading the tables in the snapshot a new slot exported (the initial snapshot).

One REPEATABLE READ transaction adopts the exported snapshot (``SET TRANSACTION
SNAPSHOT``), so the rows are exactly the state at the slot's consistent point. Each table
is read in primary-key order through a server-side cursor, ``limit`` rows at a time, with
every column cast to text and decoded the way the stream decodes pgoutput's text values,
so a row looks the same whether it came from the snapshot or from the stream.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from ._change import Change, SourcePosition
from ._pgtypes import convert

_COLUMNS = """
SELECT a.attname, a.atttypid, coalesce(a.attnum = ANY(i.indkey), false)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


class SnapshotReader:
    """The rows of ``tables`` as of an exported snapshot, as op "r" changes."""

    def __init__(
        self,
        url: str,
        snapshot_name: str,
        tables: list[tuple[str, str]],
        *,
        position: int,
        db: str,
        truncate_first: bool = False,
    ) -> None:
        self.url = url
        self.snapshot_name = snapshot_name
        self.tables = tables
        self.position = position
        self.db = db
        # A snapshot that replaces one a crash cut short clears each table first: rows
        # the first one stored may have been deleted before this one began.
        self.truncate_first = truncate_first
        self.done = False
        self._conn: Any = None
        self._rows: Iterator[Change] | None = None
        self._ahead: Change | None = None
        self._index = 0
        self._ts_ms = int(time.time() * 1000)

    def start(self) -> None:
        import psycopg

        from ._pg_admin import SESSION_OPTIONS

        self._conn = psycopg.connect(self.url, autocommit=False, options=SESSION_OPTIONS)
        self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        self._conn.execute(f"SET TRANSACTION SNAPSHOT '{self.snapshot_name}'")
        self._rows = self._all_rows()
        self._ahead = next(self._rows, None)

    def _all_rows(self) -> Iterator[Change]:
        from psycopg import sql

        for schema, table in self.tables:
            columns = self._conn.execute(_COLUMNS, (schema, table)).fetchall()
            names = [name for name, _, _ in columns]
            keys = [name for name, _, is_key in columns if is_key]
            order = keys or ["ctid"]
            if self.truncate_first:
                self._index += 1
                yield Change(
                    op="t",
                    connector="postgresql",
                    db=self.db,
                    schema=schema,
                    table=table,
                    position=SourcePosition(self.position, self._index),
                    ts_ms=self._ts_ms,
                    snapshot="true",
                )
            query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{}::text").format(sql.Identifier(name)) for name in names
                ),
                sql.Identifier(schema, table),
                sql.SQL(", ").join(sql.Identifier(name) for name in order),
            )
            with self._conn.cursor(name=f"unbundled_snapshot_{len(names)}") as cursor:
                cursor.itersize = 2000
                cursor.execute(query)
                for raw in cursor:
                    row = {
                        name: None if text is None else convert(oid, text)
                        for (name, oid, _), text in zip(columns, raw, strict=True)
                    }
                    self._index += 1
                    yield Change(
                        op="r",
                        connector="postgresql",
                        db=self.db,
                        schema=schema,
                        table=table,
                        position=SourcePosition(self.position, self._index),
                        ts_ms=self._ts_ms,
                        key={k: row[k] for k in keys} if keys else None,
                        after=row,
                        snapshot="true",
                    )

    def read(self, limit: int) -> list[Change]:
        """Up to ``limit`` rows; the last row of all is marked snapshot="last"."""
        out: list[Change] = []
        if self._rows is None:
            return out
        while len(out) < limit and self._ahead is not None:
            change = self._ahead
            self._ahead = next(self._rows, None)
            if self._ahead is None:
                change = _with_snapshot(change, "last")
            out.append(change)
        if self._ahead is None:
            self.done = True
        return out

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the server may be gone: nothing to free
                self._conn.close()
            self._conn = None


def _with_snapshot(change: Change, mark: Any) -> Change:
    from dataclasses import replace

    return replace(change, snapshot=mark)
