"""One chunk of an incremental snapshot, read between two watermarks (DBLog).

While the stream goes on, `read_chunk` writes a low watermark (a non-transactional
logical message with a fresh id), then, in one transaction, selects the next ``size`` rows
by primary key after the last key stored (``WHERE (k...) > (last...) ORDER BY k...
LIMIT size``) and writes the high watermark (a transactional message: its commit flushes
the WAL, so the stream brings it without waiting for the WAL writer). The stream delivers
transactions in commit order and the low mark at its own WAL place, so:

- a change committed before the low watermark comes before it in the stream, and the
  selected row already holds it (or a later value);
- a change streamed between the two watermarks may or may not be in the selected row:
  the stream's event is at least as new, so the key is dropped from the chunk
  (`Chunk.saw`);
- PostgreSQL writes a commit record before it makes the transaction visible, so one
  whose commit precedes the low watermark may still be invisible to the select: the
  select's snapshot (xmin, xmax, running xids) is kept, and a change of a transaction it
  does not see drops its key too, wherever it comes before the high watermark;
- a change committed after the high watermark is newer than the select, and comes after
  the chunk's rows, which are emitted when the high watermark arrives, at positions
  (its commit LSN, 1..n): its transaction holds nothing else, so they equal no other.

So the log's events for the table, applied in order, still add up to the table.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import NotFound, NotSupported
from ._change import Change, SourcePosition
from ._incremental import ChunkDone, Task
from ._pgtypes import convert
from ._replay import key_text

LOW_PREFIX = "unbundled.incremental.low"
HIGH_PREFIX = "unbundled.incremental.high"

_COLUMNS = """
SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
       array_position(i.indkey, a.attnum)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


@dataclass
class Chunk:
    """The rows of one chunk, waiting for their high watermark."""

    task: Task
    mark: str  # the watermarks' id: messages of an earlier runner carry another one
    rows: dict[str, Change]  # key text -> the row as op "r", in key order
    last_key: list[str] | None  # the chunk's greatest key, as text (None: table exhausted)
    selected: int = 0
    dropped: int = 0  # keys the stream changed inside the window
    in_window: bool = False  # the low watermark came and the high one not yet
    snapshot: Snapshot | None = None  # what the select saw
    started: float = field(default_factory=time.monotonic)

    def saw(self, change: Change) -> None:
        """A streamed change inside the window: its key's selected row may be stale."""
        if not self.in_window and not (
            self.snapshot is not None and self.snapshot.invisible(change.tx_id)
        ):
            return
        if (change.schema, change.table) != (self.task.schema, self.task.table):
            return
        if change.op == "t":
            self.dropped += len(self.rows)
            self.rows.clear()
            return
        for row in (change.key, _old_key(change)):
            if row is not None and self.rows.pop(key_text(_json_key(row)), None) is not None:
                self.dropped += 1

    def finish(self, lsn: int) -> tuple[list[Change], ChunkDone]:
        """The chunk's remaining rows, placed at the high watermark's LSN."""
        out = [
            replace(change, position=SourcePosition(lsn, index), lsn=lsn)
            for index, change in enumerate(self.rows.values(), start=1)
        ]
        return out, ChunkDone(self.task, self.last_key, len(out))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A select's snapshot, as ``pg_current_snapshot()`` prints it (64-bit xids)."""

    xmin: int
    xmax: int
    running: frozenset[int]  # 32-bit xids, as the stream's Begin carries them

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(
            int(xmin),
            int(xmax),
            frozenset(int(x) & 0xFFFFFFFF for x in running.split(",") if x),
        )

    def invisible(self, xid: int | None) -> bool:
        """True if the snapshot does not see transaction ``xid`` (32-bit, as streamed)."""
        if xid is None:
            return False
        if xid in self.running:
            return True
        # At or after xmax (modulo 2^32, as PostgreSQL compares 32-bit xids).
        return (xid - (self.xmax & 0xFFFFFFFF)) % (1 << 32) < (1 << 31)


def _json_key(key: dict[str, Any]) -> dict[str, Any]:
    from ._change import json_value

    return {name: json_value(value) for name, value in key.items()}


def _old_key(change: Change) -> dict[str, Any] | None:
    """The key an update moved a row away from (its old key is gone from the table)."""
    if change.op != "u" or change.before is None or change.key is None:
        return None
    if not all(name in change.before for name in change.key):
        return None
    return {name: change.before[name] for name in change.key}


def _columns(conn: Any, task: Task) -> list[tuple[str, int, str, int | None]]:
    columns = conn.execute(_COLUMNS, (task.schema, task.table)).fetchall()
    if not columns:
        raise NotFound(f"table {task.name!r} is gone from the CDC source")
    if not any(position is not None for *_, position in columns):
        raise NotSupported(
            f"table {task.name!r} has no primary key: an incremental snapshot reads by key"
        )
    return [(str(n), int(oid), str(t), p) for n, oid, t, p in columns]


def read_chunk(conn: Any, task: Task, size: int, db: str) -> Chunk:
    """Write the low watermark, select the chunk, write the high watermark.

    ``conn`` is an autocommit psycopg connection: each statement sees everything
    committed before it began, so the select sees at least what preceded the low mark.
    """
    from psycopg import sql

    columns = _columns(conn, task)
    keys = sorted((c for c in columns if c[3] is not None), key=lambda c: c[3] or 0)
    names = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c[0])) for c in columns)
    # Qualified: a bare name would mean the select list's ``col::text`` output column,
    # and the rows would come in text order ('10' < '9'), not key order.
    order = sql.SQL(", ").join(sql.Identifier(task.schema, task.table, c[0]) for c in keys)
    where: sql.Composable = sql.SQL("")
    params: list[Any] = []
    if task.last_key is not None:
        where = sql.SQL("WHERE ({}) > ({})").format(
            order,
            sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(sql.SQL(c[2])) for c in keys),
        )
        params = list(task.last_key)
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT {}").format(
        names, sql.Identifier(task.schema, task.table), where, order, sql.Literal(size)
    )
    mark = uuid.uuid4().hex
    conn.execute("SELECT pg_logical_emit_message(false, %s, %s)", (LOW_PREFIX, mark))
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # Taken first, so it is the snapshot the select below reads in.
        snapshot = Snapshot.parse(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])
        raw_rows = conn.execute(query, params).fetchall()
        conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (HIGH_PREFIX, mark))
    now_ms = int(time.time() * 1000)
    rows: dict[str, Change] = {}
    last_key: list[str] | None = None
    key_at = [i for i, c in enumerate(columns) if c[3] is not None]
    for raw in raw_rows:
        row = {
            name: None if text is None else convert(oid, text)
            for (name, oid, _, _), text in zip(columns, raw, strict=True)
        }
        key = {c[0]: row[c[0]] for c in keys}
        rows[key_text(_json_key(key))] = Change(
            op="r",
            connector="postgresql",
            db=db,
            schema=task.schema,
            table=task.table,
            position=SourcePosition(0, 0),  # placed at the high watermark (`finish`)
            ts_ms=now_ms,
            key=key,
            after=row,
            snapshot="incremental",
        )
        by_name = {columns[i][0]: raw[i] for i in key_at}
        last_key = [str(by_name[c[0]]) for c in keys]
    return Chunk(task, mark, rows, last_key, selected=len(raw_rows), snapshot=snapshot)
