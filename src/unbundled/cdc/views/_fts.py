"""A full-text index of change events in SQLite FTS5, with its offsets in the same file.

Tables (``<name>`` = the view's name): ``<name>_docs`` (topic, key, row as JSON),
``<name>_fts`` (FTS5 over the text of each row, rowid = the doc's id) and
``<name>_offsets`` (topic, partition, next offset). A batch's documents and its offset
are written in one transaction: after a crash the file holds both or neither.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ..._bounds import check_int
from ...errors import ConflictError
from .._replay import Event, RowOp, merge, row_ops
from ._base import TopicPartition, check_name

SEARCH_MAX = 10_000


class FtsView:
    """A SQLite FTS5 index of the rows of the topics it follows (see `follow`).

    ``columns`` names the columns whose text is indexed (None: every string value).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "cdc_fts",
        columns: Sequence[str] | None = None,
    ) -> None:
        self.name = check_name(name)
        self.path = os.fspath(path)
        self.columns = None if columns is None else list(columns)
        # A test hook: called after a batch is applied and before its commit.
        self.before_commit: Callable[[], None] | None = None
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        n = self.name
        self._conn.executescript(
            f"""
            BEGIN;
            CREATE TABLE IF NOT EXISTS {n}_docs (
                id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key TEXT NOT NULL,
                row TEXT NOT NULL, UNIQUE (topic, key));
            CREATE VIRTUAL TABLE IF NOT EXISTS {n}_fts USING fts5(body);
            CREATE TABLE IF NOT EXISTS {n}_offsets (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                PRIMARY KEY (topic, partition));
            COMMIT;
            """
        )

    def offsets(self) -> dict[TopicPartition, int]:
        """The stored offsets: (topic, partition) -> the next offset to apply."""
        rows = self._conn.execute(f"SELECT topic, partition, next_offset FROM {self.name}_offsets")
        return {(t, p): o for t, p, o in rows}

    def apply(
        self,
        batch: Sequence[Event],
        start: dict[TopicPartition, int],
        end: dict[TopicPartition, int],
    ) -> None:
        """Apply one batch of change events and store the offsets after it, atomically."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for (topic, partition), at in start.items():
                got = conn.execute(
                    f"SELECT next_offset FROM {self.name}_offsets"
                    " WHERE topic = ? AND partition = ?",
                    (topic, partition),
                ).fetchone()
                if (0 if got is None else got[0]) != at:
                    raise ConflictError(
                        f"view {self.name}: {topic}[{partition}] is at {got and got[0]}, not {at}:"
                        " another runner applied it"
                    )
            for event in batch:
                for op in row_ops(event):
                    self._apply(event.topic, op)
            conn.executemany(
                f"INSERT INTO {self.name}_offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                [(t, p, o) for (t, p), o in end.items()],
            )
            if self.before_commit is not None:
                self.before_commit()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _apply(self, topic: str, op: RowOp) -> None:
        n, conn = self.name, self._conn
        if op.op == "clear":
            conn.execute(
                f"DELETE FROM {n}_fts WHERE rowid IN (SELECT id FROM {n}_docs WHERE topic = ?)",
                (topic,),
            )
            conn.execute(f"DELETE FROM {n}_docs WHERE topic = ?", (topic,))
            return
        got = conn.execute(
            f"SELECT id, row FROM {n}_docs WHERE topic = ? AND key = ?", (topic, op.key)
        ).fetchone()
        if got is not None:
            conn.execute(f"DELETE FROM {n}_fts WHERE rowid = ?", (got[0],))
        if op.op == "delete":
            if got is not None:
                conn.execute(f"DELETE FROM {n}_docs WHERE id = ?", (got[0],))
            return
        assert op.row is not None
        row = merge(None if got is None else json.loads(got[1]), op.row)
        text = json.dumps(row, separators=(",", ":"), ensure_ascii=False)
        if got is None:
            cur = conn.execute(
                f"INSERT INTO {n}_docs (topic, key, row) VALUES (?, ?, ?)", (topic, op.key, text)
            )
            doc_id = cur.lastrowid
        else:
            doc_id = got[0]
            conn.execute(f"UPDATE {n}_docs SET row = ? WHERE id = ?", (text, doc_id))
        conn.execute(f"INSERT INTO {n}_fts (rowid, body) VALUES (?, ?)", (doc_id, self._body(row)))

    def _body(self, row: dict[str, Any]) -> str:
        names = row if self.columns is None else [c for c in self.columns if c in row]
        return "\n".join(v for v in (row[c] for c in names) if isinstance(v, str))

    def search(self, query: str, *, limit: int = 20) -> list[tuple[str, str, dict[str, Any]]]:
        """(topic, key, row) of the documents matching an FTS5 query, best first."""
        check_int("limit", limit, 1, SEARCH_MAX)
        rows = self._conn.execute(
            f"SELECT d.topic, d.key, d.row FROM {self.name}_fts f "
            f"JOIN {self.name}_docs d ON d.id = f.rowid "
            f"WHERE {self.name}_fts MATCH ? ORDER BY rank LIMIT ?",
            (query, limit),
        )
        return [(t, k, json.loads(r)) for t, k, r in rows]

    def rows(self, topic: str) -> dict[str, dict[str, Any]]:
        """Every row the view holds, keyed like the change events' keys."""
        rows = self._conn.execute(
            f"SELECT key, row FROM {self.name}_docs WHERE topic = ?", (topic,)
        )
        return {k: json.loads(r) for k, r in rows}

    def close(self) -> None:
        """Close the view's connection."""
        self._conn.close()
