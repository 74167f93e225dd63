"""What a CDC consumer does, for the tests: apply changes to a dict per table, and read a
table the same way, so the two can be compared."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from unbundled.cdc._change import Change

Key = tuple[tuple[str, Any], ...]
Tables = dict[str, dict[Key, dict[str, Any]]]


def replay(changes: Iterable[Change], tables: Tables | None = None) -> Tables:
    """Apply `changes` in order, as a consumer keyed by the primary key would."""
    state: Tables = {} if tables is None else tables
    for change in changes:
        rows = state.setdefault(change.table, {})
        if change.op == "t":
            rows.clear()
            continue
        assert change.key is not None, change
        key = tuple(change.key.items())
        if change.op == "d":
            assert key in rows, f"a delete of a row the consumer does not hold: {change}"
            del rows[key]
        else:
            assert change.after is not None, change
            rows[key] = change.after
    return state


def read_table(conn: sqlite3.Connection, table: str, pk: Iterable[str] | None) -> dict[Key, Any]:
    """The table's rows keyed like the changes (pk columns, else the rowid)."""
    rowid = "NULL" if pk else "rowid"  # a WITHOUT ROWID table has none
    cursor = conn.execute(f'SELECT {rowid} AS "<rowid>", * FROM "{table}"')
    names = [d[0] for d in cursor.description]
    rows: dict[Key, Any] = {}
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        rowid = row.pop("<rowid>")
        key = tuple((c, row[c]) for c in pk) if pk else (("rowid", rowid),)
        rows[key] = row
    return rows


def drain(source: Any, after: Any, limit: int = 1000) -> list[Change]:
    """Every change after `after`, reading in batches of `limit`."""
    out: list[Change] = []
    while True:
        batch = source.changes(after, limit)
        if not batch:
            return out
        out.extend(batch)
        after = batch[-1].position


class Consumer:
    """A consumer of one source: its snapshot, then every change after it."""

    def __init__(self, source: Any, snapshot: tuple[Any, Iterable[Change]] | None = None) -> None:
        self.source = source
        self.position, rows = source.snapshot() if snapshot is None else snapshot
        self.tables = replay(rows)

    def catch_up(self, limit: int = 1000) -> list[Change]:
        changes = drain(self.source, self.position, limit)
        replay(changes, self.tables)
        if changes:
            self.position = changes[-1].position
        return changes
