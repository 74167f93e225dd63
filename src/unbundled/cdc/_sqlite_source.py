"""Change data capture from a SQLite database file: triggers into a change table.

The file is the user's own (an application's tables), not unbundled's log. `install`
adds, per captured table and per connector, AFTER INSERT/UPDATE/DELETE triggers that
write the row before and after the change into `_unbundled_cdc_changes`, in the same
transaction as the user's write: a rolled-back or crashed write leaves no change row,
and a committed one always has its row.

Guarantees (each has a test in tests/cdc/test_sqlite_source*.py):

1. Every committed change of a captured row is returned once by `changes`, in commit
   order. SQLite has one writer at a time and a writer holds the lock from its first
   write to its commit, so change ids (AUTOINCREMENT, never reused) grow in commit
   order: reading `id > position` never skips a change committed later with a lower id.
2. `snapshot` reads the change table's last id and every captured table in one read
   transaction: the rows it returns plus `changes(after=its position)` are the tables'
   contents, no change missing and none twice.
3. A change is decoded with the column list of the trigger that wrote it: the trigger
   stamps its relation version, and the row's column names must equal that version's
   or the read raises CorruptionError.
4. Schema changes. SQLite refuses ALTER TABLE DROP COLUMN of a column a trigger reads,
   and RENAME COLUMN rewrites the trigger to read the renamed column under its old name;
   ADD COLUMN leaves the trigger reading the old columns. So changes written between
   an ALTER and the next read (or `install`) carry the columns the table had before,
   under that relation version, with their values right. Every read compares the table
   with the metadata when the schema cookie moved, and on a difference (or a table
   dropped, created, or whose triggers are gone) re-creates the triggers under the next
   relation version and, in the same write transaction, writes a truncate ("t") of the
   table followed by every row of it as op "r" (snapshot "incremental"): a consumer
   applying the stream holds the table exactly again from there on. (A dropped table's
   truncate is likewise written at the first read after the DROP, after any change
   committed meanwhile: SQLite fires no trigger for a DROP TABLE.) `alter` runs a
   schema statement with the triggers out of the way and re-captured in the same
   transaction, so no change is written with a stale trigger at all (and DROP COLUMN
   works).
5. An UPDATE that changes the key is returned as a delete of the old key and a create
   of the new one, positions (id, 0) and (id, 1), as Debezium does.

Not captured: rows deleted by INSERT OR REPLACE fire no delete trigger unless the
writer's connection sets PRAGMA recursive_triggers = ON (SQLite's rule); VACUUM may
renumber the rowids of tables without an INTEGER PRIMARY KEY, which a rowid-keyed
consumer cannot see. Writers must not hold our change table's rows in their own
tables (the change table is ours).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from .. import limits
from .._bounds import check_int, check_seconds
from ..errors import BackendError, CorruptionError, NotFound, Unavailable, UsageError
from . import _sqlite_capture as capture
from . import _sqlite_sql as sql
from ._change import Change, SourcePosition
from ._sqlite_sql import CHANGES, CONNECTORS, RELATIONS, Relation

__all__ = ["Pending", "SqliteSource"]

_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_SNAPSHOT_ATTEMPTS: Final = 10  # schema changes racing one snapshot before it gives up


@dataclass(frozen=True, slots=True)
class Pending:
    """Change rows of one connector not yet pruned, and the bytes of their rows."""

    changes: int
    bytes: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.contextmanager
def _translated(path: str, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "readonly" in message or "read-only" in message:
            raise UsageError(
                f"{path} is read-only: cannot {action}", path=path, read_only=True
            ) from exc
        if "locked" in message or "busy" in message:
            raise Unavailable(f"{path} is busy: cannot {action}: {message}", path=path) from exc
        raise BackendError(f"{path}: cannot {action}: {message}", path=path) from exc


class SqliteSource:
    """Captures the changes of tables of one SQLite file, for the connector `name`.

    Several connectors (names) may capture the same file, each with its own triggers
    and change rows. `tables=None` captures every ordinary table, including tables
    created later (picked up at the next read, with their rows as op "r"). The
    object owns one connection; use it from one thread and `close` it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        tables: Sequence[str] | None = None,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if (
            not isinstance(name, str)
            or not _NAME.fullmatch(name)
            or (len(name) > limits.cdc_connector_chars_max)
        ):
            raise UsageError(
                f"a connector name is 1..{limits.cdc_connector_chars_max} letters, digits,"
                f" '_' or '-', got {name!r}",
                name=name,
            )
        self._timeout_s = check_seconds(
            "busy_timeout_s", busy_timeout_s, 0.0, limits.cdc_busy_timeout_s_max
        )
        self._tables = _check_tables(tables)
        self.path = os.fspath(path)
        self.name = name
        self.db = os.path.splitext(os.path.basename(self.path))[0]
        self._conn = self._connect()
        self._cookie: int | None = None  # the schema cookie last found in sync
        self._relations: dict[tuple[str, int], Relation] = {}

    # --- connections ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not os.path.isfile(self.path):
            raise NotFound(f"no SQLite database at {self.path}", path=self.path)
        uri = f"file:{quote(os.path.abspath(self.path))}?mode=rw"
        with _translated(self.path, "open it"):
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=self._timeout_s)
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # is it SQLite?
        return conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the write lock before any read)."""
        conn = self._conn
        with _translated(self.path, action):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # --- install and remove -----------------------------------------------------------

    def install(self) -> None:
        """Create the change and metadata tables and this connector's triggers.

        Idempotent. Re-running it with another `tables` captures the new list from now
        on (tables added get their rows as op "r"; tables left out lose their
        triggers). Raises UsageError naming an unknown or uncapturable table, or if
        the file is read-only; nothing is written then.
        """
        with self._write("install change capture") as conn:
            for statement in sql.SCHEMA_SQL:
                conn.execute(statement)
            existing = set(capture.user_tables(conn))
            for table in self._tables or ():
                if table not in existing:
                    sql.inspect_table(conn, table, 0, 0)  # raises the precise UsageError
            spec = None if self._tables is None else json.dumps(list(self._tables))
            known = conn.execute(
                f"SELECT count(*) FROM {CONNECTORS} WHERE connector = ?", (self.name,)
            ).fetchone()[0]
            conn.execute(
                f"INSERT INTO {CONNECTORS} (connector, tables, created_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (connector) DO UPDATE SET tables = excluded.tables",
                (self.name, spec, _now_ms()),
            )
            # A brand-new connector needs no "r" rows: its consumer starts with snapshot().
            capture.sync(conn, self.name, self._tables, resync=bool(known))
        self._cookie = None

    def remove(self) -> bool:
        """Drop this connector's triggers, change rows and metadata (and the shared
        tables when no connector is left). False if it was not installed. Idempotent."""
        with self._write("remove change capture") as conn:
            if not capture.has_tables(conn):
                return False
            for name in capture.trigger_names(conn, self.name):
                conn.execute(f"DROP TRIGGER IF EXISTS main.{sql.ident(name)}")
            found = conn.execute(
                f"DELETE FROM {CONNECTORS} WHERE connector = ?", (self.name,)
            ).rowcount
            conn.execute(f"DELETE FROM {CHANGES} WHERE connector = ?", (self.name,))
            conn.execute(f"DELETE FROM {RELATIONS} WHERE connector = ?", (self.name,))
            if conn.execute(f"SELECT count(*) FROM {CONNECTORS}").fetchone()[0] == 0:
                for table in (CHANGES, RELATIONS, CONNECTORS):
                    conn.execute(f"DROP TABLE {table}")
        self._relations.clear()
        self._cookie = None
        return bool(found)

    def alter(self, table: str, statement: str) -> None:
        """Run one schema statement (ALTER TABLE ...) on a captured table in one write
        transaction: every connector's triggers on it dropped, the statement run, the
        table captured again under its next relation version (guarantee 4).

        Needed for DROP COLUMN, which SQLite refuses while a trigger reads the column.
        """
        if not isinstance(statement, str) or not statement.strip():
            raise UsageError(f"statement must be an SQL statement, got {statement!r}")
        with self._write(f"alter {table!r}") as conn:
            for (name,) in conn.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
                " AND substr(name, 1, ?) = ?",
                (table, len(sql.TRIGGER_PREFIX), sql.TRIGGER_PREFIX),
            ).fetchall():
                conn.execute(f"DROP TRIGGER main.{sql.ident(name)}")
            try:
                conn.execute(statement)
            except (sqlite3.OperationalError, sqlite3.ProgrammingError) as exc:
                raise UsageError(f"{statement!r} failed: {exc}", statement=statement) from exc
            connectors = []
            if capture.has_tables(conn):
                connectors = conn.execute(f"SELECT connector, tables FROM {CONNECTORS}").fetchall()
            for connector, spec in connectors:
                tables = None if spec is None else tuple(json.loads(spec))
                capture.sync(conn, connector, tables, resync=True)
        self._cookie = None

    # --- reads --------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-capture the tables whose schema moved (guarantee 4), if the cookie moved."""
        conn = self._conn
        with _translated(self.path, "read the schema"):
            cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
            if cookie == self._cookie:
                return
            spec = capture.stored_spec(conn, self.name, self.path)
            if capture.plan(conn, self.name, spec):
                try:
                    with self._write("capture the changed schema") as wconn:
                        capture.sync(
                            wconn,
                            self.name,
                            capture.stored_spec(wconn, self.name, self.path),
                            resync=True,
                        )
                except UsageError as exc:
                    if not exc.details.get("read_only"):
                        raise
                    # Read-only: changes and snapshots go on under the relation versions
                    # the triggers have (guarantee 3); retried when the cookie moves again.
                cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
        self._cookie = cookie

    def changes(self, after: SourcePosition | None, limit: int) -> list[Change]:
        """Committed changes after `after` (None: from the first), in commit order.

        At most `limit` change rows after `after.commit` are read (and the rest of the
        row at `after`: an UPDATE of the key gives two changes, (id, 0) and (id, 1)).
        Raises NotFound if the connector is not installed.
        """
        check_int("limit", limit, 1, limits.cdc_read_changes_max)
        if after is not None and not isinstance(after, SourcePosition):
            raise UsageError(f"after must be a SourcePosition or None, got {after!r}")
        self._refresh()
        start = after.commit if after is not None else 0
        select = (
            "SELECT id, tbl, op, before, after, before_rowid, after_rowid, ts_ms,"
            f" schema_version FROM {CHANGES} WHERE connector = ?"
        )
        with _translated(self.path, "read changes"):
            rows = []
            if after is not None and after.index == 0:
                # The row at `after` may hold a second change (a key-changing update).
                rows = self._conn.execute(f"{select} AND id = ?", (self.name, start)).fetchall()
            rows += self._conn.execute(
                f"{select} AND id > ? ORDER BY id LIMIT ?", (self.name, start, limit)
            ).fetchall()
            out: list[Change] = []
            for row in rows:
                out.extend(c for c in self._decode(row) if after is None or c.position > after)
        return out

    def _relation(self, table: str, version: int) -> Relation:
        rel = self._relations.get((table, version))
        if rel is None:
            found = self._conn.execute(
                f"SELECT table_id, columns, rowid_alias FROM {RELATIONS}"
                " WHERE connector = ? AND tbl = ? AND version = ?",
                (self.name, table, version),
            ).fetchone()
            if found is None:
                raise CorruptionError(
                    f"{self.path}: a change of {table!r} names relation version {version},"
                    " which the metadata does not hold",
                    table=table,
                    version=version,
                )
            rel = Relation.from_row(table, version, *found)
            self._relations[table, version] = rel
        return rel

    def _decode(self, row: tuple[Any, ...]) -> list[Change]:
        change_id, table, op, before_text, after_text, rowid_b, rowid_a, ts_ms, version = row
        rel = self._relation(table, version)
        where = f"{self.path}: change {change_id} of {table!r}"
        before = None if before_text is None else _checked(rel, before_text, where)
        after = None if after_text is None else _checked(rel, after_text, where)

        def make(op: Any, index: int, **fields: Any) -> Change:
            return Change(
                op=op, connector="sqlite", db=self.db, schema="main", table=table,
                position=SourcePosition(change_id, index), ts_ms=ts_ms,
                relation_version=version, **fields,
            )  # fmt: skip

        if op == "t":
            return [make("t", 0)]
        key_b = None if before is None else _key(rel, before, rowid_b)
        key_a = None if after is None else _key(rel, after, rowid_a)
        if op == "u" and key_b != key_a:
            return [
                make("d", 0, key=key_b, before=before),
                make("c", 1, key=key_a, after=after),
            ]
        snapshot = "incremental" if op == "r" else "false"
        key = key_a if key_a is not None else key_b
        return [make(op, 0, key=key, before=before, after=after, snapshot=snapshot)]

    def snapshot(self, *, truncate_first: bool = False) -> tuple[SourcePosition, Iterator[Change]]:
        """Every row of the captured tables as op "r", and the position to stream from.

        With ``truncate_first`` each table's rows come after a truncate ("t") of it: a
        snapshot that replaces one a crash cut short must first clear what that one
        stored (rows it held may be gone by now).

        One read transaction, on a connection of its own that the iterator closes when
        exhausted or closed: consume it (or close it) promptly, as it holds the read
        snapshot (in rollback-journal mode it blocks writers meanwhile).
        """
        for _ in range(_SNAPSHOT_ATTEMPTS):
            self._refresh()
            conn = self._connect()
            try:
                with _translated(self.path, "start a snapshot"):
                    conn.execute("BEGIN")
                    seq = conn.execute(
                        "SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGES,)
                    ).fetchone()
                    cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
                    rels = capture.active(conn, self.name)
            except BaseException:
                conn.close()
                raise
            if cookie == self._cookie:  # the tables are as the relations describe them
                position = SourcePosition(0 if seq is None else seq[0], 0)
                return position, self._scan(conn, position, rels, truncate_first)
            conn.close()  # a schema change raced the snapshot: capture it first
        raise Unavailable(f"{self.path}: the schema kept changing during the snapshot")

    def _scan(
        self,
        conn: sqlite3.Connection,
        position: SourcePosition,
        rels: list[Relation],
        truncate_first: bool,
    ) -> Iterator[Change]:
        try:
            index = 0
            pending: Change | None = None
            for rel in rels:
                if truncate_first:
                    if pending is not None:
                        yield pending
                    index += 1
                    pending = Change(
                        op="t", connector="sqlite", db=self.db, schema="main",
                        table=rel.table, position=SourcePosition(position.commit, index),
                        ts_ms=_now_ms(), snapshot="true", relation_version=rel.version,
                    )  # fmt: skip
                cols = ", ".join(sql.ident(c) for c in rel.columns)
                if rel.rowid:
                    query = f"SELECT {rel.rowid}, {cols} FROM main.{sql.ident(rel.table)}"
                    query += f" ORDER BY {rel.rowid}"
                else:
                    query = f"SELECT NULL, {cols} FROM main.{sql.ident(rel.table)} ORDER BY "
                    query += ", ".join(sql.ident(c) for c in rel.pk)
                for rowid, *values in conn.execute(query):
                    if pending is not None:
                        yield pending
                    index += 1
                    after = dict(zip(rel.columns, values, strict=True))
                    pending = Change(
                        op="r", connector="sqlite", db=self.db, schema="main",
                        table=rel.table, position=SourcePosition(position.commit, index),
                        ts_ms=_now_ms(), key=_key(rel, after, rowid), after=after,
                        snapshot="true", relation_version=rel.version,
                    )  # fmt: skip
            if pending is not None:
                yield dataclasses.replace(pending, snapshot="last")
        finally:
            conn.close()

    # --- housekeeping ---------------------------------------------------------------------

    def prune(self, through: SourcePosition) -> int:
        """Delete this connector's change rows up to `through` (once the sink stored
        them durably); returns how many. A key-changing update's row stays until both
        of its changes are through."""
        if not isinstance(through, SourcePosition):
            raise UsageError(f"through must be a SourcePosition, got {through!r}")
        with self._write("prune changes") as conn:
            deleted = conn.execute(
                f"DELETE FROM {CHANGES} WHERE connector = ? AND id < ?",
                (self.name, through.commit),
            ).rowcount
            last = conn.execute(
                "SELECT id, tbl, op, before, after, before_rowid, after_rowid, ts_ms,"
                f" schema_version FROM {CHANGES} WHERE connector = ? AND id = ?",
                (self.name, through.commit),
            ).fetchone()
            if last is not None and all(c.position <= through for c in self._decode(last)):
                conn.execute(f"DELETE FROM {CHANGES} WHERE id = ?", (through.commit,))
                deleted += 1
        return deleted

    def pending(self) -> Pending:
        """How many change rows (and bytes of row data) wait to be pruned."""
        with _translated(self.path, "count changes"):
            count, size = self._conn.execute(
                "SELECT count(*), coalesce(sum(coalesce(length(before), 0)"
                f" + coalesce(length(after), 0)), 0) FROM {CHANGES} WHERE connector = ?",
                (self.name,),
            ).fetchone()
        return Pending(count, size)


# --- helpers over a connection (shared by install, reads and alter) --------------------


def _check_tables(tables: Sequence[str] | None) -> tuple[str, ...] | None:
    if tables is None:
        return None
    if isinstance(tables, str) or not isinstance(tables, Sequence):
        raise UsageError(f"tables must be a sequence of table names or None, got {tables!r}")
    if not 1 <= len(tables) <= limits.cdc_tables_max:
        raise UsageError(f"tables must name 1..{limits.cdc_tables_max} tables, got {len(tables)}")
    for table in tables:
        if not isinstance(table, str) or not table:
            raise UsageError(f"a table name must be a non-empty str, got {table!r}", table=table)
    if len(set(tables)) != len(tables):
        raise UsageError(f"tables names a table twice: {list(tables)!r}")
    return tuple(tables)


def _checked(rel: Relation, data: str, where: str) -> dict[str, Any]:
    row = sql.decode_row(data, where)
    if tuple(row) != rel.columns:
        raise CorruptionError(
            f"{where}: its columns {list(row)} are not those of relation version"
            f" {rel.version} {list(rel.columns)}",
            table=rel.table,
            version=rel.version,
        )
    return row


def _key(rel: Relation, row: dict[str, Any], rowid: int | None) -> dict[str, Any]:
    if rel.pk:
        return {name: row[name] for name in rel.pk}
    if rowid is None:
        raise CorruptionError(f"a change of {rel.table!r} (keyed by rowid) has no rowid")
    return {rel.rowid or "rowid": rowid}
