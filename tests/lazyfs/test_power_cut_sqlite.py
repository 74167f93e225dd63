"""SQLite and the library on lazyfs: what was committed with a full fsync
survives a power cut; the writer is SIGKILLed first, as a power cut would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import unbundled
from unbundled.testing.child import ChildProcess
from unbundled.testing.lazyfs import LazyFS

from .conftest import MakeLazyFS

ROOT = Path(__file__).resolve().parents[2]


def run_writer(*args: object, until: int) -> list[str]:
    """Start a writer from tests.lazyfs._writers, read its acknowledgements
    until ``until`` (or ``done``), SIGKILL it, and return the ack lines."""
    acks: list[str] = []
    with ChildProcess(["-m", "tests.lazyfs._writers", *map(str, args)], cwd=ROOT) as child:
        while len(acks) < until:
            lines = child.read_lines(5.0)
            if not lines and (child.eof or child.proc.poll() is not None):
                raise AssertionError(f"writer died: {child.stderr_text()}")
            acks += [line for line in lines if line.startswith("ack ")]
            if "done" in lines:
                break
    return acks


def rows(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [n for (n,) in db.execute("SELECT n FROM t ORDER BY n")]
    finally:
        db.close()


@pytest.mark.parametrize(("journal", "synchronous"), [("WAL", "FULL"), ("DELETE", "EXTRA")])
def test_sqlite_synced_commits_survive(
    make_lazyfs: MakeLazyFS, journal: str, synchronous: str
) -> None:
    fs = make_lazyfs(seed=5)
    db = fs.mount / "t.db"
    acks = run_writer("sqlite", db, journal, synchronous, 40, until=40)
    assert len(acks) == 40
    fs.power_cut(tear=True)
    fs.remount()
    assert rows(db) == list(range(40))


def test_sqlite_delete_journal_full_sync_can_lose_the_last_commit(make_lazyfs: MakeLazyFS) -> None:
    """In DELETE mode the commit point is the unlink of the journal, and at
    synchronous=FULL SQLite does not fsync the directory after it (EXTRA
    does: https://sqlite.org/pragma.html#pragma_synchronous). A power cut
    undoes the unlink, the journal is hot again, and the next open rolls the
    last commit back: the database stays intact, one commit short."""
    fs = make_lazyfs(seed=5)
    db = fs.mount / "t.db"
    acks = run_writer("sqlite", db, "DELETE", "FULL", 40, until=40)
    assert len(acks) == 40
    report = fs.power_cut(tear=True)
    assert report.namespace_dropped == 1  # the journal's unlink
    fs.remount()
    assert rows(db) == list(range(39))


def test_sqlite_full_sync_survives_a_reordering_cut_mid_stream(make_lazyfs: MakeLazyFS) -> None:
    """Killed while committing: every acknowledged row is there, at most one
    more (the commit in flight), and the database is intact."""
    fs = make_lazyfs(seed=9)
    db = fs.mount / "t.db"
    acks = run_writer("sqlite", db, "WAL", "FULL", 10_000, until=25)
    report = fs.power_cut(tear=True, reorder=True)
    assert report.dropped > 0, "the cut forgot nothing: the test proves nothing"
    fs.remount()
    found = rows(db)
    assert found[: len(acks)] == list(range(len(acks)))
    assert len(found) <= len(acks) + 1


def test_sqlite_synchronous_off_loses_commits_but_still_opens(lazyfs: LazyFS) -> None:
    """With synchronous=OFF nothing is promised: only that a power cut drops
    writes and that the file still opens (integrity may be lost)."""
    db = lazyfs.mount / "t.db"
    run_writer("sqlite", db, "WAL", "OFF", 20, until=20)
    report = lazyfs.power_cut()
    assert report.dropped > 0
    lazyfs.remount()
    sqlite3.connect(db).close()


def test_log_acknowledged_records_survive_exactly_once(make_lazyfs: MakeLazyFS) -> None:
    fs = make_lazyfs(seed=3)
    path = fs.mount / "x.db"
    acks = run_writer("log", path, 10_000, until=30)
    assert len(acks) >= 30
    report = fs.power_cut(tear=True, reorder=True)
    assert report.dropped > 0, "the cut forgot nothing: the test proves nothing"
    fs.remount()
    with unbundled.open(path, sync="full") as db:
        records = db.log.read("t", 0, 0, records_max=100_000)
    values = [r.value for r in records]
    assert len(values) == len(set(values)), "a record appears twice"
    for line in acks:
        _, n, offset = line.split()
        assert values[int(offset)] == f"record {n}".encode()
    assert len(values) <= len(acks) + 1
