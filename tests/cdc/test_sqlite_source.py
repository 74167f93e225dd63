"""The SQLite CDC source: round trips of every op and value, keys, validation, prune,
remove, and several connectors on one file (guarantees in cdc/_sqlite_source.py)."""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled.cdc._change import SourcePosition
from unbundled.cdc._sqlite_source import Pending, SqliteSource
from unbundled.errors import NotFound, UsageError

from ._sqlite_replay import drain, read_table, replay


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    yield path, conn
    conn.close()


def installed(path: str, name: str = "app", tables: list[str] | None = None) -> SqliteSource:
    source = SqliteSource(path, name=name, tables=tables)
    source.install()
    return source


VALUES = [
    None,
    0,
    2**63 - 1,
    -(2**63),
    1.5,
    0.1 + 0.2,
    5e-324,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    "",
    "naïve ☃ 𝄞 \"quoted\" 'single' \\ back",
    "nul \x00 inside",
    b"",
    b"\x00\xff\x00",
    bytes(range(256)),
]


def test_each_op_round_trips_every_value_type(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    with installed(path) as source:
        for i, value in enumerate(VALUES):
            conn.execute("INSERT INTO t VALUES (?, ?)", (i, value))
        for i in range(len(VALUES)):
            conn.execute("UPDATE t SET v = ? WHERE id = ?", (VALUES[-1 - i], i))
        conn.execute("DELETE FROM t")
        changes = source.changes(None, 1000)
    n = len(VALUES)
    assert [c.op for c in changes] == ["c"] * n + ["u"] * n + ["d"] * n
    for i, value in enumerate(VALUES):
        create, update, delete = changes[i], changes[n + i], changes[2 * n + i]
        assert create.after == {"id": i, "v": value} and create.before is None
        assert type(create.after["v"]) is type(value)
        assert update.before == {"id": i, "v": value}
        assert update.after == {"id": i, "v": VALUES[-1 - i]}
        assert delete.before == {"id": i, "v": VALUES[-1 - i]} and delete.after is None
        assert create.key == update.key == delete.key == {"id": i}
    positions = [c.position for c in changes]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(p.index == 0 for p in positions)
    assert {(c.connector, c.db, c.schema, c.table) for c in changes} == {
        ("sqlite", "app", "main", "t")
    }


@given(st.floats(allow_nan=False))
def test_every_double_round_trips(value: float) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    from unbundled.cdc._sqlite_sql import Relation, decode_row, row_sql

    rel = Relation("t", 1, 1, ("id", "v"), ("INTEGER", ""), ("id",), "rowid")
    conn.execute("INSERT INTO t VALUES (1, ?)", (value,))
    (text,) = conn.execute(f"SELECT {row_sql(rel, 't')} FROM t").fetchone()
    got = decode_row(text, "test")["v"]
    (stored,) = conn.execute("SELECT v FROM t").fetchone()
    if stored == 0.0:  # no SQL function shows the sign of a zero: -0.0 comes back as 0.0
        assert got == 0.0 and type(got) is float
    else:
        assert struct.pack("<d", got) == struct.pack("<d", stored)


@given(st.lists(st.one_of(st.binary(), st.text(st.characters(exclude_categories=["Cs"])))))
def test_text_and_blobs_round_trip(values: list[bytes | str]) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    from unbundled.cdc._sqlite_sql import Relation, decode_row, row_sql

    rel = Relation("t", 1, 1, ("id", "v"), ("INTEGER", "TEXT"), ("id",), "rowid")
    for i, value in enumerate(values):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, value))
    rows = conn.execute(f"SELECT v, {row_sql(rel, 't')} FROM t ORDER BY id").fetchall()
    assert [decode_row(text, "test")["v"] for _, text in rows] == [v for v, _ in rows]


def test_declared_numeric_keeps_text_it_could_not_convert(
    db: tuple[str, sqlite3.Connection],
) -> None:
    path, conn = db
    conn.execute("CREATE TABLE money (id INTEGER PRIMARY KEY, amount NUMERIC, price DECIMAL(10,2))")
    with installed(path, tables=["money"]) as source:
        conn.execute("INSERT INTO money VALUES (1, '12.50', 'n/a'), (2, '1e999x', 3)")
        after = [c.after for c in source.changes(None, 10)]
    # Whatever SQLite stored (REAL 12.5, INTEGER 3, the texts it could not convert).
    assert after == [
        {"id": 1, "amount": 12.5, "price": "n/a"},
        {"id": 2, "amount": "1e999x", "price": 3},
    ]


def test_multi_row_statements_and_key_changes(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    conn.execute("CREATE TABLE nokey (a, b)")
    conn.execute("CREATE TABLE pair (x TEXT, y INTEGER, z, PRIMARY KEY (y, x)) WITHOUT ROWID")
    with installed(path) as source:
        conn.execute(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 50)"
            " INSERT INTO t (id, v) SELECT n, n * 10 FROM s"
        )
        conn.execute("UPDATE t SET id = id + 100 WHERE id <= 10")  # key changes
        conn.execute("INSERT INTO nokey VALUES (1, 'x'), (2, 'y')")
        conn.execute("UPDATE nokey SET rowid = 10 WHERE a = 1")
        conn.execute("INSERT INTO pair VALUES ('a', 1, 'z'), ('b', 1, NULL)")
        conn.execute("UPDATE pair SET z = 'w' WHERE x = 'b'")
        conn.execute("DELETE FROM t WHERE id > 40")
        changes = drain(source, None, limit=7)
        split = [c for c in changes if c.table == "t" and c.position.index == 1]
        assert len(split) == 10 and all(c.op == "c" for c in split)
        assert {c.key["id"] for c in split if c.key} == set(range(101, 111))
        pair = [c for c in changes if c.table == "pair"]
        assert [c.key for c in pair] == [{"y": 1, "x": "a"}, {"y": 1, "x": "b"}, {"y": 1, "x": "b"}]
        nokey = [(c.op, c.key) for c in changes if c.table == "nokey"]
        assert nokey == [
            ("c", {"rowid": 1}), ("c", {"rowid": 2}), ("d", {"rowid": 1}), ("c", {"rowid": 10})
        ]  # fmt: skip
        state = replay(changes)
        assert state["t"] == read_table(conn, "t", ["id"])
        assert state["nokey"] == read_table(conn, "nokey", None)
        # Resuming from the middle of a key change returns its second half only.
        first = next(c for c in changes if c.position.index == 1)
        mid = SourcePosition(first.position.commit, 0)
        assert source.changes(mid, 1)[0] == first


def test_snapshot_then_changes(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    conn.execute("CREATE TABLE other (name TEXT PRIMARY KEY, n) WITHOUT ROWID")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    conn.executemany("INSERT INTO other VALUES (?, ?)", [(f"k{i}", i) for i in range(5)])
    with installed(path) as source:
        conn.execute("UPDATE t SET v = 'before' WHERE id = 1")
        position, rows = source.snapshot()
        conn.execute("UPDATE t SET v = 'after' WHERE id = 2")
        snapshot = list(rows)
        assert [c.snapshot for c in snapshot] == ["true"] * 24 + ["last"]
        assert {c.op for c in snapshot} == {"r"}
        assert [c.position for c in snapshot] == [
            SourcePosition(position.commit, i) for i in range(1, 26)
        ]
        state = replay(snapshot)
        assert state["t"][(("id", 1),)]["v"] == "before"
        assert state["t"][(("id", 2),)]["v"] == "v2"
        state = replay(source.changes(position, 100), state)
        assert state["t"] == read_table(conn, "t", ["id"])
        assert state["other"] == read_table(conn, "other", ["name"])


def test_rollback_leaves_no_change(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    with installed(path) as source:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1, 'x')")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (2, 'y')")
        conn.execute("SAVEPOINT s")
        conn.execute("INSERT INTO t VALUES (3, 'z')")
        conn.execute("ROLLBACK TO s")
        conn.execute("COMMIT")
        assert [c.key for c in source.changes(None, 10)] == [{"id": 2}]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO t VALUES (2, 'dup'), (4, 'w')")  # the statement fails whole
        assert [c.key for c in source.changes(None, 10)] == [{"id": 2}]


def test_prune_and_pending(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    with installed(path) as source:
        assert source.pending() == Pending(0, 0)
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 10) for i in range(10)])
        conn.execute("UPDATE t SET id = 100 WHERE id = 0")  # two changes in one row
        changes = source.changes(None, 100)
        pending = source.pending()
        assert pending.changes == 11 and pending.bytes > 11 * 10
        assert source.prune(changes[4].position) == 5
        assert source.changes(None, 100) == changes[5:]
        split = changes[-2]  # the delete half of the key change: its row stays
        assert split.position.index == 0
        assert source.prune(split.position) == 5
        assert source.changes(None, 100) == changes[-2:]  # a reader from scratch sees both
        assert source.changes(split.position, 100) == changes[-1:]
        assert source.prune(changes[-1].position) == 1
        assert source.pending() == Pending(0, 0)
        conn.execute("INSERT INTO t VALUES (1000, 'later')")
        # Ids are never reused after a prune: the new change sorts after the old ones.
        assert source.changes(changes[-1].position, 10)[0].key == {"id": 1000}


def test_two_connectors_on_one_file_and_remove(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v)")
    one = installed(path, "one", ["t"])
    two = installed(path, "two")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    conn.execute("INSERT INTO u VALUES (1, 'b')")
    assert [c.table for c in one.changes(None, 10)] == ["t"]
    assert [c.table for c in two.changes(None, 10)] == ["t", "u"]
    assert two.prune(two.changes(None, 10)[-1].position) == 2
    assert len(one.changes(None, 10)) == 1
    assert one.remove() is True
    assert one.remove() is False
    conn.execute("INSERT INTO t VALUES (2, 'c')")
    assert [c.key for c in two.changes(None, 10)] == [{"id": 2}]
    with pytest.raises(NotFound, match="'one' is not installed"):
        one.changes(None, 10)
    assert two.remove() is True
    left = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%unbundled%'").fetchall()
    assert left == []
    conn.execute("INSERT INTO t VALUES (3, 'd')")  # no trigger left behind
    one.close()
    two.close()


def test_install_is_idempotent(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    source = installed(path)
    source.install()
    triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")
    assert triggers.fetchone()[0] == 3
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    source.install()
    assert [c.op for c in source.changes(None, 10)] == ["c"]
    source.close()


def test_validation(db: tuple[str, sqlite3.Connection], tmp_path: Path) -> None:
    path, conn = db
    conn.execute("CREATE VIEW w AS SELECT * FROM t")
    conn.execute("CREATE VIRTUAL TABLE f USING fts5 (body)")
    conn.execute("CREATE TABLE shadowed (rowid, _rowid_, oid)")
    missing = str(tmp_path / "missing.db")
    with pytest.raises(NotFound, match=r"missing\.db"):
        SqliteSource(missing, name="app")
    assert not Path(missing).exists()
    for name in ("", "a b", "x" * 65, "é", "a;drop"):
        with pytest.raises(UsageError, match="connector name"):
            SqliteSource(path, name=name)
    for timeout in (-1, math.nan, 10_000):
        with pytest.raises(UsageError, match="busy_timeout_s"):
            SqliteSource(path, name="app", busy_timeout_s=timeout)
    with pytest.raises(UsageError, match="twice"):
        SqliteSource(path, name="app", tables=["t", "t"])
    with pytest.raises(UsageError, match="sequence"):
        SqliteSource(path, name="app", tables="t")
    cases = {
        "nope": "no table 'nope'",
        "w": "view",
        "f": "virtual table",
        "shadowed": "rowid is shadowed",
        "_unbundled_cdc_changes": "internal",
    }
    for table, message in cases.items():
        with pytest.raises(UsageError, match=message) as info:
            installed(path, tables=["t", table])
        assert info.value.details["table"] == table
    # Nothing was written by the refused installs; every-table skips what it cannot capture.
    assert (
        conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 0
    )
    source = installed(path)
    conn.execute("INSERT INTO f VALUES ('text')")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    assert [c.table for c in source.changes(None, 10)] == ["t"]
    with pytest.raises(UsageError, match="limit"):
        source.changes(None, 0)
    source.close()


def test_wide_table(db: tuple[str, sqlite3.Connection]) -> None:
    # More columns than json_object takes arguments in older SQLite builds.
    path, conn = db
    columns = [f'"c {i}"' for i in range(300)]
    conn.execute(f"CREATE TABLE wide (id INTEGER PRIMARY KEY, {', '.join(columns)})")
    values = [i if i % 3 else f"s{i}" for i in range(300)]
    with installed(path, tables=["wide"]) as source:
        conn.execute(f"INSERT INTO wide VALUES (1, {', '.join('?' * 300)})", values)
        (change,) = source.changes(None, 10)
        assert change.after == {"id": 1, **{f"c {i}": v for i, v in enumerate(values)}}
