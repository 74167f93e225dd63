"""A connector on a SQLite file, end to end: triggers -> change table -> CDCProducer -> log.

Guarantees (docs/explanation/cdc.md, SQLite): the log's topics replay to the source table
after a snapshot and after every later run; a run that a crash cut short mid-snapshot is
replaced by a fresh snapshot whose truncate clears what the first one stored, so rows
deleted in between do not survive in the log; stored changes are pruned from the source's
change table; the CLI adds, runs, reports and removes a connector.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import unbundled
from unbundled.cdc import CDCProducer, ConnectorConfig, add_connector
from unbundled.cdc._replay import events, key_text, table_state
from unbundled.cli import cli
from unbundled.errors import ConflictError, NotFound, UsageError, exit_status

TOPIC = "shop.main.orders"


@pytest.fixture
def source(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, total REAL)")
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?)", [(i, f"item-{i}", i * 1.5) for i in range(50)]
    )
    yield conn
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[unbundled.Database]:
    database = unbundled.open(str(tmp_path / "log.db"), sync="normal")
    yield database
    database.close()


def config(tmp_path: Path, **options: Any) -> ConnectorConfig:
    return ConnectorConfig(
        name="shop", source=f"sqlite:///{tmp_path / 'app.db'}", tables=["orders"], **options
    )


def source_rows(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute("SELECT id, item, total FROM orders").fetchall()
    return {key_text({"id": i}): {"id": i, "item": item, "total": total} for i, item, total in rows}


def write_more(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    conn.execute("UPDATE orders SET total = total + 1 WHERE id % 3 = 0")
    conn.execute("DELETE FROM orders WHERE id % 5 = 0")
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, ?)", [(i, f"new-{i}", 0.1) for i in range(100, 120)]
    )
    conn.execute("COMMIT")


def test_snapshot_and_changes_replay_to_the_source_table(
    tmp_path: Path, db: unbundled.Database, source: sqlite3.Connection
) -> None:
    cfg = add_connector(db, config(tmp_path, batch_max=7))
    with CDCProducer(db, cfg) as producer:
        producer.run(until_idle=True)
        assert table_state(db.log, TOPIC) == source_rows(source)
        write_more(source)
        producer.run(until_idle=True)
    assert table_state(db.log, TOPIC) == source_rows(source)
    ops = [e.op for e in events(db.log, TOPIC)]
    assert ops.count("r") == 50 and "d" in ops and "u" in ops and "c" in ops
    positions = [e.position for e in events(db.log, TOPIC)]
    assert len(set(positions)) == len(positions), "a change stored twice"
    # Stored changes are pruned from the source's change table.
    with CDCProducer(db, cfg) as producer:
        assert producer.run(until_idle=True).changes == 0
        assert producer._source.status()["pending"] == 0


def test_a_snapshot_cut_short_is_replaced_and_deleted_rows_do_not_survive(
    tmp_path: Path, db: unbundled.Database, source: sqlite3.Connection
) -> None:
    cfg = add_connector(db, config(tmp_path, batch_max=10))
    first = CDCProducer(db, cfg)
    first.step()  # stores the first 10 snapshot rows, then "crashes"
    first.close()
    stored = table_state(db.log, TOPIC)
    assert 0 < len(stored) < 50
    source.execute("DELETE FROM orders WHERE id < 5")  # rows the first snapshot stored
    with CDCProducer(db, cfg) as producer:
        producer.run(until_idle=True)
    assert table_state(db.log, TOPIC) == source_rows(source)
    assert "t" in [e.op for e in events(db.log, TOPIC)]


def cdc(log_db: Path, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--db", str(log_db), "cdc", *args], catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def test_the_cli_adds_runs_reports_and_removes(tmp_path: Path, source: sqlite3.Connection) -> None:
    log_db, app_db = tmp_path / "cli.db", tmp_path / "app.db"
    added = cdc(log_db, "add", "shop", "--source", f"sqlite:///{app_db}", "--table", "orders")
    assert "shop" in added.stdout + added.stderr
    ran = json.loads(cdc(log_db, "run", "shop", "--until-idle", "--json").stdout)
    assert ran["changes"] == 50 and ran["snapshot_done"] is True
    write_more(source)
    ran = json.loads(cdc(log_db, "run", "shop", "--until-idle", "--json").stdout)
    assert ran["changes"] > 0 and ran["skipped"] == 0
    (status,) = json.loads(cdc(log_db, "status", "--json").stdout)
    assert status["name"] == "shop" and status["snapshot_done"] is True
    assert status["source_status"]["pending"] == 0
    with unbundled.open(str(log_db)) as db:
        assert table_state(db.log, TOPIC) == source_rows(source)
    # Wrong input: a clear error, no traceback.
    url = f"sqlite:///{app_db}"
    missing = cdc(log_db, "run", "nope", code=exit_status(NotFound("x")))
    assert "no CDC connector named 'nope'" in missing.stderr
    cdc(log_db, "add", "shop", "--source", url, code=exit_status(ConflictError("x")))
    cdc(log_db, "add", "bad name", "--source", url, code=exit_status(UsageError("x")))
    # --tables takes a comma-separated list (the and Debezium's form).
    cdc(log_db, "add", "listed", "--source", url, "--tables", "orders", "--prefix", "l")
    statuses = json.loads(cdc(log_db, "status", "--json").stdout)
    (listed,) = [c for c in statuses if c["name"] == "listed"]
    assert listed["tables"] == ["orders"]
    empty = cdc(log_db, "add", "x", "--source", url, "--tables", "orders,,", code=2)
    assert "an empty name" in empty.stderr
    cdc(log_db, "remove", "listed")
    cdc(log_db, "remove", "shop")
    assert json.loads(cdc(log_db, "status", "--json").stdout) == []
    triggers = source.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    assert triggers == []


def test_an_outbox_table_is_routed_by_aggregate_type(
    tmp_path: Path, db: unbundled.Database, source: sqlite3.Connection
) -> None:
    source.execute(
        "CREATE TABLE outbox (id TEXT PRIMARY KEY, aggregatetype TEXT, aggregateid TEXT, "
        "type TEXT, payload TEXT)"
    )
    cfg = add_connector(db, config(tmp_path, outbox=["outbox"]))
    with CDCProducer(db, cfg) as producer:
        producer.run(until_idle=True)
        # The service's transaction: its state change and the event to publish, together.
        source.execute("BEGIN")
        source.execute("UPDATE orders SET total = 99 WHERE id = 1")
        source.execute(
            "INSERT INTO outbox VALUES ('e1', 'order', 'o-1', 'OrderPaid', '{\"total\": 99}')"
        )
        source.execute("DELETE FROM outbox WHERE id = 'e1'")  # the usual clean-up
        source.execute("COMMIT")
        producer.run(until_idle=True)
    (record,) = db.log.read("outbox.event.order", 0, 0)
    assert (record.key, record.value) == (b"o-1", b'{"total": 99}')
    assert dict(record.headers)["type"] == b"OrderPaid"
    assert "shop.main.outbox" not in db.log.topics()  # the delete was dropped, not stored
    assert table_state(db.log, TOPIC) == source_rows(source)
