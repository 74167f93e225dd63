"""Schema changes under the SQLite CDC source (guarantees 3 and 4 in cdc/_sqlite_source.py),
tampered change rows, and a read-only file."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from unbundled.cdc._sqlite_source import SqliteSource
from unbundled.errors import CorruptionError, UsageError

from ._sqlite_replay import Consumer, read_table


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, i * 10, f"b{i}") for i in range(5)])
    yield path, conn
    conn.close()


def follow(path: str, tables: list[str] | None = None) -> tuple[SqliteSource, Consumer]:
    """An installed source and a consumer that took its snapshot."""
    source = SqliteSource(path, name="app", tables=tables)
    source.install()
    return source, Consumer(source)


def test_add_column_outside_alter(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    source, consumer = follow(path)
    conn.execute("ALTER TABLE t ADD COLUMN c DEFAULT 'dflt'")
    conn.execute("UPDATE t SET c = 'set', a = -1 WHERE id = 1")  # before any read: stale trigger
    changes = consumer.catch_up()
    stale, truncate, *rows = changes
    # The stale trigger's change: decoded with the columns it captured, under version 1.
    assert stale.op == "u" and stale.relation_version == 1
    assert stale.after == {"id": 1, "a": -1, "b": "b1"}
    # Then the table captured again: a truncate and every row under version 2.
    assert truncate.op == "t" and truncate.relation_version == 2
    assert {c.op for c in rows} == {"r"} and {c.relation_version for c in rows} == {2}
    assert {c.snapshot for c in rows} == {"incremental"}
    assert consumer.tables["t"] == read_table(conn, "t", ["id"])
    conn.execute("UPDATE t SET c = 'new' WHERE id = 2")
    (change,) = consumer.catch_up()
    assert change.relation_version == 2 and change.after == {
        "id": 2,
        "a": 20,
        "b": "b2",
        "c": "new",
    }
    assert consumer.tables["t"] == read_table(conn, "t", ["id"])
    source.close()


def test_rename_column_outside_alter(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    source, consumer = follow(path)
    conn.execute("ALTER TABLE t RENAME COLUMN b TO bee")
    conn.execute("UPDATE t SET bee = 'renamed' WHERE id = 3")
    stale = consumer.catch_up()[0]
    # SQLite rewrote the trigger to read `bee`, still writing it under the old name.
    assert stale.after == {"id": 3, "a": 30, "b": "renamed"} and stale.relation_version == 1
    assert consumer.tables["t"] == read_table(conn, "t", ["id"])
    assert all("bee" in row for row in consumer.tables["t"].values())
    source.close()


def test_drop_column_needs_alter(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    source, consumer = follow(path)
    with pytest.raises(sqlite3.OperationalError, match="trigger"):
        conn.execute("ALTER TABLE t DROP COLUMN b")  # SQLite refuses: a trigger reads b
    other = SqliteSource(path, name="other", tables=["t"])
    other.install()
    source.alter("t", "ALTER TABLE t DROP COLUMN b")
    conn.execute("UPDATE t SET a = 0 WHERE id = 4")
    changes = consumer.catch_up()
    assert changes[0].op == "t"
    assert {c.relation_version for c in changes} == {2}  # no stale change at all
    assert changes[-1].after == {"id": 4, "a": 0}
    assert consumer.tables["t"] == read_table(conn, "t", ["id"])
    # The other connector's triggers were captured again too.
    assert other.changes(None, 100)[-1].after == {"id": 4, "a": 0}
    with pytest.raises(UsageError, match="no such column"):
        source.alter("t", "ALTER TABLE t DROP COLUMN nope")
    source.close()
    other.close()


def test_dropped_recreated_and_new_tables(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    source, consumer = follow(path)
    conn.execute("DROP TABLE t")  # no delete trigger fires for its rows
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)")
    conn.execute("INSERT INTO t VALUES (7, 'x', 'y')")  # before the triggers are back
    conn.execute("CREATE TABLE fresh (k TEXT PRIMARY KEY, v)")
    conn.execute("INSERT INTO fresh VALUES ('one', 1)")
    changes = consumer.catch_up()
    assert {(c.table, c.op) for c in changes} >= {("t", "t"), ("t", "r"), ("fresh", "r")}
    assert (
        consumer.tables["t"]
        == read_table(conn, "t", ["id"])
        == {(("id", 7),): {"id": 7, "a": "x", "b": "y"}}
    )
    assert consumer.tables["fresh"] == read_table(conn, "fresh", ["k"])
    conn.execute("ALTER TABLE fresh RENAME TO renamed")
    conn.execute("INSERT INTO renamed VALUES ('two', 2)")
    consumer.catch_up()
    assert consumer.tables["fresh"] == {}
    assert consumer.tables["renamed"] == read_table(conn, "renamed", ["k"])
    conn.execute("INSERT INTO renamed VALUES ('three', 3)")
    (change,) = consumer.catch_up()
    assert change.table == "renamed" and change.key == {"k": "three"}
    source.close()


def test_explicit_table_dropped(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    conn.execute("CREATE TABLE keep (id INTEGER PRIMARY KEY)")
    source, consumer = follow(path, ["t", "keep"])
    conn.execute("DROP TABLE t")
    conn.execute("INSERT INTO keep VALUES (1)")
    changes = consumer.catch_up()
    # The drop is noticed at the read, after the insert that came later.
    assert [(c.table, c.op) for c in changes] == [("keep", "c"), ("t", "t")]
    assert consumer.tables["t"] == {}
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, z)")
    conn.execute("INSERT INTO t VALUES (1, 'back')")
    consumer.catch_up()
    assert consumer.tables["t"] == read_table(conn, "t", ["id"])
    source.close()


def test_tampered_change_row_is_corruption(db: tuple[str, sqlite3.Connection]) -> None:
    path, conn = db
    source, _ = follow(path)
    conn.execute("INSERT INTO t VALUES (9, 1, 2)")
    conn.execute("UPDATE _unbundled_cdc_changes SET after = json_object('id', 9, 'a', 1)")
    with pytest.raises(CorruptionError, match="relation version 1"):
        source.changes(None, 10)
    conn.execute("UPDATE _unbundled_cdc_changes SET after = '[1'")
    with pytest.raises(CorruptionError, match="does not decode"):
        source.changes(None, 10)
    conn.execute("UPDATE _unbundled_cdc_changes SET schema_version = 99")
    with pytest.raises(CorruptionError, match="version 99"):
        source.changes(None, 10)
    source.close()


def test_read_only_file(tmp_path: Path) -> None:
    path = str(tmp_path / "ro.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)")
    with SqliteSource(path, name="app") as source:
        source.install()
    conn.execute("INSERT INTO t VALUES (1, 2, 3)")
    conn.execute("ALTER TABLE t ADD COLUMN c")  # a refresh is due, but cannot be written
    conn.close()
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    if subprocess.run(["chattr", "+i", path], check=False, capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here (needs root on ext4 or xfs)")
    try:
        with SqliteSource(path, name="app") as source:
            with pytest.raises(UsageError, match="read-only") as info:
                source.install()
            assert info.value.details["path"] == path
            (change,) = source.changes(None, 10)
            assert change.after == {"id": 1, "a": 2, "b": 3}
            # The snapshot reads the columns the (stale) triggers capture, under their version.
            _, rows = source.snapshot()
            assert [(c.after, c.relation_version) for c in rows] == [({"id": 1, "a": 2, "b": 3}, 1)]
    finally:
        subprocess.run(["chattr", "-i", path], check=True)
