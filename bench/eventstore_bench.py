"""The event-store benchmarks: unbundled side by side with the ``eventsourcing``
library (9.x), in one run, on the same disk, at the same durability.

    .venv/bin/python bench/run.py --only eventstore          # the usual way (make bench)
    bench/.venv/bin/python bench/eventstore_bench.py --quick # directly, inside bench/.venv

``eventsourcing`` is installed only in ``bench/.venv`` (``bench/requirements.txt``),
never as a dependency of unbundled: ``bench/run.py`` creates that venv
(``bench/bench_venv.py``), installs the project and the requirements into it,
and runs this file there; ``bench/eventstore_report.py`` writes the page. Every
repetition runs unbundled's lines and the competitor's on fresh files,
interleaved, so a slow moment of the machine hurts both sides alike. Both use
SQLite in WAL mode with ``synchronous=FULL`` (unbundled's ``sync="full"``; the
competitor's setting is read back from its own connection).

The functions take their sizes as arguments and accept ``rival=None`` (no
competitor), so the smoke test runs unbundled's side tiny, without eventsourcing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

from bench.log_bench import Floor, Row, bench_fsync, run_threads, scratch_dir  # noqa: E402
from unbundled import NO_STREAM, AsyncEventStore, Event, EventStore  # noqa: E402
from unbundled.backends import SqliteBackend  # noqa: E402
from unbundled.eventstore.aggregate import Aggregate, Repository, applies  # noqa: E402

RESULTS = REPO / "bench" / "results" / "eventstore.md"
PG_HOST, PG_PORT = "127.0.0.1", 5432
EVENTS_PER_AGGREGATE = 20


class Opened(Event, frozen=True):
    owner: str


class Deposited(Event, frozen=True):
    amount: int


EVENTS: list[type[Event]] = [Opened, Deposited]


@dataclass(frozen=True)
class Sizes:
    """How much work each case does; ``--quick`` shrinks everything."""

    repeats: int
    writers: int
    per_writer_tasks: int  # AsyncEventStore.append, per asyncio task
    per_writer_threads: int  # EventStore.append, per thread
    per_writer_rival: int  # eventsourcing, per thread (about 2,000 events/s in all)
    aggregates: int  # the store read by cases 2 and 3
    rebuilt: int  # how many of them case 2 rebuilds
    fsync_seconds: float


FULL = Sizes(
    repeats=5,
    writers=64,
    per_writer_tasks=500,
    per_writer_threads=250,
    per_writer_rival=30,
    aggregates=5_000,
    rebuilt=1_000,
    fsync_seconds=1.0,
)
QUICK = Sizes(
    repeats=2,
    writers=64,
    per_writer_tasks=20,
    per_writer_threads=10,
    per_writer_rival=3,
    aggregates=200,
    rebuilt=50,
    fsync_seconds=0.2,
)


def row(
    case: str,
    name: str,
    unit: str,
    samples: list[float],
    baseline: Row | None,
    floor: Floor | None,
    note: str = "",
) -> Row:
    """An unbundled line: its ratio is to ``baseline``'s median, its verdict from
    ``floor``. Without a baseline (no competitor installed) it is context only."""
    if baseline is None:
        return Row(case, name, unit, tuple(samples), verdict="context", note=note)
    rate = statistics.median(samples)
    ratio = rate / baseline.rate if baseline.rate > 0 else None
    return Row(
        case,
        name,
        unit,
        tuple(samples),
        baseline=baseline.name,
        baseline_rate=baseline.rate,
        floor=floor,
        verdict=floor.verdict(rate, ratio) if floor is not None else "context",
        note=note,
    )


def rival_row(case: str, name: str, unit: str, samples: list[float], note: str = "") -> Row:
    return Row(case, name, unit, tuple(samples), verdict="baseline", note=note)


def writer_transactions(store: EventStore | AsyncEventStore) -> int:
    """Committed transactions of the SQLite group-commit writer so far (0 elsewhere)."""
    backend = store.backend
    return backend._writer.transactions if isinstance(backend, SqliteBackend) else 0


# --- 1. durable single appends from many writers ---------------------------------------


async def _tasks_async(url: str, writers: int, per_writer: int) -> tuple[float, float]:
    store = await AsyncEventStore.open(url, sync="full", events=EVENTS)
    try:
        start = asyncio.Event()

        async def work(n: int) -> None:
            await start.wait()
            stream = f"account-{n}"
            for i in range(per_writer):
                # Each append its own request, with its exact expected version.
                await store.append(stream, [Deposited(amount=i)], i - 1)

        tasks = [asyncio.create_task(work(n)) for n in range(writers)]
        await asyncio.sleep(0)  # let every task reach start.wait()
        before = writer_transactions(store)
        started = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        transactions = writer_transactions(store) - before
        total = writers * per_writer
        if await store.safe_position() != total:
            raise AssertionError("AsyncEventStore lost events in the append benchmark")
    finally:
        await store.close()
    return total / elapsed, total / max(transactions, 1)


def ours_tasks(url: str, writers: int, per_writer: int) -> tuple[float, float]:
    """Events/s and events per transaction of ``writers`` asyncio tasks."""
    return asyncio.run(_tasks_async(url, writers, per_writer))


def ours_threads(url: str, writers: int, per_writer: int) -> tuple[float, float]:
    """Events/s and events per transaction of ``writers`` threads on ``EventStore.append``."""
    with EventStore.open(url, sync="full", events=EVENTS) as store:
        before = writer_transactions(store)

        def work(n: int) -> None:
            stream = f"account-{n}"
            for i in range(per_writer):
                store.append(stream, [Deposited(amount=i)], i - 1)

        elapsed = run_threads(writers, work)
        transactions = writer_transactions(store) - before
        total = writers * per_writer
        if store.safe_position() != total:
            raise AssertionError("EventStore lost events in the threaded append benchmark")
    return total / elapsed, total / max(transactions, 1)


def _per_txn_note(count: str, values: list[float]) -> str:
    if not values or not any(values):
        return count
    return f"{count}; {statistics.median(values):.1f} events/txn"


def bench_appends(parent: Path | None, sizes: Sizes, rival: Any, *, case: str = "1") -> list[Row]:
    """Case 1 on SQLite: durable single-event appends from ``sizes.writers`` writers."""
    w = sizes.writers
    samples: dict[str, list[float]] = {k: [] for k in ("tasks", "threads", "save", "recorder")}
    per_txn: dict[str, list[float]] = {"tasks": [], "threads": []}
    with scratch_dir(parent, "es-append") as d:
        for rep in range(sizes.repeats):
            rate, txn = ours_tasks(str(d / f"tasks-{rep}.db"), w, sizes.per_writer_tasks)
            samples["tasks"].append(rate)
            per_txn["tasks"].append(txn)
            rate, txn = ours_threads(str(d / f"threads-{rep}.db"), w, sizes.per_writer_threads)
            samples["threads"].append(rate)
            per_txn["threads"].append(txn)
            if rival is None:
                continue
            for kind, measure in (
                ("save", rival.appends_by_save),
                ("recorder", rival.appends_by_recorder),
            ):
                app = rival.sqlite_app(d / f"es-{kind}-{rep}.db")
                try:
                    samples[kind].append(measure(app, w, sizes.per_writer_rival, run_threads))
                finally:
                    rival.close(app)
    return _append_rows(case, "SQLite", sizes, samples, per_txn, rival)


def _append_rows(
    case: str,
    where: str,
    sizes: Sizes,
    samples: dict[str, list[float]],
    per_txn: dict[str, list[float]],
    rival: Any,
) -> list[Row]:
    w = sizes.writers
    rivals = []
    if rival is not None:
        count = f"{w} x {sizes.per_writer_rival} events"
        rivals = [
            rival_row(
                case,
                f"eventsourcing {rival.VERSION}: Application.save per event, {w} threads ({where})",
                "events",
                samples["save"],
                count + "; the baseline of the ratios",
            ),
            rival_row(
                case,
                f"eventsourcing {rival.VERSION}: recorder.insert_events per event, "
                f"{w} threads ({where})",
                "events",
                samples["recorder"],
                count + "; persistence alone, for context",
            ),
        ]
    # The baseline is the one-save-per-event rate (Application.save);
    # the ratio to the recorder alone is given in the notes as well.
    base = rivals[0] if rivals else None
    recorder = rivals[1] if rivals else None
    lines = [
        ("a", f"AsyncEventStore.append, {w} asyncio tasks ({where})", "tasks", 10.0),
        ("b", f"EventStore.append, {w} threads ({where})", "threads", 5.0),
    ]
    out = [*rivals]
    for suffix, name, kind, floor in lines:
        per = sizes.per_writer_tasks if kind == "tasks" else sizes.per_writer_threads
        note = f"{w} x {per} events" + ("; aim 20x" if kind == "tasks" else "")
        note = _per_txn_note(note, per_txn[kind])
        if recorder is not None and recorder.rate > 0:
            note += f"; {statistics.median(samples[kind]) / recorder.rate:.1f}x the recorder line"
        out.append(row(f"{case}{suffix}", name, "events", samples[kind], base, Floor(floor), note))
    return out


# --- 1 on PostgreSQL -----------------------------------------------------------------


def postgres_skip_reason() -> str | None:
    """Why the PostgreSQL lines cannot run here, or None if they can."""
    if importlib.util.find_spec("unbundled.backends.postgres") is None:
        return "unbundled's PostgreSQL backend (unbundled.backends.postgres) is not in this tree"
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2.0):
            pass
    except OSError:
        return f"no PostgreSQL server at {PG_HOST}:{PG_PORT}"
    return None


def _pg_admin(sql: str) -> None:
    psycopg: Any = importlib.import_module("psycopg")
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(sql)


def _pg_database(label: str) -> str:
    name = f"unbundled_bench_{label}_{os.getpid()}"
    _pg_admin(f"DROP DATABASE IF EXISTS {name}")
    _pg_admin(f"CREATE DATABASE {name}")
    return name


def pg_url(dbname: str) -> str:
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{dbname}"


def bench_appends_postgres(sizes: Sizes, rival: Any) -> list[Row]:
    """Case 1 on PostgreSQL: each side in a fresh database on the same server."""
    w = sizes.writers
    samples: dict[str, list[float]] = {k: [] for k in ("tasks", "threads", "save", "recorder")}
    per_txn: dict[str, list[float]] = {"tasks": [], "threads": []}
    for _ in range(sizes.repeats):
        for kind, measure in (("tasks", ours_tasks), ("threads", ours_threads)):
            per = sizes.per_writer_tasks if kind == "tasks" else sizes.per_writer_threads
            db = _pg_database(kind)
            try:
                rate, _txn = measure(pg_url(db), w, per)
                samples[kind].append(rate)
            finally:
                _pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        if rival is None:
            continue
        for kind, rival_measure in (
            ("save", rival.appends_by_save),
            ("recorder", rival.appends_by_recorder),
        ):
            db = _pg_database(kind)
            app = rival.postgres_app(db, PG_HOST, PG_PORT, w)
            try:
                samples[kind].append(rival_measure(app, w, sizes.per_writer_rival, run_threads))
            finally:
                rival.close(app)
                _pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return _append_rows("1-pg", "PostgreSQL", sizes, samples, per_txn, rival)


# --- 2 and 3: rebuilding aggregates, reading $all ------------------------------------


def populate(url: str, aggregates: int, events_per: int) -> list[str]:
    """``aggregates`` streams ``account-<id>`` of Opened + deposits 1, 2, ...;
    written 100 streams per atomic ``append_many``. Returns the ids."""
    ids = [uuid.uuid4().hex for _ in range(aggregates)]
    streams = [f"account-{i}" for i in ids]
    events: list[Event] = [
        Opened(owner="owner"),
        *(Deposited(amount=a) for a in range(1, events_per)),
    ]
    with EventStore.open(url, sync="full", events=EVENTS) as store:
        for start in range(0, aggregates, 100):
            store.append_many([(s, events, NO_STREAM) for s in streams[start : start + 100]])
    return ids


class BankAccount(Aggregate):
    """The aggregate: the same state as the competitor's ``Account``."""

    category = "account"

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.owner = ""
        self.balance = 0

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def ours_rebuild(store: EventStore, ids: list[str]) -> tuple[int, float]:
    """Total balance of the accounts, each loaded by the repository; seconds taken."""
    load = Repository(store, BankAccount).load
    started = time.perf_counter()
    total = sum(load(i).balance for i in ids)
    return total, time.perf_counter() - started


def ours_read_all(store: EventStore, page: int = 10_000) -> tuple[int, float]:
    """Every event of ``$all`` as a typed event; how many and the seconds taken."""
    count = 0
    after = 0
    started = time.perf_counter()
    while True:
        events = store.read_all(after, limit=page)
        count += len(events)
        if len(events) < page:
            break
        after = events[-1].position
    return count, time.perf_counter() - started


def bench_reads(parent: Path | None, sizes: Sizes, rival: Any) -> list[Row]:
    """Case 2 (rebuild ``sizes.rebuilt`` aggregates) and case 3 (read ``$all``)
    on one store of ``sizes.aggregates`` x 20 events per side, written once."""
    n, per = sizes.aggregates, EVENTS_PER_AGGREGATE
    step = max(1, n // sizes.rebuilt)
    expected_balance = sizes.rebuilt * sum(range(1, per))
    samples: dict[str, list[float]] = {k: [] for k in ("rebuild", "read", "es-rebuild", "es-read")}
    with scratch_dir(parent, "es-read") as d:
        url = str(d / "ours.db")
        ours_ids = populate(url, n, per)[::step][: sizes.rebuilt]
        app = None
        if rival is not None:
            app = rival.sqlite_app(d / "rival.db")
            ids = rival.populate(app, n, per)[::step][: sizes.rebuilt]
        try:
            with EventStore.open(url, sync="full", events=EVENTS) as store:
                for _ in range(sizes.repeats):
                    total, seconds = ours_rebuild(store, ours_ids)
                    _check(total == expected_balance, "rebuild balances")
                    samples["rebuild"].append(len(ours_ids) / seconds)
                    count, seconds = ours_read_all(store)
                    _check(count == n * per, "read_all count")
                    samples["read"].append(count / seconds)
                    if app is None:
                        continue
                    total, seconds = rival.rebuild(app, ids)
                    _check(total == expected_balance, "eventsourcing rebuild balances")
                    samples["es-rebuild"].append(len(ids) / seconds)
                    count, seconds = rival.read_all(app)
                    _check(count == n * per, "eventsourcing read_all count")
                    samples["es-read"].append(count / seconds)
        finally:
            if app is not None:
                rival.close(app)
    return _read_rows(sizes, samples, rival)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong result in the read benchmark: {what}")


def _read_rows(sizes: Sizes, samples: dict[str, list[float]], rival: Any) -> list[Row]:
    store_note = f"{sizes.aggregates:,} x {EVENTS_PER_AGGREGATE} events stored"
    rebuild_note = f"{sizes.rebuilt:,} aggregates of {EVENTS_PER_AGGREGATE} events; {store_note}"
    read_note = f"{sizes.aggregates * EVENTS_PER_AGGREGATE:,} events"
    rebuild_base = read_base = None
    rows: list[Row] = []
    if rival is not None:
        rebuild_base = rival_row(
            "2",
            f"eventsourcing {rival.VERSION}: repository.get(id)",
            "aggregates",
            samples["es-rebuild"],
            rebuild_note,
        )
        read_base = rival_row(
            "3",
            f"eventsourcing {rival.VERSION}: select_notifications + mapper.to_domain_event",
            "events",
            samples["es-read"],
            read_note,
        )
    rows += [r for r in (rebuild_base,) if r is not None]
    rows.append(
        row(
            "2",
            "Repository.load(id) (aggregate.py)",
            "aggregates",
            samples["rebuild"],
            rebuild_base,
            Floor(ratio_min=3),
            rebuild_note,
        )
    )
    rows += [r for r in (read_base,) if r is not None]
    rows.append(
        row(
            "3",
            "EventStore.read_all, 10,000/call, typed events",
            "events",
            samples["read"],
            read_base,
            Floor(ratio_min=3),
            read_note,
        )
    )
    return rows


def load_rival() -> Any | None:
    """The competitor's module, or None where eventsourcing is not installed."""
    if importlib.util.find_spec("eventsourcing") is None:
        return None
    return importlib.import_module("bench.eventsourcing_side")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)

    from rich.console import Console

    from bench.common import HEADERS, cells, scratch_parent
    from bench.eventstore_report import machine_facts, markdown

    sizes = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    rival = load_rival()
    notes: list[str] = []
    if rival is None:
        notes.append("eventsourcing is not installed here: unbundled's lines have no baseline")
    parent = scratch_parent()
    started = time.perf_counter()
    fsync_samples: list[float] = []

    def sample_fsync() -> None:
        with console.status("fsync floor"):
            fsync_samples.extend(
                bench_fsync(parent, seconds=sizes.fsync_seconds, repeats=1)[0].samples
            )

    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    sample_fsync()
    with console.status("1. durable single appends from 64 writers (SQLite)"):
        rows += bench_appends(parent, sizes, rival)
    sample_fsync()
    skip = postgres_skip_reason()
    if skip is None:
        with console.status("1. durable single appends from 64 writers (PostgreSQL)"):
            rows += bench_appends_postgres(sizes, rival)
    else:
        notes.append(f"PostgreSQL lines skipped: {skip}")
    with console.status(f"2-3. rebuild and read ({sizes.aggregates:,} x 20 events per side)"):
        rows += bench_reads(parent, sizes, rival)
    sample_fsync()
    fsync = Row("4", "fsync floor: write 1 byte + os.fsync", "fsyncs", tuple(fsync_samples))
    rows.append(fsync)
    facts = machine_facts(fsync, sizes, rival)
    facts.append(
        (
            "load average",
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute; 2 = both "
            "CPUs busy)",
        )
    )
    saves = [r for r in rows if r.case == "1" and "Application.save" in r.name]
    if saves:
        notes.append(
            "Case 1's floors (10x, 5x) were set when eventsourcing's one-save-per-event rate "
            f"on SQLite was about 1,700 events/s; in this run it made {saves[0].rate:,.0f}/s "
            f"on a disk doing {fsync.rate:,.0f} fsyncs/s. Baselines are measured as they are."
        )
    notes.append(
        "events/txn: events per committed transaction of unbundled's group-commit writer "
        "(`backend._writer.transactions`) during the run; eventsourcing commits one per event."
    )
    if args.quick:
        notes.append("--quick run: tiny sizes, the numbers are not comparable to a full run.")
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")

    from bench.common import show_results, write_results

    show_results(
        console,
        "unbundled event store vs eventsourcing",
        HEADERS,
        lambda header: header in ("median rate", "ratio"),
        [(cells(r), r.verdict.startswith("BELOW")) for r in rows],
        facts,
        notes,
    )
    write_results(console, output, markdown(facts, rows, notes))
    return 0


def run_in_venv(*, quick: bool) -> int:
    """Run this file's :func:`main` in ``bench/.venv`` (made or updated
    first); its exit status."""
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
    "bench_appends",
    "bench_reads",
    "main",
    "run_in_venv",
]
