"""The SQLite CDC source held to a dict model by hypothesis: random inserts, upserts,
updates (of the key too), deletes, rolled-back transactions, ALTER TABLE ADD COLUMN
(behind the source's back) and DROP COLUMN (through `alter`), and prunes; a consumer
replaying the snapshot and then the changes holds exactly the table."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from unbundled.cdc._sqlite_source import SqliteSource

from ._sqlite_replay import Consumer, read_table

IDS = st.integers(0, 12)
VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=10),
    st.binary(max_size=10),
)
DEFAULTS = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from(["", "d'q", "x"]))


def literal(value: int | str | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


class SqliteCapture(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        path = f"{self.dir}/app.db"
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = wal")
        self.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        self.conn.execute("INSERT INTO t VALUES (100, 'before install')")
        self.columns = ["id", "v"]
        self.defaults: dict[str, int | str | None] = {}
        self.added = 0
        self.model: dict[int, dict[str, Any]] = {100: {"id": 100, "v": "before install"}}
        self.source = SqliteSource(path, name="model")
        self.source.install()
        self.conn.execute("INSERT INTO t VALUES (101, 'before snapshot')")
        self.model[101] = {"id": 101, "v": "before snapshot"}
        self.consumer = Consumer(self.source)

    def teardown(self) -> None:
        self.source.close()
        self.conn.close()
        shutil.rmtree(self.dir)

    @rule(i=IDS, value=VALUES)
    def upsert(self, i: int, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO t (id, v) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            (i, value),
        )
        if i not in self.model:
            self.model[i] = {"id": i} | {c: self.defaults[c] for c in self.columns[2:]}
        self.model[i]["v"] = value

    @rule(i=IDS, value=VALUES, col=st.integers(0, 3))
    def update(self, i: int, value: Any, col: int) -> None:
        name = self.columns[1:][col % (len(self.columns) - 1)]
        self.conn.execute(f'UPDATE t SET "{name}" = ? WHERE id = ?', (value, i))
        if i in self.model:
            self.model[i][name] = value

    @rule(i=IDS, new=IDS)
    def update_key(self, i: int, new: int) -> None:
        self.conn.execute("UPDATE OR IGNORE t SET id = ? WHERE id = ?", (new, i))
        if i in self.model and new not in self.model:
            row = self.model.pop(i)
            self.model[new] = row | {"id": new}

    @rule(i=IDS)
    def delete(self, i: int) -> None:
        self.conn.execute("DELETE FROM t WHERE id = ?", (i,))
        self.model.pop(i, None)

    @rule(below=IDS)
    def delete_many(self, below: int) -> None:
        self.conn.execute("DELETE FROM t WHERE id < ?", (below,))
        self.model = {i: row for i, row in self.model.items() if i >= below}

    @rule(i=IDS, value=VALUES)
    def rolled_back(self, i: int, value: Any) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("INSERT OR REPLACE INTO t (id, v) VALUES (?, ?)", (i, value))
        self.conn.execute("DELETE FROM t WHERE id <> ?", (i,))
        self.conn.execute("ROLLBACK")

    @precondition(lambda self: self.added < 3)
    @rule(default=DEFAULTS)
    def add_column(self, default: int | str | None) -> None:
        self.added += 1
        name = f"c{self.added}"
        self.conn.execute(f"ALTER TABLE t ADD COLUMN {name} DEFAULT {literal(default)}")
        self.columns.append(name)
        self.defaults[name] = default
        for row in self.model.values():
            row[name] = default

    @precondition(lambda self: len(self.columns) > 2)
    @rule()
    def drop_column(self) -> None:
        name = self.columns.pop()
        self.source.alter("t", f'ALTER TABLE t DROP COLUMN "{name}"')
        for row in self.model.values():
            del row[name]

    @rule(limit=st.integers(1, 50), prune=st.booleans())
    def catch_up(self, limit: int, prune: bool) -> None:
        self.consumer.catch_up(limit)
        expected = {(("id", i),): row for i, row in self.model.items()}
        assert self.consumer.tables["t"] == expected
        if prune:
            self.source.prune(self.consumer.position)

    @invariant()
    def table_matches_model(self) -> None:
        expected = {(("id", i),): row for i, row in self.model.items()}
        assert read_table(self.conn, "t", ["id"]) == expected


SqliteCapture.TestCase.settings = settings(stateful_step_count=40, deadline=None)
test_sqlite_capture = SqliteCapture.TestCase
