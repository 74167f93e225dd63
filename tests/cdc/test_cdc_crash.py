"""SIGKILL the capture process at random moments while writers change rows.

Guarantee (docs/explanation/cdc.md, "Delivery"): whatever the moment of a crash --
during the snapshot, inside a large transaction, between the log's commit and the
source's confirmation -- the log ends with every committed change once, in commit order
per key, and adds up to the source table; the CDC checker passes, and a derived view
(SQLite FTS5) fed from the log equals the source table.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from tests.cdc._pg import PG_URL, PgCase, pg
from unbundled.cdc import CDCProducer, SourcePosition
from unbundled.cdc._check import check_cdc
from unbundled.cdc._replay import events, key_text, table_state
from unbundled.cdc.views import FtsView, follow

ROOT = Path(__file__).resolve().parents[2]
KILLS = 32
BULK_ROWS = 2_000
BULK_MAX = 50


def worker(case: PgCase, path: Path, die_at: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cdc._cdc_worker", str(path), case.connector, str(die_at)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )


def wait_line(proc: subprocess.Popen[bytes], prefix: bytes, timeout_s: float) -> bool:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return False  # it exited
            if line.startswith(prefix):
                return True
    return False


def writer(case: PgCase, stop: threading.Event, seed: int, failed: list[BaseException]) -> None:
    try:
        write(case, stop, seed)
    except BaseException as exc:
        failed.append(exc)
        raise


def write(case: PgCase, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    table = case.table("acc")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        n = bulk = 0
        next_bulk = 0.0
        while not stop.is_set():
            n += 1
            with conn.transaction():
                for _ in range(rng.randint(1, 4)):
                    key = rng.randint(1, 400)
                    op = rng.random()
                    if op < 0.4:
                        conn.execute(
                            f"INSERT INTO {table} VALUES (%s, %s) "
                            "ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                            (key, n),
                        )
                    elif op < 0.8:
                        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (key,))
                    else:
                        conn.execute(f"DELETE FROM {table} WHERE id = %s", (key,))
            # Now and then a large transaction: 2,000 rows, one commit; at most one a
            # second and 50 in all, so the data (and the check's replay of it) stays
            # bounded however long a loaded machine takes over the kills.
            if n % 40 == 0 and bulk < BULK_MAX and time.monotonic() >= next_bulk:
                bulk += 1
                next_bulk = time.monotonic() + 1.0
                base = 10_000 + bulk * BULK_ROWS
                conn.execute(
                    f"INSERT INTO {table} SELECT g, 0 FROM generate_series(%s::int, %s::int) g",
                    (base, base + BULK_ROWS - 1),
                )
            time.sleep(0.002)


def test_sigkill_loses_nothing_and_stores_nothing_twice(pg_case: PgCase, tmp_path: Path) -> None:
    case = pg_case
    pg(f"CREATE TABLE {case.table('acc')} (id int PRIMARY KEY, v int)")
    pg(f"INSERT INTO {case.table('acc')} SELECT g, 0 FROM generate_series(1, 3000) g")
    config = case.add(["acc"], batch_max=200, heartbeat_s=0.5)
    case.db.close()
    path = tmp_path / "log.db"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    stop = threading.Event()
    failed: list[BaseException] = []
    thread = threading.Thread(target=writer, args=(case, stop, rng.randint(0, 1 << 30), failed))
    thread.start()
    moments: dict[str, int] = {"random": 0, "after store, before confirm": 0}
    try:
        for _ in range(KILLS):
            die_at = rng.choice([0, 0, 1, 2, 4])
            proc = worker(case, path, die_at)
            try:
                assert wait_line(proc, b"started", 30.0), "the worker did not start"
                if die_at:
                    while wait_line(proc, b"stored", 30.0):
                        pass
                    proc.wait(timeout=30)
                    moments["after store, before confirm"] += 1
                else:
                    time.sleep(rng.uniform(0.05, 0.6))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    moments["random"] += 1
                assert proc.returncode == -signal.SIGKILL, proc.returncode
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        stop.set()
        thread.join()
    import unbundled

    with unbundled.open(str(path)) as db:
        with CDCProducer(db, config) as producer:
            producer.run(until_idle=True, poll_s=1.0)
        found = list(events(db.log, case.topic("acc")))
        state = table_state(db.log, case.topic("acc"))
        # The shipped checker, (a) once, (b) order, (c) state at a fresh snapshot's point,
        # and a derived view fed from the log, both against the source.
        checked = check_cdc(db, case.connector, catch_up=True, wait_s=60)
        view = FtsView(tmp_path / "fts.db", name="crash_view")
        try:
            follow(db.log, view, [case.topic("acc")], batch=1000)
            view_rows = view.rows(case.topic("acc"))
        finally:
            view.close()
    assert not failed, failed
    assert sum(moments.values()) == KILLS and all(moments.values()), moments
    positions = [e.position for e in found]
    assert len(set(positions)) == len(positions), "a change was stored twice"
    per_key: dict[str, list[SourcePosition]] = {}
    for event in found:
        per_key.setdefault(key_text(event.key), []).append(event.position)
    assert all(p == sorted(p) for p in per_key.values()), "a key's changes are out of order"
    source = {
        key_text({"id": i}): {"id": i, "v": v}
        for i, v in pg(f"SELECT id, v FROM {case.table('acc')}")
    }
    assert state == source
    assert checked.passed, checked.to_json()
    assert checked.tables[0].source_rows == len(source)
    assert view_rows == source
