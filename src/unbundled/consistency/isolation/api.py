"""Run the Hermitage suite against a database and tabulate what it prevents.

>>> outcomes = run_suite("sqlite:///tmp/scratch.db?journal_mode=wal", tests=["G0"])
... # doctest: +SKIP
>>> [(o.level, o.test, o.outcome) for o in outcomes]  # doctest: +SKIP
[('serializable', 'G0', 'prevented')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from ... import limits
from ..._bounds import check_int, check_seconds
from ...errors import UsageError
from ._drivers import MysqlTarget, PostgresTarget, SqliteTarget, Variant, open_target
from ._runner import Entry, Timing, run_script
from ._scripts import SCRIPTS, TEST_NAMES, Script

#: What happened to one anomaly at one level: it was ``prevented`` (refused,
#: blocked, or not seen) or it occurred (``anomaly``).
OutcomeKind = Literal["prevented", "anomaly"]


@dataclass(frozen=True)
class Outcome:
    """What one test did at one isolation level.

    ``level`` is named as the database names it (``read committed``,
    ``repeatable read``, ``serializable``, ...); ``setting`` is the
    configuration that distinguishes rows of one level
    (``journal_mode=wal``, ``innodb_snapshot_isolation=ON``), or ``None``.
    ``outcome`` is ``"prevented"`` (the anomaly did not occur: the database
    blocked, aborted a transaction, or showed a consistent state) or
    ``"anomaly"``; ``reason`` says what the judge saw, and ``transcript``
    every step as it ran.
    """

    database: str
    level: str
    setting: str | None
    test: str
    outcome: OutcomeKind
    reason: str
    transcript: tuple[Entry, ...]

    @property
    def how(self) -> str:
        """How a prevented anomaly was prevented, read off the transcript:
        ``"abort"`` (the database failed a statement of some transaction),
        ``"block"`` (a statement waited for another transaction), or
        ``"read"`` (neither: what the reads returned was already consistent,
        as with a snapshot). Empty for an anomaly."""
        if self.outcome == "anomaly":
            return ""
        if any(entry.error is not None for entry in self.transcript):
            return "abort"
        if any(entry.blocked for entry in self.transcript):
            return "block"
        return "read"

    @property
    def row(self) -> str:
        """The row label in a table: the level, with its setting if any."""
        return self.level if self.setting is None else f"{self.level}, {self.setting}"

    def to_json(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict, its transcript included."""
        return {
            "database": self.database,
            "level": self.level,
            "setting": self.setting,
            "test": self.test,
            "outcome": self.outcome,
            "how": self.how,
            "reason": self.reason,
            "transcript": [entry.to_json() for entry in self.transcript],
        }


Target = SqliteTarget | PostgresTarget | MysqlTarget


def _choose(target: Target, levels: Iterable[str] | None) -> list[Variant]:
    """The variants ``levels`` names. A name matches a level (``repeatable
    read``: every row of it) or one row's whole label (``repeatable read,
    innodb_snapshot_isolation=ON``), ignoring case and surrounding spaces."""
    found = target.variants()
    if levels is None:
        return found
    wanted = {level.strip().lower() for level in levels}
    names = {v.level.lower() for v in found} | {v.label.lower() for v in found}
    unknown = sorted(wanted - names)
    if unknown:
        choices = sorted({v.level for v in found} | {v.label for v in found})
        raise UsageError(
            f"{target.database} has no isolation level {unknown[0]!r}; "
            f"choose from: {', '.join(repr(c) for c in choices)}"
        )
    return [v for v in found if v.level.lower() in wanted or v.label.lower() in wanted]


def _scripts(tests: Iterable[str] | None) -> list[Script]:
    if tests is None:
        return list(SCRIPTS.values())
    by_lower = {name.lower(): script for name, script in SCRIPTS.items()}
    chosen: dict[str, Script] = {}  # a test named twice runs once
    for name in tests:
        script = by_lower.get(name.strip().lower())
        if script is None:
            raise UsageError(f"no test named {name!r}; the tests are: {', '.join(TEST_NAMES)}")
        chosen[script.name] = script
    return [script for name, script in SCRIPTS.items() if name in chosen]


def variants(url: str, levels: Iterable[str] | None = None) -> list[Variant]:
    """The rows :func:`run_suite` would produce for ``url``, with notes on any
    level it merged (e.g. a server without ``innodb_snapshot_isolation``)."""
    return _choose(open_target(url, Timing().lock_timeout_s), levels)


def run_suite(
    url: str,
    levels: Iterable[str] | None = None,
    tests: Iterable[str] | None = None,
    *,
    step_timeout_s: float = 1.0,
    workers: int = 8,
) -> list[Outcome]:
    """Run the Hermitage tests against the database at ``url``; one outcome per
    (level, test), in the order of :func:`variants` then ``TEST_NAMES``.

    URLs: ``sqlite:///dir/file.db`` (tests run in their own temporary files
    in ``dir``; ``?journal_mode=delete,wal`` chooses the journal modes, default
    all six), ``postgresql://user@host/db``, ``mysql://root@127.0.0.1:3306/test``
    or ``mariadb://...``. Each test creates a fresh table (a fresh file for
    SQLite) and drops it afterwards.

    ``step_timeout_s`` is how long a statement may take before it counts as
    blocked; the databases' lock timeouts are five times that. Tests run
    ``workers`` at a time: each has its own table, so they do not interfere.

    Raises :class:`~unbundled.errors.UsageError` for an unknown level or test,
    :class:`~unbundled.errors.Unavailable` when the server cannot be reached,
    :class:`~unbundled.errors.NotSupported` when its driver is not installed,
    and :class:`~unbundled.errors.BackendError` when a statement fails in a
    way that is not the database protecting isolation (a bug, not a result).
    """
    # The databases' lock timeouts are five times the step timeout: in range too.
    check_seconds("step_timeout_s", step_timeout_s, high=limits.wait_s_max / 5, positive=True)
    check_int("workers", workers, 1, limits.isolation_workers_max)
    timing = Timing(
        step_timeout_s=step_timeout_s,
        settle_s=min(0.3, step_timeout_s),
        lock_timeout_s=max(2.0, step_timeout_s * 5),
    )
    scripts = _scripts(tests)  # before connecting: a typo should not wait for a server
    target = open_target(url, timing.lock_timeout_s)
    chosen = _choose(target, levels)
    jobs = [(variant, script) for variant in chosen for script in scripts]

    def run(job: tuple[Variant, Script]) -> Outcome:
        variant, script = job
        fixture = target.prepare(script.name, variant)
        try:
            verdict, transcript = run_script(script, fixture, variant, timing)
        finally:
            fixture.drop()
        return Outcome(
            database=target.database,
            level=variant.level,
            setting=variant.setting,
            test=script.name,
            outcome="anomaly" if verdict.anomaly else "prevented",
            reason=verdict.reason,
            transcript=transcript,
        )

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hermitage") as pool:
        return list(pool.map(run, jobs))


def to_markdown(outcomes: Sequence[Outcome], *, caption: bool = True, how: bool = False) -> str:
    """The outcomes as a Markdown table: rows levels, columns tests.

    ✓ = prevented, ✗ = anomaly (Hermitage's ✓ and —). With ``caption``, a
    line naming the database and its version comes first. With ``how``, a
    prevented cell also says how (:attr:`Outcome.how`): ``✓ abort``.
    """
    if not outcomes:
        return ""
    tests = [t for t in TEST_NAMES if any(o.test == t for o in outcomes)]
    rows: dict[str, dict[str, str]] = {}
    for o in outcomes:
        mark = "✗" if o.outcome == "anomaly" else f"✓ {o.how}" if how else "✓"
        rows.setdefault(o.row, {})[o.test] = mark
    lines = []
    if caption:
        databases = sorted({o.database for o in outcomes})
        lines += [f"**{', '.join(databases)}**", ""]
    lines.append("| level | " + " | ".join(tests) + " |")
    lines.append("|:--|" + "|".join(":-:" for _ in tests) + "|")
    for row, cells in rows.items():
        lines.append(f"| {row} | " + " | ".join(cells.get(t, " ") for t in tests) + " |")
    return "\n".join(lines) + "\n"
