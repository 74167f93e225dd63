"""The CDC checker (`unbundled check cdc`): it passes on a log the connector captured, and
finds each kind of damage when the log is tampered with (a crafted record appended) or a
change is lost on the source side (the slot advanced past it, the WAL gap of a connector
that confirms before it stores).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner

import unbundled
from tests.cdc._pg import PgCase, pg
from unbundled.cdc import ConnectorConfig, add_connector
from unbundled.cdc import _pg_admin as admin
from unbundled.cdc._check import check_cdc
from unbundled.cdc._replay import events, key_text
from unbundled.cli import cli


def _setup(case: PgCase) -> None:
    """A captured table with every kind of change, all stored in the log."""
    t = case.table("acc")
    pg(f"CREATE TABLE {t} (id int PRIMARY KEY, v int, note text, amount numeric(12, 4))")
    pg(f"INSERT INTO {t} SELECT g, g, 'n' || g, g / 7.0 FROM generate_series(1, 50) g")
    config = case.add(["acc"], heartbeat_s=0.5)
    with case.producer(config) as producer:
        producer.run(until_idle=True, poll_s=0.3)
    pg(f"INSERT INTO {t} SELECT g, g, NULL, NULL FROM generate_series(51, 80) g")  # one LSN
    pg(f"UPDATE {t} SET v = v * 10, note = 'big' WHERE id % 3 = 0")
    pg(f"DELETE FROM {t} WHERE id % 5 = 0")
    pg(f"UPDATE {t} SET id = id + 1000 WHERE id = 7")  # a key change
    with case.producer(config) as producer:
        producer.run(until_idle=True, poll_s=0.3)


def _append(case: PgCase, key: Any, value: dict[str, Any]) -> None:
    case.db.log.append(case.topic("acc"), json.dumps(value).encode(), key=json.dumps(key).encode())


def _crafted(case: PgCase, key_id: int, position: tuple[int, int], **after: Any) -> None:
    """Copy the last event of ``key_id`` with another position (and after image)."""
    last = [e for e in events(case.db.log, case.topic("acc")) if e.key == {"id": key_id}][-1]
    value = dict(last.value)
    value["source"] = {**value["source"], "sequence": json.dumps([str(p) for p in position])}
    value["op"] = "u"
    value["after"] = {**value["after"], **after}
    _append(case, last.key, value)


def test_passes_on_a_captured_log(pg_case: PgCase) -> None:
    case = pg_case
    _setup(case)
    pg(f"UPDATE {case.table('acc')} SET note = 'late' WHERE id = 1")  # not yet in the log
    result = check_cdc(case.db, case.connector, catch_up=True, wait_s=20)
    assert result.passed, result.to_json()
    assert result.verdict == "pass" and result.exit_status == 0
    (table,) = result.tables
    source_rows = pg(f"SELECT count(*) FROM {case.table('acc')}")[0][0]
    assert table.source_rows == table.log_rows == source_rows == 64
    stored = sum(1 for _ in events(case.db.log, case.topic("acc")))
    assert stored == 50 + 30 + 26 + 16 + 1 + 1  # snapshot + every change, once
    # (other sessions' non-transactional logical messages land in topic "<name>..")
    assert result.events >= stored
    assert not result.duplicates and not result.out_of_order


def test_finds_a_duplicate(pg_case: PgCase) -> None:
    case = pg_case
    _setup(case)
    record = case.db.log.read(case.topic("acc"), 0, 60, records_max=1)[0]
    assert record.value is not None and record.key is not None
    case.db.log.append(case.topic("acc"), record.value, key=record.key)  # stored twice
    result = check_cdc(case.db, case.connector, state=False)
    (dup,) = result.duplicates
    assert dup.earlier_at == f"{case.topic('acc')}[0]@{record.offset}"
    assert result.verdict == "violation" and result.exit_status == 1


def test_finds_a_key_out_of_order(pg_case: PgCase) -> None:
    case = pg_case
    _setup(case)
    first = next(iter(events(case.db.log, case.topic("acc")))).position
    _crafted(case, 3, (first.commit, 1_000_000))  # before the key's later changes
    result = check_cdc(case.db, case.connector, state=False)
    assert not result.duplicates
    (late,) = result.out_of_order
    assert late.key == key_text({"id": 3}) and late.position < late.earlier
    assert not result.passed


def test_finds_a_wrong_value(pg_case: PgCase) -> None:
    case = pg_case
    _setup(case)
    last = max(e.position for e in events(case.db.log, case.topic("acc")))
    _crafted(case, 4, (last.commit, last.index + 1), note="not what the source holds")
    result = check_cdc(case.db, case.connector, catch_up=True, wait_s=20)
    assert not result.duplicates and not result.out_of_order
    (table,) = result.tables
    assert table.differing == [key_text({"id": 4})]
    assert not table.missing and not table.extra
    assert result.verdict == "violation"


def test_finds_a_change_the_slot_skipped(pg_case: PgCase) -> None:
    """The bug CDC users dread: the slot confirmed past a change no sink stored."""
    case = pg_case
    _setup(case)
    pg(f"INSERT INTO {case.table('acc')} VALUES (5000, 1, 'lost', 0)")
    pg(f"DELETE FROM {case.table('acc')} WHERE id = 1")
    slot = admin.object_name(case.connector)
    admin.wait_inactive(admin_url(), case.connector, 10)
    pg("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", slot)
    result = check_cdc(case.db, case.connector, catch_up=True, wait_s=20)
    (table,) = result.tables
    assert table.missing == [key_text({"id": 5000})]
    assert table.extra == [key_text({"id": 1})]
    assert result.verdict == "violation"


def admin_url() -> str:
    from tests.cdc._pg import PG_URL

    return PG_URL


def test_cli_exit_status_and_json(pg_case: PgCase, tmp_path: Path) -> None:
    case = pg_case
    _setup(case)
    case.db.close()
    db = str(tmp_path / "log.db")

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["--db", db, "check", "cdc", *args])
        return result.exit_code, result.stdout

    code, out = run(case.connector, "--catch-up", "--wait", "20", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["verdict"] == "pass" and report["tables"][0]["source_rows"] == 64
    code, out = run(case.connector, "--catch-up")
    assert code == 0 and out.rstrip().endswith("pass"), out
    assert run("no-such-connector")[0] == 3
    assert run(case.connector, "--wait", "-1")[0] == 3
    with unbundled.open(db) as reopened:
        record = reopened.log.read(case.topic("acc"), 0, 10, records_max=1)[0]
        assert record.value is not None
        reopened.log.append(case.topic("acc"), record.value, key=record.key)
    code, out = run(case.connector, "--log-only")
    assert code == 1 and "duplicate" in out and out.rstrip().endswith("violation"), out


def test_sqlite_source(tmp_path: Path) -> None:
    """A SQLite source: (c) against a read transaction on the source file."""
    source = tmp_path / "app.db"
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"n{i}", i / 3) for i in range(40)])
    with unbundled.open(str(tmp_path / "log.db"), sync="normal") as db:
        config = add_connector(db, ConnectorConfig(name="shop", source=str(source)))
        conn.execute("UPDATE item SET name = 'changed' WHERE id < 10")
        conn.execute("DELETE FROM item WHERE id >= 30")
        result = check_cdc(db, config.name, catch_up=True, wait_s=20)
        assert result.passed, result.to_json()
        assert [(t.table, t.source_rows, t.log_rows) for t in result.tables] == [("item", 30, 30)]
        conn.execute("UPDATE item SET price = 0 WHERE id = 1")  # not captured yet ...
        assert check_cdc(db, config.name, wait_s=0).verdict == "unknown"  # ... so undecided
        topic = "shop.main.item"
        last = max(e.position for e in events(db.log, topic))
        crafted = {
            "before": None,
            "after": {"id": 2, "name": "wrong", "price": 1.0},
            "op": "u",
            "source": {"sequence": json.dumps([str(last.commit), str(last.index + 1)])},
        }
        db.log.append(topic, json.dumps(crafted).encode(), key=b'{"id":2}')
        result = check_cdc(db, config.name, catch_up=True, wait_s=20)
        assert result.tables[0].differing == [key_text({"id": 2})]
        assert result.verdict == "violation"
    conn.close()


def test_exact_while_writers_write(pg_case: PgCase) -> None:
    """(c) compares at a temporary slot's consistent point with its exported snapshot:
    writers committing meanwhile never make a correct log look wrong."""
    import threading

    import psycopg

    from tests.cdc._pg import PG_URL

    case = pg_case
    _setup(case)
    stop = threading.Event()
    writes = 0

    def write() -> None:
        nonlocal writes
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            while not stop.is_set():
                writes += 1
                with conn.transaction():
                    conn.execute(
                        f"UPDATE {case.table('acc')} SET v = v + 1 WHERE id = %s", (writes % 90,)
                    )
                    conn.execute(
                        f"INSERT INTO {case.table('acc')} VALUES (%s, 0, 'w', 1)",
                        (10_000 + writes,),
                    )
                    # Last in a transaction, a non-transactional message is reported at the
                    # end of its record: the commit's LSN (the source once placed it at the
                    # commit's first position, and that change was dropped as a replay).
                    conn.execute("SELECT pg_logical_emit_message(false, 'test.nt', 'x')")

    thread = threading.Thread(target=write)
    thread.start()
    try:
        results = [check_cdc(case.db, case.connector, catch_up=True, wait_s=30) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert writes > 20
    for result in results:
        assert result.passed, result.to_json()
    sizes = [r.tables[0].source_rows for r in results]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # three points, rows growing
