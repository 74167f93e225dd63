"""What the databases prevent equals what Hermitage published, and each verdict's
evidence is in its transcript.

The expected tables below are the specification. They are Hermitage's results
(github.com/ept/hermitage: the README's summary table, and postgres.md and
mysql.md for the cases the summary folds into one column), written a row per
test and a column per level; ✓ = prevented, ✗ = anomaly (Hermitage's "—").
A cell Hermitage did not run says where its value comes from instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pymysql
import pytest

from tests.consistency.isolation.conftest import Suites
from unbundled.consistency.isolation import TEST_NAMES, Entry, Outcome

Table = dict[str, dict[str, str]]  # row label -> test -> "prevented" | "anomaly"

_MARKS = {"✓": "prevented", "✗": "anomaly"}


def expected(rows: tuple[str, ...], table: str) -> Table:
    """Parse a table written a line per test: the test's name, then a mark per
    row of ``rows``; ``#`` starts a comment (the source of the line)."""
    parsed: Table = {row: {} for row in rows}
    for line in table.splitlines():
        cells = line.split("#", 1)[0].split()
        if not cells or cells[0] not in TEST_NAMES:
            continue  # blank, or the header line
        test, marks = cells[0], cells[1:]
        assert len(marks) == len(rows), f"{test}: {len(marks)} marks for {len(rows)} rows"
        for row, mark in zip(rows, marks, strict=True):
            parsed[row][test] = _MARKS[mark]
    for row in rows:
        assert list(parsed[row]) == list(TEST_NAMES), f"the table must list every test once ({row})"
    return parsed


def measured(outcomes: list[Outcome]) -> Table:
    table: Table = {}
    for o in outcomes:
        table.setdefault(o.row, {})[o.test] = o.outcome
    return table


def find(outcomes: list[Outcome], row: str, test: str) -> Outcome:
    (found,) = [o for o in outcomes if o.row == row and o.test == test]
    return found


# PostgreSQL: the README's three PostgreSQL rows; PMP-write, G-single-predicate,
# G-single-write-predicate and the Fekete case as postgres.md runs them.
POSTGRESQL = expected(
    ("read committed", "repeatable read", "serializable"),
    """
    test                       RC  RR  SER
    G0                         ✓   ✓   ✓    # README
    G1a                        ✓   ✓   ✓    # README
    G1b                        ✓   ✓   ✓    # README
    G1c                        ✓   ✓   ✓    # README
    OTV                        ✓   ✓   ✓    # README
    PMP                        ✗   ✓   ✓    # README
    PMP-write                  ✗   ✓   ✓    # postgres.md: RC deletes nothing, RR aborts (40001)
    P4                         ✗   ✓   ✓    # README
    G-single                   ✗   ✓   ✓    # README
    G-single-predicate         ✗   ✓   ✓    # postgres.md (RR); RC: README's G-single column
    G-single-write-predicate   ✗   ✓   ✓    # postgres.md (RR aborts); RC: as above
    G2-item                    ✗   ✗   ✓    # README
    G2                         ✗   ✗   ✓    # README
    G2-fekete                  ✗   ✗   ✓    # postgres.md (SER aborts); RC, RR: README's G2 column
    """,
)

_RR_OFF = "repeatable read, innodb_snapshot_isolation=OFF"
_RR_ON = "repeatable read, innodb_snapshot_isolation=ON"

# MariaDB: the README's MySQL/InnoDB rows (MariaDB's InnoDB is MySQL's), with
# "R/O" split as mysql.md splits it: repeatable read prevents PMP and G-single
# for reads, not for PMP-write or G-single-write-predicate. Snapshot isolation
# on (RR ON) is what MariaDB documents for innodb_snapshot_isolation=ON (the
# server variables page, MDEV-35124): a write to a row changed after the
# transaction's snapshot fails with error 1020 (ER_CHECKREAD), which makes
# repeatable read snapshot isolation, so its column is PostgreSQL's RR column.
MARIADB = expected(
    ("read uncommitted", "read committed", _RR_OFF, _RR_ON, "serializable"),
    """
    test                       RU  RC  OFF ON  SER
    G0                         ✓   ✓   ✓   ✓   ✓    # README
    G1a                        ✗   ✓   ✓   ✓   ✓    # README
    G1b                        ✗   ✓   ✓   ✓   ✓    # README
    G1c                        ✗   ✓   ✓   ✓   ✓    # README
    OTV                        ✗   ✓   ✓   ✓   ✓    # README
    PMP                        ✗   ✗   ✓   ✓   ✓    # README (RR: "R/O", the read case)
    PMP-write                  ✓   ✗   ✗   ✓   ✓    # mysql.md (RC, RR); RU: see below
    P4                         ✗   ✗   ✗   ✓   ✓    # README; mysql.md (SER: 1213)
    G-single                   ✗   ✗   ✓   ✓   ✓    # README (RR: "R/O")
    G-single-predicate         ✗   ✗   ✓   ✓   ✓    # mysql.md (RR prevents)
    G-single-write-predicate   ✗   ✗   ✗   ✓   ✓    # mysql.md (RR deletes nothing)
    G2-item                    ✗   ✗   ✗   ✗   ✓    # README
    G2                         ✗   ✗   ✗   ✗   ✓    # README
    G2-fekete                  ✗   ✗   ✗   ✗   ✓    # mysql.md (SER: 1213); others: G2
    """,
)
# PMP-write at read uncommitted is not in Hermitage. It is ✓ and says nothing
# good: T2's predicate read already sees T1's uncommitted +10, so its read and
# its delete agree. The dirty read itself is G1a/G1b's ✗ in the same column.

# SQLite: one level, serializable, in every journal mode; serializable
# prevents every anomaly (Hermitage's serializable rows are all ✓).
SQLITE_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")
SQLITE = {
    f"serializable, journal_mode={mode}": dict.fromkeys(TEST_NAMES, "prevented")
    for mode in SQLITE_MODES
}


def test_sqlite_prevents_everything_in_every_journal_mode(sqlite_outcomes: list[Outcome]) -> None:
    assert measured(sqlite_outcomes) == SQLITE
    assert {o.level for o in sqlite_outcomes} == {"serializable"}


@pytest.mark.postgres
def test_postgresql_matches_hermitage(pg_outcomes: list[Outcome]) -> None:
    assert measured(pg_outcomes) == POSTGRESQL


@pytest.mark.mariadb
def test_mariadb_matches_hermitage(mariadb_outcomes: list[Outcome]) -> None:
    assert measured(mariadb_outcomes) == MARIADB


# --- the evidence: blocked steps and aborts in the transcripts --------------------


def step(outcome: Outcome, number: int) -> Entry:
    entry = outcome.transcript[number - 1]
    assert entry.step == number
    return entry


def statement(entry: Entry) -> str:
    # Table names are unique per run; the statement's shape is what matters.
    return re.sub(r"hermitage_\w+", "t", entry.statement)


@pytest.mark.postgres
def test_postgresql_serializable_aborts_write_skew_at_commit(pg_outcomes: list[Outcome]) -> None:
    """Hermitage: both update, T1 commits, T2's COMMIT fails with 40001 (SSI)."""
    o = find(pg_outcomes, "serializable", "G2-item")
    assert (o.outcome, o.how) == ("prevented", "abort")
    commit = step(o, 8)
    assert (commit.connection, statement(commit)) == ("T2", "COMMIT")
    assert commit.error is not None and commit.error.startswith("40001: ")
    assert "read/write dependencies" in commit.error
    assert all(e.error is None and not e.blocked for e in o.transcript[:7])
    assert "T2 aborted (40001" in o.reason
    assert o.to_json()["transcript"][7]["error"] == commit.error


@pytest.mark.postgres
def test_postgresql_repeatable_read_blocks_then_aborts_a_lost_update(
    pg_outcomes: list[Outcome],
) -> None:
    """Hermitage: T2's UPDATE BLOCKS; T1's COMMIT makes it fail (40001)."""
    o = find(pg_outcomes, "repeatable read", "P4")
    update = step(o, 6)
    assert (update.connection, statement(update)) == ("T2", "UPDATE t SET value = 11 WHERE id = 1")
    assert update.blocked and update.completed_after == 7  # released by T1's COMMIT
    assert update.error is not None and update.error.startswith("40001: ")
    assert "concurrent update" in update.error
    assert step(o, 7).error is None  # T1 committed
    assert step(o, 8).skipped  # T2's COMMIT never ran: its transaction was gone
    assert "BLOCKED, then error 40001" in update.describe()


@pytest.mark.postgres
def test_postgresql_read_committed_shows_the_lost_update(pg_outcomes: list[Outcome]) -> None:
    o = find(pg_outcomes, "read committed", "P4")
    assert o.outcome == "anomaly" and o.how == ""
    assert step(o, 3).rows == step(o, 4).rows == ((1, 10),)  # both read 10
    assert step(o, 6).blocked and step(o, 6).rowcount == 1  # then overwrote T1's 11
    assert all(e.error is None for e in o.transcript)


@pytest.mark.mariadb
def test_mariadb_serializable_deadlocks_on_a_lost_update(mariadb_outcomes: list[Outcome]) -> None:
    """Hermitage: shared read locks make both UPDATEs wait on each other; InnoDB
    picks a victim (1213) and the other's blocked UPDATE then goes through."""
    o = find(mariadb_outcomes, "serializable", "P4")
    assert (o.outcome, o.how) == ("prevented", "abort")
    updates = [step(o, 5), step(o, 6)]
    (victim,) = [e for e in updates if e.error is not None]
    (survivor,) = [e for e in updates if e.error is None]
    assert victim.error is not None and victim.error.startswith("1213: Deadlock")
    assert survivor.blocked or victim.blocked
    assert survivor.rowcount == 1
    commits = {e.connection: e for e in (step(o, 7), step(o, 8))}
    assert commits[victim.connection].skipped
    assert commits[survivor.connection].error is None
    assert not commits[survivor.connection].skipped


@pytest.mark.mariadb
def test_mariadb_snapshot_isolation_refuses_a_stale_write(mariadb_outcomes: list[Outcome]) -> None:
    """With innodb_snapshot_isolation=ON, T2's UPDATE of a row T1 changed after
    T2's snapshot waits for T1, then fails with 1020; with it OFF it succeeds."""
    on = find(mariadb_outcomes, _RR_ON, "P4")
    update = step(on, 6)
    assert update.blocked and update.completed_after == 7
    assert update.error is not None and update.error.startswith("1020: Record has changed")
    assert step(on, 8).skipped
    assert "SET SESSION innodb_snapshot_isolation=ON" in step(on, 1).statement

    off = find(mariadb_outcomes, _RR_OFF, "P4")
    assert off.outcome == "anomaly"
    assert step(off, 6).blocked and step(off, 6).error is None
    assert "SET SESSION innodb_snapshot_isolation=OFF" in step(off, 1).statement


@pytest.mark.mariadb
def test_mariadb_serializable_fekete_blocks_two_and_aborts_one(
    mariadb_outcomes: list[Outcome],
) -> None:
    """mysql.md's Fekete case: T2's UPDATE and T3's read block on T1's shared
    locks; T1's UPDATE closes the cycle and a deadlock victim breaks it."""
    o = find(mariadb_outcomes, "serializable", "G2-fekete")
    assert (o.outcome, o.how) == ("prevented", "abort")
    assert step(o, 4).blocked  # T2's UPDATE waits for T1's shared lock on row 2
    assert step(o, 5).queued  # T2's COMMIT waits behind it, as at a terminal
    assert any(e.error is not None and e.error.startswith("1213: ") for e in o.transcript)


def test_sqlite_blocks_a_dirty_write_and_aborts_a_lost_update(
    sqlite_outcomes: list[Outcome],
) -> None:
    for mode in SQLITE_MODES:
        row = f"serializable, journal_mode={mode}"
        g0 = find(sqlite_outcomes, row, "G0")
        write = step(g0, 4)
        assert (write.connection, statement(write)) == (
            "T2",
            "UPDATE test SET value = 12 WHERE id = 1",
        )
        assert write.blocked and write.completed_after == 6, mode  # until T1's COMMIT
        assert g0.how == "block"

        p4 = find(sqlite_outcomes, row, "P4")
        update = step(p4, 6)
        assert update.error is not None and update.error.startswith("SQLITE_BUSY"), mode
        assert step(p4, 8).skipped
        assert p4.how == "abort"


def test_transcripts_show_the_statements_each_database_ran(
    sqlite_outcomes: list[Outcome],
) -> None:
    o = find(sqlite_outcomes, "serializable, journal_mode=wal", "G1a")
    assert [(e.connection, statement(e)) for e in o.transcript] == [
        ("T1", "BEGIN"),
        ("T2", "BEGIN"),
        ("T1", "UPDATE test SET value = 101 WHERE id = 1"),
        ("T2", "SELECT id, value FROM test"),
        ("T1", "ROLLBACK"),
        ("T2", "SELECT id, value FROM test"),
        ("T2", "COMMIT"),
    ]
    assert step(o, 4).rows == step(o, 6).rows == ((1, 10), (2, 20))


# --- nothing left behind ------------------------------------------------------------


def tables_used(outcomes: list[Outcome]) -> set[str]:
    return {
        name
        for o in outcomes
        for e in o.transcript
        for name in re.findall(r"hermitage_\w+", e.statement)
    }


def test_sqlite_leaves_no_files(sqlite_outcomes: list[Outcome], suites: Suites) -> None:
    assert len(sqlite_outcomes) == len(SQLITE_MODES) * len(TEST_NAMES)
    assert sorted(Path(suites.sqlite_dir).iterdir()) == []


@pytest.mark.postgres
def test_postgresql_leaves_no_tables(pg_outcomes: list[Outcome]) -> None:
    names = tables_used(pg_outcomes)
    assert len(names) == len(pg_outcomes)  # one fresh table per (level, test)
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test") as conn:
        left = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name = ANY(%s)",
            (sorted(names),),
        ).fetchall()
    assert left == []


@pytest.mark.mariadb
def test_mariadb_leaves_no_tables(mariadb_outcomes: list[Outcome]) -> None:
    names = tables_used(mariadb_outcomes)
    assert len(names) == len(mariadb_outcomes)
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'test' AND table_name IN %s",
                (tuple(sorted(names)),),
            )
            left = cur.fetchall()
    finally:
        conn.close()
    assert list(left) == []
