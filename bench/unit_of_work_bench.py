"""The unit-of-work benchmarks (issue 10): one transaction across the event
store, the log and idempotency keys, side by side with the event store alone
and with ``eventsourcing`` plus an outbox in a second commit; and the log
beside NATS JetStream.

    .venv/bin/python bench/run.py --only unit            # the usual way (make bench)
    bench/.venv/bin/python bench/unit_of_work_bench.py --quick   # directly, in bench/.venv

Like ``bench/eventstore_bench.py`` it runs in ``bench/.venv`` (the
competitor lives only there; ``bench/bench_venv.py``); repetitions interleave
the lines, each on a fresh file, schema or stream. The functions take their
sizes as arguments and accept ``rival=None`` and ``postgres=False`` /
``nats=False``, so the smoke test runs them tiny, without the competitor.
Where the log misses its target against NATS, and for the unit of work
(which misses its floor against the event store alone), one run of each is
profiled (``bench/writer_profile.py``) and the page shows where a commit
cycle of the SQLite writer goes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

from bench import nats_side  # noqa: E402
from bench.eventstore_bench import (  # noqa: E402
    PG_HOST,
    PG_PORT,
    load_rival,
    ours_tasks,
    postgres_skip_reason,
)
from bench.log_bench import Floor, _log_tasks, bench_fsync, run_threads, scratch_dir  # noqa: E402
from bench.unit_least import least_work  # noqa: E402
from bench.unit_of_work_report import Line, Versus  # noqa: E402
from bench.unit_workload import VALUE, profile_log, profile_units, units  # noqa: E402

RESULTS = REPO / "bench" / "results" / "unit-of-work.md"
PG_DB = "test"


@dataclass(frozen=True)
class Sizes:
    """How much work each case does (per task or thread); ``--quick`` shrinks it."""

    repeats: int
    writers: int
    units: int  # transactions per task, SQLite
    appends: int  # AsyncEventStore.append per task (baseline A), SQLite
    rival: int  # eventsourcing commands per thread (save + outbox), SQLite
    pg_units: int
    pg_appends: int
    pg_rival: int
    log: int  # AsyncLog.append per task
    nats: int  # JetStream publishes per task
    profile_units: int  # per task, in the profiled runs
    profile_log: int
    fsync_seconds: float


FULL = Sizes(
    repeats=5,
    writers=64,
    units=100,
    appends=500,
    rival=30,
    pg_units=40,
    pg_appends=300,
    pg_rival=15,
    log=1_000,
    nats=300,
    profile_units=100,
    profile_log=1_000,
    fsync_seconds=1.0,
)
QUICK = Sizes(
    repeats=2,
    writers=64,
    units=5,
    appends=20,
    rival=3,
    pg_units=3,
    pg_appends=10,
    pg_rival=2,
    log=40,
    nats=20,
    profile_units=5,
    profile_log=40,
    fsync_seconds=0.2,
)


# --- 1. SQLite -------------------------------------------------------------------------


def _rival_line(case: str, rival: Any, where: str, w: int, per: int, samples: list[float]) -> Line:
    return Line(
        case,
        f"B: eventsourcing {rival.VERSION}: Application.save + outbox INSERT in its own "
        f"commit, {w} threads ({where})",
        "commands",
        tuple(samples),
        "baseline",
        note=f"{w} x {per} commands; 2 commits each",
    )


def _unit_lines(
    case: str,
    where: str,
    sizes: Sizes,
    per_units: int,
    per_appends: int,
    samples: dict[str, list[float]],
    extra: dict[str, list[float]],
    rival_line: Line | None,
    what: str,
) -> list[Line]:
    w = sizes.writers
    a = Line(
        case,
        f"A: AsyncEventStore.append alone, {w} asyncio tasks ({where})",
        "events",
        tuple(samples["append"]),
        "baseline",
        note=f"{w} x {per_appends} events"
        + (f"; {statistics.median(extra['append']):.1f} events/commit" if extra["append"] else ""),
    )
    lines = [a] + ([rival_line] if rival_line is not None else [])
    floors = [Versus("A", a.rate, Floor(ratio_min=0.7))]
    if rival_line is not None:
        floors.append(Versus("B", rival_line.rate, Floor(ratio_min=15)))
    context = tuple(Versus(v.label, v.rate) for v in floors)
    per_commit = extra["units"]
    note = f"{w} x {per_units} transactions; claims before the timed region"
    if extra["claims"]:
        note += f" (they ran at {statistics.median(extra['claims']):,.0f} claims/s)"
    if per_commit and any(per_commit):
        note += f"; {statistics.median(per_commit):.1f} transactions/commit"
    lines.append(
        Line(
            f"{case}a",
            f"unit of work ({what}), {w} asyncio tasks ({where})",
            "txns",
            tuple(samples["units"]),
            "measured",
            tuple(floors),
            note,
        )
    )
    lines.append(
        Line(
            f"{case}b",
            f"the same, each task claiming its key first (attempt + transaction) ({where})",
            "txns",
            tuple(samples["claimed"]),
            "context",
            context,
            f"{w} x {per_units} claims + transactions; context: a handler's two round trips",
        )
    )
    return lines


def _least_lines(
    samples: dict[str, list[float]], extra: dict[str, list[float]], w: int, per: int
) -> list[Line]:
    """The least work: the rows of A and of 1a written by raw sqlite3 (``bench/unit_least.py``)."""
    group = statistics.median(extra["units"])
    least_a = Line(
        "1L",
        "least work: A's rows (events) by raw sqlite3, one thread (SQLite)",
        "events",
        tuple(samples["least_a"]),
        "baseline",
        note=f"{w * per:,} events, {group:.0f} to a commit: SQLite's own cost of A",
    )
    least_unit = Line(
        "1L",
        "least work: 1a's rows (event + outbox record + idempotency result) by raw "
        "sqlite3, one thread (SQLite)",
        "txns",
        tuple(samples["least_unit"]),
        "context",
        (Versus("least A", least_a.rate),),
        f"{w * per:,} transactions, {group:.0f} to a commit: the ratio is the SQL's own "
        "share of 1a's ratio to A",
    )
    return [least_a, least_unit]


def bench_sqlite(parent: Path | None, sizes: Sizes, rival: Any) -> list[Line]:
    """Case 1: the unit of work on SQLite vs A (the event store alone) and B."""
    w = sizes.writers
    samples: dict[str, list[float]] = {
        k: [] for k in ("units", "claimed", "append", "rival", "least_a", "least_unit")
    }
    extra: dict[str, list[float]] = {"units": [], "claims": [], "append": []}
    with scratch_dir(parent, "unit") as d:
        for rep in range(sizes.repeats):
            run = units(str(d / f"unit-{rep}.db"), w, sizes.units, log=True, claim_inside=False)
            samples["units"].append(run.rate)
            extra["units"].append(run.per_commit)
            extra["claims"].append(run.claim_rate)
            rate, per_commit = ours_tasks(str(d / f"append-{rep}.db"), w, sizes.appends)
            samples["append"].append(rate)
            extra["append"].append(per_commit)
            run = units(str(d / f"claimed-{rep}.db"), w, sizes.units, log=True, claim_inside=True)
            samples["claimed"].append(run.rate)
            # The same rows by raw sqlite3, grouped as the unit of work's commits were.
            group = max(1, round(extra["units"][-1]))
            for key, unit in (("least_a", False), ("least_unit", True)):
                path = d / f"{key}-{rep}.db"
                samples[key].append(least_work(path, w, sizes.units, group, unit=unit))
            if rival is None:
                continue
            app = rival.sqlite_app(d / f"es-{rep}.db")
            try:
                rival.create_outbox(app, "sqlite")
                samples["rival"].append(
                    rival.saves_with_outbox(app, w, sizes.rival, run_threads, "sqlite", VALUE)
                )
            finally:
                rival.close(app)
    base = _rival_line("1", rival, "SQLite", w, sizes.rival, samples["rival"]) if rival else None
    lines = _unit_lines(
        "1",
        "SQLite",
        sizes,
        sizes.units,
        sizes.appends,
        samples,
        extra,
        base,
        "event + outbox record + idempotency result",
    )
    return lines + _least_lines(samples, extra, w, sizes.units)


# --- 2. PostgreSQL ---------------------------------------------------------------------


def _pg(sql: str) -> None:
    psycopg: Any = importlib.import_module("psycopg")
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname=PG_DB, autocommit=True
    ) as conn:
        conn.execute(sql)


def _pg_schema(label: str) -> str:
    return f"bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _drop_schema(schema: str) -> None:
    from unbundled.backends.postgres._schema import application_name

    # Connections left behind (a failed run) must not keep the schema alive.
    _pg(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = '{application_name(schema)}'"
    )
    _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_setting(name: str) -> str:
    psycopg: Any = importlib.import_module("psycopg")
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname=PG_DB) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[0])


def _in_schema(label: str, measure: Callable[[str], float]) -> float:
    schema = _pg_schema(label)
    try:
        return measure(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}?schema={schema}")
    finally:
        _drop_schema(schema)


def bench_postgres(sizes: Sizes, rival: Any) -> list[Line]:
    """Case 2: the same on PostgreSQL (the outbox record in the log on PostgreSQL)."""
    w = sizes.writers
    samples: dict[str, list[float]] = {k: [] for k in ("units", "claimed", "append", "rival")}
    extra: dict[str, list[float]] = {"units": [], "claims": [], "append": []}

    def unit(inside: bool) -> Callable[[str], float]:
        def measure(url: str) -> float:
            run = units(url, w, sizes.pg_units, log=True, claim_inside=inside)
            if not inside:
                extra["claims"].append(run.claim_rate)
                extra["units"].append(run.per_commit)
            return run.rate

        return measure

    for _ in range(sizes.repeats):
        samples["units"].append(_in_schema("unit", unit(False)))
        samples["append"].append(
            _in_schema("append", lambda url: ours_tasks(url, w, sizes.pg_appends)[0])
        )
        samples["claimed"].append(_in_schema("claimed", unit(True)))
        if rival is None:
            continue
        schema = _pg_schema("es")
        _pg(f'CREATE SCHEMA "{schema}"')
        try:
            app = rival.postgres_app(PG_DB, PG_HOST, PG_PORT, w, schema)
            try:
                rival.create_outbox(app, "postgres")
                samples["rival"].append(
                    rival.saves_with_outbox(app, w, sizes.pg_rival, run_threads, "postgres", VALUE)
                )
            finally:
                rival.close(app)
        finally:
            _pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    base = None
    if rival is not None:
        base = _rival_line("2", rival, "PostgreSQL", w, sizes.pg_rival, samples["rival"])
    return _unit_lines(
        "2",
        "PostgreSQL",
        sizes,
        sizes.pg_units,
        sizes.pg_appends,
        samples,
        extra,
        base,
        "event + outbox record + idempotency result",
    )


# --- 3. the log beside NATS ------------------------------------------------------------


def bench_log_nats(parent: Path | None, sizes: Sizes, *, nats: bool) -> list[Line]:
    """Case 3: durable ``AsyncLog.append`` from 64 tasks vs JetStream publish + ack."""
    w = sizes.writers
    ours: list[float] = []
    per_commit: list[float] = []
    peer: list[float] = []
    with scratch_dir(parent, "log-nats") as d:
        for rep in range(sizes.repeats):
            rate, txn = _log_tasks(d / f"log-{rep}.db", w, sizes.log, VALUE)
            ours.append(rate)
            per_commit.append(txn)
            if nats:
                peer.append(nats_side.publish_rate(w, sizes.nats, VALUE))
    lines = []
    against: tuple[Versus, ...] = ()
    if nats:
        base = Line(
            "3",
            f"NATS JetStream publish + ack (nats-py), {w} asyncio tasks",
            "records",
            tuple(peer),
            "baseline",
            note=f"{w} x {sizes.nats} messages of 100 B; file storage; one connection",
        )
        lines.append(base)
        against = (Versus("NATS", base.rate, Floor(ratio_min=3)),)
    lines.append(
        Line(
            "3a",
            f'AsyncLog.append, {w} asyncio tasks (SQLite, sync="full")',
            "records",
            tuple(ours),
            "measured" if nats else "context",
            against,
            f"{w} x {sizes.log:,} records of 100 B; "
            f"{statistics.median(per_commit):.1f} records/commit; the target is 3x",
        )
    )
    return lines


# --- running ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from bench import unit_of_work_report as report
    from bench.common import scratch_parent, show_results, write_results

    sizes = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    rival = load_rival()
    notes: list[str] = []
    versions = {"eventsourcing": rival.VERSION if rival is not None else "not installed"}
    if rival is None:
        notes.append("eventsourcing is not installed here: the B lines are missing")
    parent = scratch_parent()
    started = time.perf_counter()
    fsync: list[float] = []

    def sample_fsync() -> None:
        with console.status("fsync floor"):
            fsync.extend(bench_fsync(parent, seconds=sizes.fsync_seconds, repeats=1)[0].samples)

    lines: list[Line] = []
    load_before = os.getloadavg()[0]
    sample_fsync()
    with console.status("1. the unit of work on SQLite"):
        lines += bench_sqlite(parent, sizes, rival)
    sample_fsync()
    pg_skip = postgres_skip_reason()
    if pg_skip is None:
        versions["PostgreSQL"] = (
            f"{pg_setting('server_version')}, synchronous_commit="
            f"{pg_setting('synchronous_commit')}, fsync={pg_setting('fsync')}"
        )
        with console.status("2. the unit of work on PostgreSQL"):
            lines += bench_postgres(sizes, rival)
    else:
        notes.append(f"PostgreSQL lines skipped: {pg_skip}")
    nats_skip = nats_side.skip_reason()
    if nats_skip is None:
        versions["NATS server"] = asyncio.run(nats_side.server_facts())["version"]
    else:
        notes.append(f"NATS line skipped: {nats_skip}")
    with console.status("3. the log beside NATS JetStream"):
        lines += bench_log_nats(parent, sizes, nats=nats_skip is None)
    sample_fsync()
    lines.append(
        Line("4", "fsync floor: write 1 byte + os.fsync", "fsyncs", tuple(fsync), "context")
    )
    with console.status("profiling one commit cycle of the SQLite writer"):
        log_profile = profile_log(parent, sizes.writers, sizes.profile_log)
        unit_profile = profile_units(parent, sizes.writers, sizes.profile_units)
    records = sizes.writers * sizes.profile_log
    transactions = sizes.writers * sizes.profile_units
    rates = {line.case: line.rate for line in lines}
    profiles = [
        (
            "3a: AsyncLog.append, 64 asyncio tasks",
            log_profile,
            report.profile_summary(
                log_profile, records, "records", rates["3a"], statistics.median(fsync)
            ),
        ),
        (
            "1a: the unit of work, 64 asyncio tasks (event + outbox record + idempotency result)",
            unit_profile,
            report.profile_summary(
                unit_profile, transactions, "transactions", rates["1a"], statistics.median(fsync)
            ),
        ),
    ]
    facts = report.machine_facts(
        statistics.median(fsync),
        len(fsync),
        sizes.repeats,
        versions,
        (load_before, os.getloadavg()[0]),
    )
    if args.quick:
        notes.append("--quick run: tiny sizes, the numbers are not comparable to a full run.")
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")
    extra = []
    for title, profile, summary in profiles:
        table = Table(title=f"where a commit cycle goes: {title}")
        for header in report.PROFILE_HEADERS:
            table.add_column(header, justify="left" if header == "step" else "right")
        for row in report.profile_cells(profile):
            table.add_row(*row)
        extra += [table, *summary]
    show_results(
        console,
        "the unit of work, and the log beside NATS",
        report.HEADERS,
        lambda header: header in ("median rate", "ratios"),
        [(report.cells(line), line.verdict.startswith("BELOW")) for line in lines],
        facts,
        notes,
        extra=extra,
    )
    write_results(console, output, report.markdown(facts, lines, notes, profiles))
    return 0


def run_in_venv(*, quick: bool) -> int:
    """Run this file's :func:`main` in ``bench/.venv`` (made or updated first)."""
    from bench.bench_venv import ensure_venv

    python = ensure_venv()
    command = [str(python), str(Path(__file__).resolve()), *(["--quick"] if quick else [])]
    return subprocess.run(command, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "FULL",
    "QUICK",
    "Sizes",
    "bench_log_nats",
    "bench_postgres",
    "bench_sqlite",
    "main",
    "run_in_venv",
]
