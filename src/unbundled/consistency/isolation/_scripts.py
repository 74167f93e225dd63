"""The Hermitage test cases: scripts of steps, and the judge of each.

Pure data and pure functions, no I/O. Every test starts from the table Hermitage
uses, ``(id int primary key, value int)`` holding ``(1, 10), (2, 20)``; ``{t}`` in
a statement stands for the test's own table. A step names its connection
(``T1``..``T3``); ``BEGIN`` opens a transaction at the level under test (each
database spells that differently, so the runner supplies the statement).

The scripts follow Hermitage's (github.com/ept/hermitage, postgres.md and
mysql.md). Where the two files differ, the MySQL variant is used when it
observes more (it exposes every anomaly the PostgreSQL variant does):
OTV has T3 read the whole table, PMP-write has T2 read before its delete.
P4 and G2-item are judged on the reads as well as the commits, so a database
that lets both transactions commit after reading the same value is caught
whether or not it blocked first.

A judge never looks at timing, only at what each step returned, which
transactions committed, and the table's final state. A transaction that the
database aborted (serialization failure, deadlock victim, lock wait timeout,
SQLite busy) has no committed effects, so an anomaly that needs it to commit is
prevented: that is how PostgreSQL's serializable level prevents write skew.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

StepKind = Literal["begin", "commit", "rollback", "sql"]

#: The rows every test starts from.
INITIAL_ROWS: Mapping[int, int] = {1: 10, 2: 20}


@dataclass(frozen=True)
class Step:
    """One statement of a script, run by one connection."""

    connection: str
    kind: StepKind
    sql: str = ""
    label: str | None = None


def _begin(n: int) -> Step:
    return Step(f"T{n}", "begin")


def _commit(n: int) -> Step:
    return Step(f"T{n}", "commit")


def _rollback(n: int) -> Step:
    return Step(f"T{n}", "rollback")


def _sql(n: int, sql: str, label: str | None = None) -> Step:
    return Step(f"T{n}", "sql", sql, label)


@dataclass(frozen=True)
class Verdict:
    """A judge's decision and the one-line reason for it."""

    anomaly: bool
    reason: str


class Results:
    """What a run observed, as a judge sees it.

    ``rows(label)`` is the ``{id: value}`` a labelled read returned, or ``None``
    when that step failed or was skipped because its transaction had aborted.
    ``committed(conn)`` is true when the connection's ``COMMIT`` succeeded.
    ``finished_before_end(label, conn)`` says whether a step completed while
    the connection's transaction was still open (a dirty write, for G0).
    ``aborts`` maps a connection the database aborted to its error.
    """

    def __init__(
        self,
        reads: Mapping[str, Mapping[int, int] | None],
        rowcounts: Mapping[str, int | None],
        succeeded: Mapping[str, int],
        committed: frozenset[str],
        ended: Mapping[str, int],
        final: Mapping[int, int],
        aborts: Mapping[str, str] | None = None,
    ) -> None:
        # succeeded: label -> index of the last step issued when it completed;
        # ended: connection -> index of the step that ended its transaction.
        self._reads = reads
        self._rowcounts = rowcounts
        self._succeeded = succeeded
        self._committed = committed
        self._ended = ended
        self.final: Mapping[int, int] = final
        self.aborts: Mapping[str, str] = aborts or {}  # connection -> the database's error

    def rows(self, label: str) -> Mapping[int, int] | None:
        return self._reads.get(label)

    def rowcount(self, label: str) -> int | None:
        return self._rowcounts.get(label)

    def ok(self, label: str) -> bool:
        return label in self._succeeded

    def committed(self, *connections: str) -> bool:
        return all(conn in self._committed for conn in connections)

    def finished_before_end(self, label: str, connection: str) -> bool:
        """The labelled step succeeded before ``connection``'s transaction ended."""
        if not self.ok(label):
            return False
        # By script position, not wall-clock order: a statement released by a
        # COMMIT can return before the COMMIT itself reports back.
        ended = self._ended.get(connection)
        return ended is None or self._succeeded[label] < ended


Judge = Callable[[Results], Verdict]


@dataclass(frozen=True)
class Script:
    """One Hermitage test: its name, the anomaly's names, the steps and the judge."""

    name: str
    title: str
    steps: tuple[Step, ...]
    judge: Judge

    @property
    def connections(self) -> tuple[str, ...]:
        return tuple(sorted({step.connection for step in self.steps}))


def _show(rows: Mapping[int, int] | None) -> str:
    if rows is None:
        return "nothing (failed)"
    if not rows:
        return "no rows"
    return ", ".join(f"{k} => {v}" for k, v in sorted(rows.items()))


def _aborted(r: Results, *connections: str) -> Verdict:
    lost = [c for c in connections if not r.committed(c)]
    why = [f"{c} aborted ({r.aborts[c]})" if c in r.aborts else f"{c} did not commit" for c in lost]
    return Verdict(False, "; ".join(why))


# --- G0: write cycles (dirty writes) -------------------------------------------


def _judge_g0(r: Results) -> Verdict:
    if r.finished_before_end("w2", "T1"):
        return Verdict(True, "T2 overwrote row 1 while T1's uncommitted write to it was pending")
    if r.committed("T1", "T2") and dict(r.final) in ({1: 12, 2: 21}, {1: 11, 2: 22}):
        return Verdict(True, f"final state {_show(r.final)} mixes T1's and T2's writes")
    return Verdict(False, f"T2's write waited for T1 to finish; final state {_show(r.final)}")


G0 = Script(
    "G0",
    "Write cycles (dirty writes)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _sql(2, "UPDATE {t} SET value = 12 WHERE id = 1", "w2"),
        _sql(1, "UPDATE {t} SET value = 21 WHERE id = 2"),
        _commit(1),
        _sql(1, "SELECT id, value FROM {t}"),
        _sql(2, "UPDATE {t} SET value = 22 WHERE id = 2"),
        _commit(2),
    ),
    _judge_g0,
)


# --- G1a, G1b, G1c: dirty reads ------------------------------------------------


def _judge_g1a(r: Results) -> Verdict:
    for label in ("r1", "r2"):
        rows = r.rows(label)
        if rows is not None and rows.get(1) == 101:
            return Verdict(True, f"T2 read 1 => 101, written by T1 which rolled back ({label})")
    return Verdict(False, f"T2 read {_show(r.rows('r1'))}, then {_show(r.rows('r2'))}")


G1A = Script(
    "G1a",
    "Aborted reads (dirty reads, cascaded aborts)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "UPDATE {t} SET value = 101 WHERE id = 1"),
        _sql(2, "SELECT id, value FROM {t}", "r1"),
        _rollback(1),
        _sql(2, "SELECT id, value FROM {t}", "r2"),
        _commit(2),
    ),
    _judge_g1a,
)


def _judge_g1b(r: Results) -> Verdict:
    for label in ("r1", "r2"):
        rows = r.rows(label)
        if rows is not None and rows.get(1) == 101:
            return Verdict(True, f"T2 read 1 => 101, an intermediate value of T1 ({label})")
    return Verdict(False, f"T2 read {_show(r.rows('r1'))}, then {_show(r.rows('r2'))}")


G1B = Script(
    "G1b",
    "Intermediate reads (dirty reads)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "UPDATE {t} SET value = 101 WHERE id = 1"),
        _sql(2, "SELECT id, value FROM {t}", "r1"),
        _sql(1, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _commit(1),
        _sql(2, "SELECT id, value FROM {t}", "r2"),
        _commit(2),
    ),
    _judge_g1b,
)


def _judge_g1c(r: Results) -> Verdict:
    r1, r2 = r.rows("r1"), r.rows("r2")
    saw_t2 = r1 is not None and r1.get(2) == 22
    saw_t1 = r2 is not None and r2.get(1) == 11
    if saw_t1 and saw_t2 and r.committed("T1", "T2"):
        return Verdict(True, "T1 read T2's write and T2 read T1's write, and both committed")
    return Verdict(False, f"T1 read {_show(r1)}; T2 read {_show(r2)}")


G1C = Script(
    "G1c",
    "Circular information flow (dirty reads)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _sql(2, "UPDATE {t} SET value = 22 WHERE id = 2"),
        _sql(1, "SELECT id, value FROM {t} WHERE id = 2", "r1"),
        _sql(2, "SELECT id, value FROM {t} WHERE id = 1", "r2"),
        _commit(1),
        _commit(2),
    ),
    _judge_g1c,
)


# --- OTV: observed transaction vanishes ----------------------------------------

_T2_VALUES = {1: 12, 2: 18}  # what T2 writes
_OVERWRITTEN = {1: (10, 11), 2: (20, 19)}  # the versions T2's writes replace


def _judge_otv(r: Results) -> Verdict:
    seen_t2 = False
    for label in ("r1", "r2", "r3"):
        rows = r.rows(label) or {}
        has_t2 = any(rows.get(k) == v for k, v in _T2_VALUES.items())
        has_old = any(rows.get(k) in old for k, old in _OVERWRITTEN.items())
        if has_old and (seen_t2 or has_t2):
            return Verdict(
                True,
                f"T3 observed T2's write, then a version T2 overwrote ({label}: {_show(rows)})",
            )
        seen_t2 = seen_t2 or has_t2
    return Verdict(
        False,
        "T3 read " + "; then ".join(_show(r.rows(label)) for label in ("r1", "r2", "r3")),
    )


OTV = Script(
    "OTV",
    "Observed transaction vanishes",
    (
        _begin(1),
        _begin(2),
        _begin(3),
        _sql(1, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _sql(1, "UPDATE {t} SET value = 19 WHERE id = 2"),
        _sql(2, "UPDATE {t} SET value = 12 WHERE id = 1"),
        _commit(1),
        _sql(3, "SELECT id, value FROM {t}", "r1"),
        _sql(2, "UPDATE {t} SET value = 18 WHERE id = 2"),
        _sql(3, "SELECT id, value FROM {t}", "r2"),
        _commit(2),
        _sql(3, "SELECT id, value FROM {t}", "r3"),
        _commit(3),
    ),
    _judge_otv,
)


# --- PMP: predicate-many-preceders ---------------------------------------------


def _judge_pmp(r: Results) -> Verdict:
    r2 = r.rows("r2")
    if r2 is not None and r2.get(3) == 30:
        return Verdict(True, "T1's second predicate read returned T2's row 3 => 30")
    return Verdict(False, f"T1's second predicate read returned {_show(r2)}")


PMP = Script(
    "PMP",
    "Predicate-many-preceders (read predicate)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE value = 30", "r1"),
        _sql(2, "INSERT INTO {t} (id, value) VALUES (3, 30)"),
        _commit(2),
        _sql(1, "SELECT id, value FROM {t} WHERE value % 3 = 0", "r2"),
        _commit(1),
    ),
    _judge_pmp,
)


def _judge_pmp_write(r: Results) -> Verdict:
    if not r.ok("d") or not r.committed("T2"):
        return _aborted(r, "T2")
    after = r.rows("r1") or {}
    if any(v == 20 for v in after.values()):
        return Verdict(True, f"after deleting value = 20, T2 still read {_show(after)}")
    if r.rowcount("d") == 0:
        return Verdict(True, "T2's delete of value = 20 deleted nothing, yet a row had 20")
    before = r.rows("r0") or {}
    deleted_row_1 = 1 not in after
    if deleted_row_1 and before.get(2) == 20:
        return Verdict(
            True, "T2 read T1's old state (2 => 20), but its delete acted on T1's new state"
        )
    return Verdict(False, f"T2's delete acted on one state; T2 then read {_show(after)}")


PMP_WRITE = Script(
    "PMP-write",
    "Predicate-many-preceders (write predicate)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "UPDATE {t} SET value = value + 10"),
        _sql(2, "SELECT id, value FROM {t} WHERE value = 20", "r0"),
        _sql(2, "DELETE FROM {t} WHERE value = 20", "d"),
        _commit(1),
        _sql(2, "SELECT id, value FROM {t}", "r1"),
        _commit(2),
    ),
    _judge_pmp_write,
)


# --- P4: lost update -----------------------------------------------------------


def _judge_p4(r: Results) -> Verdict:
    r1, r2 = r.rows("r1"), r.rows("r2")
    both_read_10 = r1 is not None and r2 is not None and r1.get(1) == r2.get(1) == 10
    if both_read_10 and r.committed("T1", "T2"):
        return Verdict(True, "both read 1 => 10, both wrote 11 and both committed: one update lost")
    if not r.committed("T1", "T2"):
        return _aborted(r, "T1", "T2")
    return Verdict(False, f"T1 read {_show(r1)}, T2 read {_show(r2)}")


P4 = Script(
    "P4",
    "Lost update",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE id = 1", "r1"),
        _sql(2, "SELECT id, value FROM {t} WHERE id = 1", "r2"),
        _sql(1, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _sql(2, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _commit(1),
        _commit(2),
    ),
    _judge_p4,
)


# --- G-single: read skew -------------------------------------------------------


def _judge_g_single(r: Results) -> Verdict:
    r1, r2 = r.rows("r1"), r.rows("r2")
    if r1 is not None and r2 is not None and r1.get(1) == 10 and r2.get(2) == 18:
        return Verdict(True, "T1 read 1 => 10 from before T2 and 2 => 18 from after T2")
    return Verdict(False, f"T1 read {_show(r1)}, then {_show(r2)}")


G_SINGLE = Script(
    "G-single",
    "Single anti-dependency cycles (read skew)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE id = 1", "r1"),
        _sql(2, "SELECT id, value FROM {t} WHERE id = 1"),
        _sql(2, "SELECT id, value FROM {t} WHERE id = 2"),
        _sql(2, "UPDATE {t} SET value = 12 WHERE id = 1"),
        _sql(2, "UPDATE {t} SET value = 18 WHERE id = 2"),
        _commit(2),
        _sql(1, "SELECT id, value FROM {t} WHERE id = 2", "r2"),
        _commit(1),
    ),
    _judge_g_single,
)


def _judge_g_single_predicate(r: Results) -> Verdict:
    r1, r2 = r.rows("r1"), r.rows("r2")
    if r1 is not None and r2 is not None and r1.get(1) == 10 and r2.get(1) == 12:
        return Verdict(True, "T1's first predicate read saw 1 => 10, its second saw 1 => 12")
    return Verdict(False, f"T1 read {_show(r1)}, then {_show(r2)}")


G_SINGLE_PREDICATE = Script(
    "G-single-predicate",
    "Read skew on predicate reads",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE value % 5 = 0", "r1"),
        _sql(2, "UPDATE {t} SET value = 12 WHERE value = 10"),
        _commit(2),
        _sql(1, "SELECT id, value FROM {t} WHERE value % 3 = 0", "r2"),
        _commit(1),
    ),
    _judge_g_single_predicate,
)


def _judge_g_single_write_predicate(r: Results) -> Verdict:
    if not r.committed("T1", "T2") or not r.ok("d"):
        return _aborted(r, "T1", "T2")
    r1 = r.rows("r1")
    if r1 is not None and r1.get(1) == 10 and r.rowcount("d") == 0:
        return Verdict(
            True,
            "T1 read 1 => 10 from before T2, but its delete of value = 20 saw T2's 2 => 18",
        )
    return Verdict(False, f"T1 read {_show(r1)}; its delete removed {r.rowcount('d')} row(s)")


G_SINGLE_WRITE_PREDICATE = Script(
    "G-single-write-predicate",
    "Read skew on a write predicate",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE id = 1", "r1"),
        _sql(2, "SELECT id, value FROM {t}"),
        _sql(2, "UPDATE {t} SET value = 12 WHERE id = 1"),
        _sql(2, "UPDATE {t} SET value = 18 WHERE id = 2"),
        _commit(2),
        _sql(1, "DELETE FROM {t} WHERE value = 20", "d"),
        _sql(1, "SELECT id, value FROM {t} WHERE id = 2"),
        _commit(1),
    ),
    _judge_g_single_write_predicate,
)


# --- G2-item, G2: write skew ---------------------------------------------------


def _judge_g2_item(r: Results) -> Verdict:
    initial = dict(INITIAL_ROWS)
    r1, r2 = r.rows("r1"), r.rows("r2")
    if r1 == initial and r2 == initial and r.committed("T1", "T2"):
        return Verdict(True, "both read 1 => 10, 2 => 20, wrote disjoint rows and committed")
    if not r.committed("T1", "T2"):
        return _aborted(r, "T1", "T2")
    return Verdict(False, f"T1 read {_show(r1)}, T2 read {_show(r2)}")


G2_ITEM = Script(
    "G2-item",
    "Item anti-dependency cycles (write skew on disjoint read)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE id IN (1, 2)", "r1"),
        _sql(2, "SELECT id, value FROM {t} WHERE id IN (1, 2)", "r2"),
        _sql(1, "UPDATE {t} SET value = 11 WHERE id = 1"),
        _sql(2, "UPDATE {t} SET value = 21 WHERE id = 2"),
        _commit(1),
        _commit(2),
    ),
    _judge_g2_item,
)


def _judge_g2(r: Results) -> Verdict:
    r1, r2 = r.rows("r1"), r.rows("r2")
    if r1 == {} and r2 == {} and r.committed("T1", "T2"):
        return Verdict(
            True, "both found no row with value % 3 = 0, both inserted one, both committed"
        )
    if not r.committed("T1", "T2"):
        return _aborted(r, "T1", "T2")
    return Verdict(False, f"T1 read {_show(r1)}, T2 read {_show(r2)}")


G2 = Script(
    "G2",
    "Anti-dependency cycles (write skew on predicate read)",
    (
        _begin(1),
        _begin(2),
        _sql(1, "SELECT id, value FROM {t} WHERE value % 3 = 0", "r1"),
        _sql(2, "SELECT id, value FROM {t} WHERE value % 3 = 0", "r2"),
        _sql(1, "INSERT INTO {t} (id, value) VALUES (3, 30)"),
        _sql(2, "INSERT INTO {t} (id, value) VALUES (4, 42)"),
        _commit(1),
        _commit(2),
    ),
    _judge_g2,
)


def _judge_g2_fekete(r: Results) -> Verdict:
    r1, r3 = r.rows("r1"), r.rows("r3")
    cycle = (
        r1 is not None and r3 is not None and r1.get(2) == 20 and r3 == {1: 10, 2: 25}
    )  # T1 -rw-> T2 -wr-> T3 -rw-> T1
    if cycle and r.committed("T1", "T2", "T3"):
        return Verdict(True, "T1 read 2 => 20 (before T2), T3 read 2 => 25 and 1 => 10 (before T1)")
    if not r.committed("T1", "T2", "T3"):
        return _aborted(r, "T1", "T2", "T3")
    return Verdict(False, f"T1 read {_show(r1)}, T3 read {_show(r3)}")


G2_FEKETE = Script(
    "G2-fekete",
    "Anti-dependency cycle of three (Fekete et al.'s read-only anomaly)",
    (
        _begin(1),
        _sql(1, "SELECT id, value FROM {t}", "r1"),
        _begin(2),
        _sql(2, "UPDATE {t} SET value = value + 5 WHERE id = 2"),
        _commit(2),
        _begin(3),
        _sql(3, "SELECT id, value FROM {t}", "r3"),
        _commit(3),
        _sql(1, "UPDATE {t} SET value = 0 WHERE id = 1"),
        _commit(1),
    ),
    _judge_g2_fekete,
)


#: Every test, in Hermitage's order, by name.
SCRIPTS: Mapping[str, Script] = {
    s.name: s
    for s in (
        G0,
        G1A,
        G1B,
        G1C,
        OTV,
        PMP,
        PMP_WRITE,
        P4,
        G_SINGLE,
        G_SINGLE_PREDICATE,
        G_SINGLE_WRITE_PREDICATE,
        G2_ITEM,
        G2,
        G2_FEKETE,
    )
}

#: Hermitage's test cases, by name, in the order :func:`run_suite` runs them.
TEST_NAMES: tuple[str, ...] = tuple(SCRIPTS)
