"""PostgreSQL into the log, against the real server: snapshot, stream, restarts.

Guarantees (docs/explanation/cdc.md, PostgreSQL): 1 the snapshot and the stream meet with
no gap and no duplicate; 2 a change is confirmed to the slot only once stored, and a
restart stores nothing twice, not even rows that share one LSN; 3 a schema change shows
from the next change on, with the relation version it was decoded with; 4 an idle slot
keeps moving; 5 `remove` drops the slot and the publication.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.cdc._pg import PG_URL, PgCase, pg
from unbundled.cdc import CDCProducer
from unbundled.cdc import _pg_admin as admin
from unbundled.cdc._replay import events, key_text, table_state


def source_rows(case: PgCase, table: str) -> dict[str, dict[str, Any]]:
    rows = pg(f"SELECT row_to_json(t)::text FROM {case.table(table)} t")
    out = {}
    for (text,) in rows:
        row = json.loads(text)
        out[key_text({"id": row["id"]})] = row
    return out


def drain(producer: CDCProducer) -> None:
    producer.run(until_idle=True, poll_s=0.5)


def test_snapshot_then_stream_equals_the_table(pg_case: PgCase) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('items')} (id int PRIMARY KEY, name text, n numeric)")
    pg(
        f"INSERT INTO {case.table('items')} "
        "SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 50) g"
    )
    config = case.add(["items"])
    with case.producer(config) as producer:
        drain(producer)
        assert producer.progress.snapshot_done
        pg(f"INSERT INTO {case.table('items')} VALUES (51, 'new', 0.1)")
        pg(f"UPDATE {case.table('items')} SET name = 'changed' WHERE id <= 3")
        pg(f"DELETE FROM {case.table('items')} WHERE id = 10")
        drain(producer)
    ops = [e.op for e in events(case.db.log, case.topic("items"))]
    assert ops[:50] == ["r"] * 50 and sorted(ops[50:]) == ["c", "d", "u", "u", "u"]
    state = table_state(case.db.log, case.topic("items"))
    source = source_rows(case, "items")
    assert state.keys() == source.keys()
    for key, row in source.items():
        assert state[key]["name"] == row["name"]


def test_concurrent_writes_during_the_snapshot_no_gap_no_duplicate(pg_case: PgCase) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('acc')} (id int PRIMARY KEY, balance int)")
    pg(f"INSERT INTO {case.table('acc')} SELECT g, 0 FROM generate_series(1, 2000) g")
    config = case.add(["acc"], batch_max=100)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            pg(f"UPDATE {case.table('acc')} SET balance = balance + 1 WHERE id = {i % 2000 + 1}")
            pg(f"INSERT INTO {case.table('acc')} VALUES ({3000 + i}, {i})")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with case.producer(config) as producer:
            for _ in range(30):
                producer.step(0.2)
            stop.set()
            thread.join()
            drain(producer)
    finally:
        stop.set()
        thread.join()
    found = list(events(case.db.log, case.topic("acc")))
    positions = [e.position for e in found]
    assert len(set(positions)) == len(positions)  # no duplicate
    assert positions == sorted(positions)
    state = table_state(case.db.log, case.topic("acc"))
    source = source_rows(case, "acc")
    assert state == {k: {"id": v["id"], "balance": v["balance"]} for k, v in source.items()}


def test_restart_mid_transaction_stores_rows_sharing_an_lsn_once(pg_case: PgCase) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('bulk')} (id int PRIMARY KEY, v text)")
    config = case.add(["bulk"], batch_max=100)
    with case.producer(config) as producer:
        drain(producer)  # empty snapshot
    # one multi-row INSERT and one COPY-like multi-insert: many rows, one transaction
    pg(f"INSERT INTO {case.table('bulk')} SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    pg(f"COPY {case.table('bulk')} FROM PROGRAM 'seq 1001 1500 | sed s/$/,x/' WITH (FORMAT csv)")
    for _ in range(3):  # three runners, each stopped after a few batches: a crash mid-transaction
        with case.producer(config) as producer:
            for _ in range(3):
                producer.step(1.0)
    with case.producer(config) as producer:
        drain(producer)
    found = list(events(case.db.log, case.topic("bulk")))
    assert sorted(e.value["after"]["id"] for e in found) == list(range(1, 1501))
    assert len({e.position for e in found}) == 1500


def test_schema_change_mid_stream_shows_from_the_next_change(pg_case: PgCase) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('s')} (id int PRIMARY KEY, a text)")
    config = case.add(["s"])
    with case.producer(config) as producer:
        drain(producer)
        pg(f"INSERT INTO {case.table('s')} VALUES (1, 'one')")
        pg(f"ALTER TABLE {case.table('s')} ADD COLUMN b numeric")
        pg(f"INSERT INTO {case.table('s')} VALUES (2, 'two', 12345678901234567890.123456789)")
        pg(f"ALTER TABLE {case.table('s')} DROP COLUMN a")
        pg(f"INSERT INTO {case.table('s')} VALUES (3, 'NaN')")
        drain(producer)
    found = [e.value for e in events(case.db.log, case.topic("s"))]
    assert [v["after"] for v in found] == [
        {"id": 1, "a": "one"},
        {"id": 2, "a": "two", "b": "12345678901234567890.123456789"},
        {"id": 3, "b": "NaN"},
    ]
    versions = [v["source"]["relation_version"] for v in found]
    assert versions[0] < versions[1] < versions[2]


def test_idle_slot_keeps_moving_under_writes_elsewhere(pg_case: PgCase) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('quiet')} (id int PRIMARY KEY)")
    pg(f"CREATE TABLE {case.table('busy')} (id serial PRIMARY KEY, pad text)")
    config = case.add(["quiet"], heartbeat_s=0.2)
    with case.producer(config) as producer:
        drain(producer)
        for _ in range(20):
            pg(
                f"INSERT INTO {case.table('busy')} (pad) "
                "SELECT repeat('x', 1000) FROM generate_series(1, 500)"
            )
            producer.step(0.1)
        for _ in range(10):
            producer.step(0.1)
        info = admin.slot_info(PG_URL, case.connector)
    assert info is not None
    # ~10 MB were written to the busy table; the slot confirmed (nearly) all of it
    assert info.lag_bytes < 1_000_000, info


def test_remove_drops_the_slot_and_the_publication(pg_case: PgCase) -> None:
    from unbundled.cdc import connector_names, remove_connector

    case = pg_case
    pg(f"CREATE TABLE {case.table('r')} (id int PRIMARY KEY)")
    config = case.add(["r"])
    with case.producer(config) as producer:
        drain(producer)
    assert admin.slot_info(PG_URL, case.connector) is not None
    remove_connector(case.db, case.connector)
    assert admin.slot_info(PG_URL, case.connector) is None
    assert not pg(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", admin.object_name(case.connector)
    )
    assert connector_names(case.db) == []
