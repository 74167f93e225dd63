"""The SQLite CDC source against concurrent and crashing writers (guarantees 1 and 2 in
cdc/_sqlite_source.py): a snapshot taken while another thread writes, plus the changes
after it, equals the table at the end; a writer SIGKILLed mid-transaction or between
commits leaves exactly the change rows of what it committed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from unbundled.cdc._sqlite_source import SqliteSource

from ._sqlite_replay import Consumer, Key, read_table

ROWS = 200

# The application: random inserts, updates (some of the key) and deletes, in
# transactions of 1..5 statements. Knows nothing of unbundled: the triggers capture.
WRITER = """
import random, sqlite3, sys
seed, path, rows = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
conn = sqlite3.connect(path, isolation_level=None, timeout=30)
committed = 0
while True:
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(rng.randint(1, 5)):
        i = rng.randrange(rows)
        op = rng.random()
        if op < 0.4:
            values = (i, rng.random(), rng.randbytes(8))
            conn.execute("INSERT OR IGNORE INTO t VALUES (?, ?, ?)", values)
        elif op < 0.7:
            conn.execute("UPDATE t SET v = ?, b = ? WHERE id = ?", (rng.random(), None, i))
        elif op < 0.8:
            conn.execute("UPDATE OR IGNORE t SET id = ? WHERE id = ?", (rng.randrange(rows), i))
        else:
            conn.execute("DELETE FROM t WHERE id = ?", (i,))
    if len(sys.argv) > 4:  # hold the transaction open until killed
        print("in transaction", flush=True)
        sys.stdin.read()
    conn.execute("COMMIT")
    committed += 1
    if committed % 20 == 0:
        print(committed, flush=True)
"""


def make_db(tmp_path: Path) -> str:
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL, b BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, i / 7, b"x") for i in range(ROWS)])
    conn.close()
    return path


def table(path: str) -> dict[Key, Any]:
    conn = sqlite3.connect(path)
    try:
        return read_table(conn, "t", ["id"])
    finally:
        conn.close()


def test_snapshot_during_concurrent_writes(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    source = SqliteSource(path, name="app")
    source.install()
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        rng = random.Random(7)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        while not stop.is_set():
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(3):
                    i = rng.randrange(ROWS)
                    conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?, NULL)", (i, rng.random()))
                    conn.execute("DELETE FROM t WHERE id = ?", (rng.randrange(ROWS),))
            commits[0] += 1
        conn.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while commits[0] < 10:
            time.sleep(0.001)
        position, rows = source.snapshot()
        before = commits[0]
        snapshot = []
        for change in rows:
            snapshot.append(change)
            if len(snapshot) % 10 == 0:
                time.sleep(0.002)  # let the writer commit while the snapshot reads
        during = commits[0] - before
        time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert during > 0, "the writer never committed during the snapshot"
    consumer = Consumer(source, (position, snapshot))
    changes = consumer.catch_up(limit=37)
    assert all(c.position > position for c in changes)
    positions = [c.position for c in snapshot + changes]
    assert len(set(positions)) == len(positions)
    assert consumer.tables["t"] == table(path)
    source.close()


def test_writer_killed_mid_transaction_leaves_no_change(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    with SqliteSource(path, name="app") as source:
        source.install()
        consumer = Consumer(source)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, "1", path, str(ROWS), "hold"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline() == "in transaction\n"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        assert source.changes(consumer.position, 10) == []
        assert source.pending().changes == 0
        assert consumer.tables["t"] == table(path)


def test_writer_killed_between_commits(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    rng = random.Random(11)
    with SqliteSource(path, name="app") as source:
        source.install()
        consumer = Consumer(source)
        for round_ in range(5):
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(round_), path, str(ROWS)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert writer.stdout is not None
            writer.stdout.readline()  # 20 commits in
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            consumer.catch_up(limit=50)
            assert consumer.tables["t"] == table(path), f"round {round_}"
            assert source.prune(consumer.position) > 0
            assert source.pending().changes == 0
