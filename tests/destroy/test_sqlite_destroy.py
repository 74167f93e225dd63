"""``destroy`` on SQLite: what only a file needs checking.

Another process holding the store open (refused), then killed with SIGKILL
mid-life, leaving its WAL behind (destroyed, and nothing of it replayed into
a new store at the same path); files that are not ours, or not only ours,
left byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from unbundled import Log, UsageError
from unbundled.backends import destroy

WAIT_S = 30.0  # generous deadline for a subprocess to react; never a timing assertion

HOLDER = """
import sys
from unbundled import Log
log = Log.open(sys.argv[1], sync="off")
log.create_topic("orders")
for n in range(200):
    log.append("orders", b"order-%d" % n)
print("ready", flush=True)
sys.stdin.read()  # hold the store open until killed
"""


def files_of(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_in_another_process_is_refused_and_a_killed_ones_wal_goes_too(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shop.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with pytest.raises(UsageError, match="is open"):
            destroy(str(path), confirm=True)
        assert "shop.db-wal" in files_of(path)  # the holder's appends are in its WAL
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(WAIT_S)
    assert files_of(path) == ["shop.db", "shop.db-shm", "shop.db-wal"]  # a crash leaves all three

    report = destroy(f"sqlite:///{path}", confirm=True)

    assert [item.split(" (")[0] for item in report.items] == [
        f"file {path}",
        f"file {path}-wal",
        f"file {path}-shm",
    ]
    assert files_of(path) == []
    with Log.open(str(path)) as log:  # a new store at the same path starts empty
        assert log.topics() == []


def test_files_that_are_not_ours_are_left_byte_for_byte(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_bytes(b"not a database " * 500)
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    mixed = tmp_path / "mixed.db"
    with Log.open(str(mixed)) as log:
        log.create_topic("orders")
    with sqlite3.connect(mixed) as conn:  # the application's own table, beside ours
        conn.execute("CREATE TABLE orders_by_customer (customer TEXT, n INT)")
    conn.close()

    for path, reason in [
        (text, "not an SQLite database"),
        (foreign, "not an unbundled store"),
        (mixed, "orders_by_customer"),
    ]:
        before = digest(path)
        with pytest.raises(UsageError, match=reason):
            destroy(str(path), confirm=True)
        with pytest.raises(UsageError, match=reason):
            destroy(str(path), dry_run=True)
        assert digest(path) == before
        assert files_of(path) == [path.name]


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    from unbundled import NotFound

    with pytest.raises(NotFound):
        destroy(str(tmp_path), confirm=True)
    assert os.path.isdir(tmp_path)
