"""Incremental snapshots of a PostgreSQL table while streaming (DBLog watermarks).

Guarantees (docs/explanation/cdc.md, incremental snapshots):
1 an incremental snapshot taken while writers insert, update and delete the table leaves
  a log whose events after the request alone add up to the table (no stale chunk row
  overwrites a newer streamed change, no deleted row comes back);
2 a runner closed, or SIGKILLed, after some chunks resumes after the last stored chunk:
  the table's rows are read once in all, not again from the first key;
3 bad requests are typed errors naming the table or connector: unknown (NotFound), not
  captured (UsageError), no primary key (NotSupported), a SQLite connector
  (NotSupported); a chunk size out of 1..100000 is a UsageError;
4 `cdc snapshot NAME TABLE` queues the request and `cdc status` shows it under way;
5 an 'execute-snapshot' row inserted into the signal table triggers the snapshot, once
  (a malformed signal, or a row of another type, is ignored);
7 a non-transactional logical message streamed just before a commit (same LSN) costs
  that commit none of its rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.cdc._pg import PG_URL, PgCase, pg
from unbundled.cdc import CDCProducer, ConnectorConfig, request_snapshot, snapshot_status
from unbundled.cdc import _incremental as incremental
from unbundled.cdc import _pg_admin as admin
from unbundled.cdc._change import SourcePosition
from unbundled.cdc._replay import events, key_text
from unbundled.cli import cli
from unbundled.errors import NotFound, NotSupported, UsageError

ROOT = Path(__file__).resolve().parents[2]


def source_rows(case: PgCase, table: str) -> dict[str, dict[str, Any]]:
    rows = pg(f"SELECT row_to_json(t)::text FROM {case.table(table)} t")
    out = {}
    for (text,) in rows:
        row = json.loads(text)
        out[key_text({"id": row["id"]})] = row
    return out


def state_after(case: PgCase, table: str, after: SourcePosition | None) -> dict[str, Any]:
    """What the topic's events after ``after`` add up to (the initial snapshot left out),
    keeping a row only once an event says what it is."""
    rows: dict[str, Any] = {}
    for event in events(case.db.log, case.topic(table)):
        if after is not None and event.position <= after:
            continue
        if event.op == "d":
            rows.pop(key_text(event.key), None)
        elif event.op == "t":
            rows.clear()
        elif event.op in ("c", "u", "r"):
            rows[key_text(event.key)] = event.value["after"]
    return rows


def incremental_reads(case: PgCase, table: str) -> list[Any]:
    """The keys of every incremental snapshot event, in log order."""
    return [
        event.key
        for event in events(case.db.log, case.topic(table))
        if event.value["source"]["snapshot"] == "incremental"
    ]


def run_until(producer: CDCProducer, done: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the incremental snapshot did not finish"
        producer.step(0.2)


def drain(producer: CDCProducer) -> None:
    producer.run(until_idle=True, poll_s=0.3)


def catch_up(case: PgCase, producer: CDCProducer) -> None:
    """Store every change committed so far: a last row (id 0) is written, and the stream
    is read until it is stored (an idle poll alone may end before a lagging stream)."""
    [(text,)] = pg("SELECT pg_current_wal_insert_lsn()::text")
    target = admin.lsn_int(text)  # the last row's commit comes after it
    assert target is not None
    pg(f"INSERT INTO {case.table('acc')} VALUES (0, 0, 'end')")

    def stored() -> bool:
        position = producer.progress.position
        return position is not None and position.commit >= target

    run_until(producer, stored)


def table_with_rows(case: PgCase, n: int) -> None:
    pg(f"CREATE TABLE {case.table('acc')} (id int PRIMARY KEY, v int, note text)")
    pg(f"INSERT INTO {case.table('acc')} SELECT g, 0, 'row ' || g FROM generate_series(1, {n}) g")


def write_randomly(case: PgCase, stop: threading.Event, seed: int, failed: list[Any]) -> None:
    rng = random.Random(seed)
    table = case.table("acc")
    try:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                with conn.transaction():
                    for _ in range(rng.randint(1, 3)):
                        key, op = rng.randint(1, 2500), rng.random()
                        if op < 0.35:
                            conn.execute(
                                f"INSERT INTO {table} VALUES (%s, %s, 'w') "
                                "ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                                (key, n),
                            )
                        elif op < 0.75:
                            conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (key,))
                        else:
                            conn.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
                time.sleep(0.001)
    except BaseException as exc:
        failed.append(exc)
        raise


def test_concurrent_writers_the_log_adds_up_to_the_table(pg_case: PgCase) -> None:
    case = pg_case
    table_with_rows(case, 2000)
    config = case.add(["acc"], snapshot_chunk=100, heartbeat_s=0.5)
    seed = int.from_bytes(os.urandom(4), "big")
    with case.producer(config) as producer:
        drain(producer)
        before = producer.progress.position
        stop, failed = threading.Event(), list[BaseException]()
        thread = threading.Thread(target=write_randomly, args=(case, stop, seed, failed))
        thread.start()
        try:
            incremental.request_snapshot(case.db, config, [f"{case.schema}.acc"])
            run_until(producer, lambda: incremental.status(case.db, case.connector) is None)
        finally:
            stop.set()
            thread.join()
        assert not failed
        catch_up(case, producer)
    reads = incremental_reads(case, "acc")
    # Keys streamed inside a chunk's window are left out of it: most are still read.
    assert 1000 < len(reads) <= 2500, (seed, len(reads))
    assert len({key_text(k) for k in reads}) == len(reads), "a row was read twice"
    assert state_after(case, "acc", before) == source_rows(case, "acc"), seed


def test_closed_after_some_chunks_resumes_after_the_last_stored_chunk(pg_case: PgCase) -> None:
    case = pg_case
    table_with_rows(case, 1500)
    config = case.add(["acc"], snapshot_chunk=100)
    with case.producer(config) as producer:
        drain(producer)
        before = producer.progress.position
        assert request_snapshot(case.db, case.connector, [f"{case.schema}.acc"]) == [0]
        run_until(producer, lambda: producer.progress.incremental_rows >= 500)
    stopped = snapshot_status(case.db, case.connector)
    assert stopped is not None and stopped["rows"] >= 500 and stopped["chunks"] >= 5
    first = len(incremental_reads(case, "acc"))
    assert first == stopped["rows"]
    pg(f"UPDATE {case.table('acc')} SET v = -1 WHERE id IN (1, 1400)")
    pg(f"DELETE FROM {case.table('acc')} WHERE id IN (2, 1401)")
    with case.producer(config) as producer:
        run_until(producer, lambda: incremental.status(case.db, case.connector) is None)
        catch_up(case, producer)
    reads = incremental_reads(case, "acc")
    # Each row read once in all: the second runner began after the stored chunk's key.
    assert sorted(k["id"] for k in reads) == [i for i in range(1, 1501) if i != 1401]
    assert reads[first]["id"] == reads[first - 1]["id"] + 1
    assert state_after(case, "acc", before) == source_rows(case, "acc")


def test_sigkill_mid_snapshot_resumes_from_the_stored_chunk(
    pg_case: PgCase, tmp_path: Path
) -> None:
    case = pg_case
    table_with_rows(case, 2000)
    config = case.add(["acc"], snapshot_chunk=100, heartbeat_s=0.5)
    with case.producer(config) as producer:
        drain(producer)
        before = producer.progress.position
    incremental.request_snapshot(case.db, config, [f"{case.schema}.acc"])
    case.db.close()
    # The worker dies by SIGKILL at its 6th store: right after the log transaction that
    # holds a chunk and its progress committed, before the slot is told.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cdc._cdc_worker", str(tmp_path / "log.db"), config.name, "6"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    import unbundled

    case.db = unbundled.open(str(tmp_path / "log.db"), sync="normal")
    try:
        resume_after_kill(case, config, before)
    finally:
        case.db.close()


def resume_after_kill(case: PgCase, config: ConnectorConfig, before: SourcePosition | None) -> None:
    stopped = incremental.status(case.db, case.connector)
    assert stopped is not None and stopped["chunks"] >= 1
    first = len(incremental_reads(case, "acc"))
    assert first == stopped["rows"] > 0
    with CDCProducer(case.db, config) as producer:
        run_until(producer, lambda: incremental.status(case.db, case.connector) is None)
        catch_up(case, producer)
    reads = incremental_reads(case, "acc")
    assert sorted(k["id"] for k in reads) == list(range(1, 2001))  # none read twice
    assert state_after(case, "acc", before) == source_rows(case, "acc")


def test_bad_requests_are_typed_errors(pg_case: PgCase, tmp_path: Path) -> None:
    case = pg_case
    table_with_rows(case, 3)
    pg(f"CREATE TABLE {case.table('nopk')} (v int)")
    pg(f"CREATE TABLE {case.table('other')} (id int PRIMARY KEY)")
    config = case.add(["acc", "nopk"])
    with pytest.raises(NotFound, match="nosuch"):
        incremental.request_snapshot(case.db, config, [f"{case.schema}.nosuch"])
    with pytest.raises(UsageError, match="not captured"):
        incremental.request_snapshot(case.db, config, [f"{case.schema}.other"])
    with pytest.raises(NotSupported, match=r"nopk.*no primary key"):
        incremental.request_snapshot(case.db, config, [f"{case.schema}.nopk"])
    with pytest.raises(UsageError, match="at least one"):
        incremental.request_snapshot(case.db, config, [])
    assert incremental.status(case.db, case.connector) is None  # nothing was queued
    with pytest.raises(NotFound, match="nobody"):
        request_snapshot(case.db, "nobody", [f"{case.schema}.acc"])
    with pytest.raises(UsageError, match="snapshot_chunk"):
        case.config(["acc"], snapshot_chunk=100_001).checked()
    with pytest.raises(UsageError, match="snapshot_chunk"):
        case.config(["acc"], snapshot_chunk=0).checked()
    lite = ConnectorConfig(name="lite", source=str(tmp_path / "app.db"))
    with pytest.raises(NotSupported, match="PostgreSQL"):
        incremental.request_snapshot(case.db, lite, ["main.t"])


def test_cli_snapshot_queues_and_status_shows_it(pg_case: PgCase, tmp_path: Path) -> None:
    case = pg_case
    table_with_rows(case, 300)
    config = case.add(["acc"], snapshot_chunk=50)
    with case.producer(config) as producer:
        drain(producer)
    path = str(tmp_path / "log.db")
    runner = CliRunner()
    table = f"{case.schema}.acc"
    got = runner.invoke(cli, ["--db", path, "cdc", "snapshot", case.connector, table, "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["queued"] == [{"table": table, "seq": 0}]
    got = runner.invoke(cli, ["--db", path, "cdc", "status", case.connector, "--json"])
    assert got.exit_code == 0, got.output
    [row] = json.loads(got.output)
    assert row["incremental"] == {"table": table, "rows": 0, "chunks": 0, "waiting": []}
    got = runner.invoke(cli, ["--db", path, "cdc", "snapshot", case.connector, "public.nosuch"])
    assert got.exit_code != 0 and "nosuch" in got.output
    got = runner.invoke(cli, ["--db", path, "cdc", "run", case.connector, "--until-idle"])
    assert got.exit_code == 0, got.output
    assert len(incremental_reads(case, "acc")) == 300
    got = runner.invoke(cli, ["--db", path, "cdc", "status", case.connector, "--json"])
    assert json.loads(got.output)[0]["incremental"] is None


def test_a_signal_row_triggers_the_snapshot_once(pg_case: PgCase) -> None:
    case = pg_case
    table_with_rows(case, 120)
    pg(f"CREATE TABLE {case.table('signals')} (id text PRIMARY KEY, type text, data text)")
    config = case.add(["acc"], snapshot_chunk=50, signal_table=f"{case.schema}.signals")
    with case.producer(config) as producer:
        drain(producer)
        data = json.dumps({"data-collections": [f"{case.schema}.acc"]})
        pg(f"INSERT INTO {case.table('signals')} VALUES ('s1', 'execute-snapshot', %s)", data)
        pg(f"INSERT INTO {case.table('signals')} VALUES ('s2', 'execute-snapshot', 'not json')")
        pg(f"INSERT INTO {case.table('signals')} VALUES ('s3', 'log', '{{}}')")
        catch_up(case, producer)  # the signals are stored (and the row id 0 written)
        run_until(producer, lambda: incremental.status(case.db, case.connector) is None)
    reads = incremental_reads(case, "acc")
    assert sorted(k["id"] for k in reads) == list(range(121))
    requests, _ = incremental.read_requests(case.db, case.connector)
    assert requests["next_seq"] == 1  # one request: the bad signal and the other type ignored


def test_a_message_just_before_a_commit_loses_no_row(pg_case: PgCase) -> None:
    # A non-transactional message written inside a transaction is streamed first, with
    # the LSN where the transaction's commit record begins (the watermarks' case too).
    case = pg_case
    table_with_rows(case, 1)
    config = case.add(["acc"])
    with case.producer(config) as producer:
        drain(producer)
        with psycopg.connect(PG_URL, autocommit=False) as conn:
            conn.execute(f"INSERT INTO {case.table('acc')} VALUES (7, 7, 'seven')")
            conn.execute("SELECT pg_logical_emit_message(false, 'note', 'hello')")
            conn.commit()
        catch_up(case, producer)
    ops = [(e.op, e.key) for e in events(case.db.log, case.topic("acc"))]
    assert ("c", {"id": 7}) in ops
    assert state_after(case, "acc", None) == source_rows(case, "acc")


def test_composite_keys_and_two_tables_in_one_request(pg_case: PgCase) -> None:
    case = pg_case
    table_with_rows(case, 30)
    pg(
        f"CREATE TABLE {case.table('ev')} (tenant text, at timestamptz, n numeric, "
        "PRIMARY KEY (tenant, at))"
    )
    pg(
        f"INSERT INTO {case.table('ev')} SELECT t, timestamptz '2026-01-01 00:00+00' + "
        "g * interval '1 minute', g / 3.0 FROM unnest(array['b', 'a', 'c c', 'Z']) t, "
        "generate_series(1, 25) g"
    )
    config = case.add(["acc", "ev"], snapshot_chunk=7)
    with case.producer(config) as producer:
        drain(producer)
        before = producer.progress.position
        request_snapshot(case.db, case.connector, [f"{case.schema}.ev", f"{case.schema}.acc"])
        status = snapshot_status(case.db, case.connector)
        assert status is not None and status["table"] == f"{case.schema}.ev"
        assert status["waiting"] == [f"{case.schema}.acc"]
        # Changes while the chunks are read, to keys in and out of the chunks read so far.
        producer.step(0.2)
        producer.step(0.2)
        pg(f"UPDATE {case.table('ev')} SET n = -1 WHERE tenant IN ('a', 'Z')")
        pg(f"DELETE FROM {case.table('ev')} WHERE tenant = 'c c' AND n > 5")
        run_until(producer, lambda: snapshot_status(case.db, case.connector) is None)
        catch_up(case, producer)
    assert before is not None
    ev = [e for e in events(case.db.log, case.topic("ev")) if e.position > before]
    keys = [key_text(e.key) for e in ev if e.value["source"]["snapshot"] == "incremental"]
    assert len(keys) == len(set(keys)) and len(keys) <= 100
    rows: dict[str, Any] = {}
    for event in ev:
        if event.op == "d":
            rows.pop(key_text(event.key), None)
        else:
            rows[key_text(event.key)] = event.value["after"]["n"]
    want = pg(
        f"SELECT json_build_object('tenant', tenant, 'at', at)::text, n::text "
        f"FROM {case.table('ev')}"
    )
    assert len(rows) == len(want) == 100 - 10
    assert sorted(rows.values()) == sorted(n for _, n in want)
    assert len(incremental_reads(case, "acc")) == 30


def test_the_slot_keeps_moving_after_an_incremental_snapshot(pg_case: PgCase) -> None:
    # The last chunk's select finds nothing: its watermark transaction holds nothing to
    # store, and must not hold back the confirmations that keep an idle slot moving.
    case = pg_case
    table_with_rows(case, 20)
    config = case.add(["acc"], snapshot_chunk=8, heartbeat_s=0.2)
    with case.producer(config) as producer:
        drain(producer)
        request_snapshot(case.db, case.connector, [f"{case.schema}.acc"])
        run_until(producer, lambda: snapshot_status(case.db, case.connector) is None)
        [(text,)] = pg("SELECT pg_current_wal_insert_lsn()::text")
        done_at = admin.lsn_int(text)
        assert done_at is not None

        def confirmed() -> bool:
            info = admin.slot_info(PG_URL, case.connector)
            flushed = None if info is None else info.confirmed_flush_lsn
            return flushed is not None and flushed >= done_at

        run_until(producer, confirmed, timeout_s=20.0)
