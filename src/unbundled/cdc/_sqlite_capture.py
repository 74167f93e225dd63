"""Keeping a connector's triggers and metadata in step with the tables of the file.

`plan` compares the tables with the connector's active relations (read only); `sync`
applies that plan inside the caller's write transaction: a table captured anew gets the
next relation version and fresh triggers and, unless the connector is brand new, a
truncate and every row as changes (guarantee 4 of `_sqlite_source`).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time

from ..errors import NotFound, UsageError
from . import _sqlite_sql as sql
from ._sqlite_sql import CHANGES, CONNECTORS, RELATIONS, Relation

__all__ = ["active", "has_tables", "plan", "stored_spec", "sync", "trigger_names", "user_tables"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def has_tables(conn: sqlite3.Connection) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?",
            (CONNECTORS,),
        ).fetchone()[0]
    )


def stored_spec(conn: sqlite3.Connection, connector: str, path: str) -> tuple[str, ...] | None:
    row = None
    if has_tables(conn):
        row = conn.execute(
            f"SELECT tables FROM {CONNECTORS} WHERE connector = ?", (connector,)
        ).fetchone()
    if row is None:
        raise NotFound(
            f"connector {connector!r} is not installed in {path}", connector=connector, path=path
        )
    return None if row[0] is None else tuple(json.loads(row[0]))


def user_tables(conn: sqlite3.Connection) -> list[str]:
    """Every ordinary table: not SQLite's, not ours, not virtual nor a virtual table's
    shadow table (FTS5's x_data...)."""
    shadow: set[str] = set()
    with contextlib.suppress(sqlite3.OperationalError):  # SQLite before 3.37 has no table_list
        query = "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'"
        shadow = {r[0] for r in conn.execute(query)}
    names = conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table'"
        " AND upper(substr(sql, 1, 14)) != 'CREATE VIRTUAL' ORDER BY name"
    ).fetchall()
    own = (sql.OWN_PREFIX, "sqlite_")
    return [n for (n,) in names if not n.lower().startswith(own) and n not in shadow]


def active(conn: sqlite3.Connection, connector: str) -> list[Relation]:
    rows = conn.execute(
        f"SELECT tbl, version, table_id, columns, rowid_alias FROM {RELATIONS}"
        " WHERE connector = ? AND active = 1 ORDER BY table_id",
        (connector,),
    ).fetchall()
    return [Relation.from_row(*row) for row in rows]


def trigger_names(conn: sqlite3.Connection, connector: str) -> list[str]:
    """This connector's triggers: `_unbundled_cdc_<connector>_<table id>_<op>`."""
    pattern = re.compile(re.escape(sql.TRIGGER_PREFIX + connector) + r"_[0-9]+_[cud]")
    names = conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'trigger'")
    return [n for (n,) in names if pattern.fullmatch(n)]


def plan(
    conn: sqlite3.Connection, connector: str, spec: tuple[str, ...] | None
) -> list[tuple[str, Relation | None]]:
    """What `sync` would change: (table, its current shape or None when gone)."""
    current = {rel.table: rel for rel in active(conn, connector)}
    existing = set(user_tables(conn))
    wanted = [t for t in spec if t in existing] if spec is not None else sorted(existing)
    triggers = set(trigger_names(conn, connector))
    work: list[tuple[str, Relation | None]] = [
        (table, None) for table in current if table not in wanted
    ]
    for table in wanted:
        try:
            shape = sql.inspect_table(conn, table, 0, 0)
        except UsageError:
            if spec is not None:
                raise
            continue  # "every table": one that cannot be captured is left out
        rel = current.get(table)
        if (
            rel is None
            or rel.shape() != shape.shape()
            or any(rel.trigger_name(connector, op) not in triggers for op in sql.TRIGGER_OPS)
            or not triggers_on(conn, rel, connector)
        ):
            work.append((table, shape))
    return work


def triggers_on(conn: sqlite3.Connection, rel: Relation, connector: str) -> bool:
    # A renamed table takes its triggers along: they would still write the old name.
    names = [rel.trigger_name(connector, op) for op in sql.TRIGGER_OPS]
    found = conn.execute(
        "SELECT count(*) FROM main.sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
        " AND name IN (?, ?, ?)",
        (rel.table, *names),
    ).fetchone()[0]
    return bool(found == len(names))


def sync(
    conn: sqlite3.Connection, connector: str, spec: tuple[str, ...] | None, *, resync: bool
) -> None:
    """Make the triggers match the tables, inside the caller's write transaction.

    A table captured anew gets the next relation version; with `resync` its truncate
    and rows are written as changes (guarantee 4).
    """
    now = _now_ms()
    for table, shape in plan(conn, connector, spec):
        old = conn.execute(
            f"SELECT max(version), max(table_id) FROM {RELATIONS} WHERE connector = ? AND tbl = ?",
            (connector, table),
        ).fetchone()
        if old[1] is not None:
            for op in sql.TRIGGER_OPS:
                name = f"{sql.TRIGGER_PREFIX}{connector}_{old[1]}_{op}"
                conn.execute(f"DROP TRIGGER IF EXISTS main.{sql.ident(name)}")
        conn.execute(
            f"UPDATE {RELATIONS} SET active = 0 WHERE connector = ? AND tbl = ?", (connector, table)
        )
        version = (old[0] or 0) + 1
        if shape is None:  # the table is gone (dropped, renamed) or no longer wanted
            if table not in user_tables(conn):
                conn.execute(
                    f"INSERT INTO {CHANGES} (connector, tbl, op, ts_ms, schema_version)"
                    " VALUES (?, ?, 't', ?, ?)",
                    (connector, table, now, version - 1),
                )
            continue
        table_id = old[1]
        if table_id is None:
            top = conn.execute(
                f"SELECT max(table_id) FROM {RELATIONS} WHERE connector = ?", (connector,)
            ).fetchone()[0]
            table_id = (top or 0) + 1
        rel = Relation(table, version, table_id, shape.columns, shape.types, shape.pk, shape.rowid)
        conn.execute(
            f"INSERT INTO {RELATIONS} (connector, tbl, version, table_id, columns, rowid_alias,"
            " active, created_ms) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
            (connector, table, version, table_id, rel.columns_json(), rel.rowid, now),
        )
        for op in sql.TRIGGER_OPS:
            conn.execute(sql.trigger_sql(connector, rel, op))
        if resync:
            conn.execute(
                f"INSERT INTO {CHANGES} (connector, tbl, op, ts_ms, schema_version)"
                " VALUES (?, ?, 't', ?, ?)",
                (connector, table, now, version),
            )
            conn.execute(sql.resync_sql(connector, rel))
