"""The SQL of the SQLite CDC source: its tables, the capture triggers, and how a row is
written into and read back from the change table.

Pure functions over strings and one introspection helper; `_sqlite_source` does the I/O.

A captured row is stored as one JSON object, column name to value, built by the
trigger inside the user's own write (so it commits or rolls back with it). JSON has no
bytes and SQLite's `json_object` prints REAL with 15 digits (0.1 + 0.2 comes back as
0.3) and infinities as the bare word `Inf`, so the trigger tags those two storage
classes per value, by `typeof()` (SQLite types values, not columns: a column declared
TEXT may hold a BLOB):

    BLOB -> ["b", "<hex>"]     REAL -> ["f", "<%!.17g>"]  (17 digits round-trip a double)
                               large REAL -> ["F", "<%!.17g of value / 2**768>"]

A negative zero (kept by a column without type affinity) comes back as 0.0: no SQL
function of SQLite shows a zero's sign. INTEGER, TEXT and NULL are plain JSON (SQLite
writes a 64-bit integer in full). A plain value is never a JSON array, so a list on
read is always one of these tags.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

from ..errors import CorruptionError, UsageError

CHANGES: Final = "_unbundled_cdc_changes"
RELATIONS: Final = "_unbundled_cdc_relations"
CONNECTORS: Final = "_unbundled_cdc_connectors"
TRIGGER_PREFIX: Final = "_unbundled_cdc_"
OWN_PREFIX: Final = "_unbundled_cdc"

# json_object takes at most 127 arguments in SQLite builds before 3.48
# (SQLITE_MAX_FUNCTION_ARG), so a wide row is built from chunks of this many columns.
_CHUNK_COLUMNS: Final = 50

# Milliseconds since the Unix epoch, in the writer's own statement (julianday is fixed
# for the duration of one statement, so every row of a multi-row statement agrees).
TS_MS_SQL: Final = "CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"

SCHEMA_SQL: Final = (
    f"""CREATE TABLE IF NOT EXISTS {CHANGES} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        connector TEXT NOT NULL,
        tbl TEXT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('c', 'u', 'd', 'r', 't')),
        before TEXT,
        after TEXT,
        before_rowid INTEGER,
        after_rowid INTEGER,
        ts_ms INTEGER NOT NULL,
        schema_version INTEGER NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {CHANGES}_by_connector ON {CHANGES} (connector, id)",
    f"""CREATE TABLE IF NOT EXISTS {CONNECTORS} (
        connector TEXT PRIMARY KEY,
        tables TEXT,
        created_ms INTEGER NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS {RELATIONS} (
        connector TEXT NOT NULL,
        tbl TEXT NOT NULL,
        version INTEGER NOT NULL,
        table_id INTEGER NOT NULL,
        columns TEXT NOT NULL,
        rowid_alias TEXT,
        active INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (connector, tbl, version)
    )""",
)

TRIGGER_OPS: Final = {"c": "INSERT", "u": "UPDATE", "d": "DELETE"}


@dataclass(frozen=True, slots=True)
class Relation:
    """One captured table at one schema version: its columns, types and key.

    `pk` names the primary-key columns in key order (empty: keyed by the rowid, whose
    name `rowid` is the first of rowid/_rowid_/oid the table does not shadow).
    """

    table: str
    version: int
    table_id: int
    columns: tuple[str, ...]
    types: tuple[str, ...]
    pk: tuple[str, ...]
    rowid: str | None  # None: a WITHOUT ROWID table

    def shape(self) -> tuple[object, ...]:
        """What a schema change alters (the version and trigger id do not count)."""
        return (self.columns, self.types, self.pk, self.rowid)

    def columns_json(self) -> str:
        return json.dumps(
            [
                [c, t, self.pk.index(c) + 1 if c in self.pk else 0]
                for c, t in zip(self.columns, self.types, strict=True)
            ]
        )

    @classmethod
    def from_row(
        cls, table: str, version: int, table_id: int, columns: str, rowid: str | None
    ) -> Relation:
        entries = json.loads(columns)
        pk = sorted((rank, name) for name, _, rank in entries if rank)
        return cls(
            table,
            version,
            table_id,
            tuple(e[0] for e in entries),
            tuple(e[1] for e in entries),
            tuple(name for _, name in pk),
            rowid,
        )

    def trigger_name(self, connector: str, op: str) -> str:
        return f"{TRIGGER_PREFIX}{connector}_{self.table_id}_{op}"


def ident(name: str) -> str:
    """`name` as an SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def text(value: str) -> str:
    """`value` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def inspect_table(conn: sqlite3.Connection, table: str, version: int, table_id: int) -> Relation:
    """The table's current shape, or UsageError if it cannot be captured.

    Views, virtual tables (no triggers on them) and SQLite's or our own tables are
    refused; every ordinary table has a primary key or a rowid, so every one is keyed.
    """
    row = conn.execute(
        "SELECT type, sql FROM main.sqlite_master WHERE name = ? AND type IN ('table', 'view')",
        (table,),
    ).fetchone()
    if row is None:
        raise UsageError(f"no table {table!r} in the database", table=table)
    kind, sql = row
    if kind != "table" or str(sql).upper().startswith("CREATE VIRTUAL"):
        raise UsageError(
            f"{table!r} is a {'view' if kind == 'view' else 'virtual table'}: "
            "SQLite fires no triggers on it, so it cannot be captured",
            table=table,
        )
    if table.lower().startswith(("sqlite_", OWN_PREFIX)):
        raise UsageError(f"{table!r} is an internal table and cannot be captured", table=table)
    info = conn.execute(f"SELECT name, type, pk, hidden FROM pragma_table_xinfo({text(table)})")
    # hidden 1 = a virtual table's hidden column; 2 and 3 (generated columns) are
    # part of the row as SELECT * shows it, and NEW/OLD can read them.
    cols = [(str(n), str(t), int(pk)) for n, t, pk, hidden in info if hidden != 1]
    if not cols:
        raise UsageError(f"table {table!r} has no columns", table=table)
    names = tuple(c[0] for c in cols)
    pk = tuple(name for _, name in sorted((rank, name) for name, _, rank in cols if rank))
    rowid = _rowid_alias(conn, table, {n.lower() for n in names})
    if rowid is None and not pk:
        raise UsageError(
            f"table {table!r} has no primary key and its rowid is shadowed by "
            "columns named rowid, _rowid_ and oid: its rows have no key",
            table=table,
        )
    return Relation(table, version, table_id, names, tuple(c[1] for c in cols), pk, rowid)


def _rowid_alias(conn: sqlite3.Connection, table: str, names: set[str]) -> str | None:
    try:
        conn.execute(f"SELECT rowid FROM main.{ident(table)} LIMIT 0")
    except sqlite3.OperationalError:
        return None  # WITHOUT ROWID
    return next((a for a in ("rowid", "_rowid_", "oid") if a not in names), None)


# 2**256 and 2**768 as exact products of 2**32 (a decimal literal this large might not
# parse to the exact power of two in every SQLite build).
_TWO_256: Final = "(" + "*".join(["4294967296.0"] * 8) + ")"
_TWO_768: Final = "(" + "*".join(["4294967296.0"] * 24) + ")"
FLOAT_SCALE: Final = 768


def _value_sql(expr: str) -> str:
    # SQLite before 3.43 converts a double to decimal in long double arithmetic, which
    # drifts above about 2**350: printf('%!.17g') is exact below 2**256 (down to the
    # subnormals) but not above. A larger magnitude is divided by 2**768 (exact: a
    # power of two) and tagged "F"; the reader multiplies it back.
    return (
        f"CASE typeof({expr}) WHEN 'blob' THEN json_array('b', hex({expr})) "
        f"WHEN 'real' THEN CASE WHEN abs({expr}) < {_TWO_256} "
        f"THEN json_array('f', printf('%!.17g', {expr})) "
        f"ELSE json_array('F', printf('%!.17g', {expr} / {_TWO_768})) END "
        f"ELSE {expr} END"
    )


def row_sql(rel: Relation, source: str) -> str:
    """An SQL expression: the row `source` (NEW, OLD or a table alias) as our JSON text."""
    chunks = []
    for start in range(0, len(rel.columns), _CHUNK_COLUMNS):
        args = ", ".join(
            f"{text(c)}, {_value_sql(f'{source}.{ident(c)}')}"
            for c in rel.columns[start : start + _CHUNK_COLUMNS]
        )
        chunks.append(f"json_object({args})")
    if len(chunks) == 1:
        return chunks[0]
    # Join the chunks' members into one object: drop the inner braces. Each chunk ends
    # with the one "}" closing it (values are scalars or tag arrays, never objects).
    parts = [f"rtrim({chunks[0]}, '}}')"]
    parts += [f"ltrim(rtrim({c}, '}}'), '{{')" for c in chunks[1:-1]]
    parts.append(f"ltrim({chunks[-1]}, '{{')")
    return " || ',' || ".join(parts)


def trigger_sql(connector: str, rel: Relation, op: str) -> str:
    """The AFTER trigger that records `op` (c, u or d) on `rel` for `connector`."""
    before = row_sql(rel, "OLD") if op in "ud" else "NULL"
    after = row_sql(rel, "NEW") if op in "cu" else "NULL"
    rowid_b = f"OLD.{rel.rowid}" if rel.rowid and op in "ud" else "NULL"
    rowid_a = f"NEW.{rel.rowid}" if rel.rowid and op in "cu" else "NULL"
    return (
        f"CREATE TRIGGER main.{ident(rel.trigger_name(connector, op))} "
        f"AFTER {TRIGGER_OPS[op]} ON {ident(rel.table)} BEGIN "
        f"INSERT INTO {CHANGES} (connector, tbl, op, before, after, before_rowid, after_rowid,"
        f" ts_ms, schema_version) VALUES ({text(connector)}, {text(rel.table)}, '{op}',"
        f" {before}, {after}, {rowid_b}, {rowid_a}, {TS_MS_SQL}, {rel.version}); END"
    )


def resync_sql(connector: str, rel: Relation) -> str:
    """Copies every row of the table into the change table as op "r" (one statement)."""
    order = rel.rowid or ", ".join(ident(c) for c in rel.pk)
    rowid = f"src.{rel.rowid}" if rel.rowid else "NULL"
    return (
        f"INSERT INTO {CHANGES} (connector, tbl, op, before, after, before_rowid, after_rowid,"
        f" ts_ms, schema_version) SELECT {text(connector)}, {text(rel.table)}, 'r', NULL,"
        f" {row_sql(rel, 'src')}, NULL, {rowid}, {TS_MS_SQL}, {rel.version}"
        f" FROM main.{ident(rel.table)} AS src ORDER BY {order}"
    )


def decode_row(data: str, where: str) -> dict[str, Any]:
    """A row written by `row_sql` back into Python values (bytes, float, int, str, None)."""
    try:
        row = json.loads(data)
        if not isinstance(row, dict):
            raise TypeError("not an object")
        return {name: _decode_value(value) for name, value in row.items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptionError(f"{where}: the captured row does not decode: {exc}") from exc


def _decode_value(value: Any) -> Any:
    if isinstance(value, list):
        tag, payload = value
        if tag == "b":
            return bytes.fromhex(payload)
        if tag == "f":
            return float(payload)
        if tag == "F":
            return math.ldexp(float(payload), FLOAT_SCALE)  # "Inf" and "-Inf" included
        raise ValueError(f"unknown value tag {tag!r}")
    if isinstance(value, float):  # never written untagged: a foreign row
        raise TypeError("an untagged REAL")
    return value
