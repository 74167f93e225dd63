"""The CDC benchmark: PostgreSQL changes into the log, side by side with ``pg_recvlogical``.

    .venv/bin/python bench/run.py --only cdc                 # bench/results/cdc.md
    .venv/bin/python bench/cdc_bench.py --quick              # a smoke run, writes nothing
    .venv/bin/python bench/cdc_bench.py --memory-rows 1000000

Three cases, each on a fresh schema of the local server (``UNBUNDLED_BENCH_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), whose slots and publications are dropped
at the end of the case, also when it fails:

1. Throughput. A table gets ``rows`` inserts in transactions of ``txn_rows``; two slots
   created before the writes see the same WAL. ``pg_recvlogical`` (pgoutput, protocol 1, to
   /dev/null) is timed from its start to its exit at the final LSN (``--endpos``);
   ``CDCProducer`` from its start to the last change durable in the log (sync="full", the
   default). Which goes first alternates between repeats.
2. Lag. A writer thread inserts at a steady rate, each row carrying the writer's clock
   taken just before COMMIT; the producer runs in a child process; a consumer thread here
   reads the topic from the log file and notes when each row shows up.
3. Memory. One transaction of ``memory_rows`` rows, captured by a child process whose
   peak RSS (``ru_maxrss``) is compared with its RSS before the first poll.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

import unbundled  # noqa: E402
from bench.cdc_report import (  # noqa: E402
    HEADERS,
    machine_facts,
    markdown,
    table_rows,
)
from bench.common import scratch_parent, write_results  # noqa: E402
from unbundled.cdc import CDCProducer, ConnectorConfig, add_connector  # noqa: E402
from unbundled.cdc import _pg_admin as admin  # noqa: E402

RESULTS = REPO / "bench" / "results" / "cdc.md"
PG_URL = os.environ.get("UNBUNDLED_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLE = "orders"


@dataclass(frozen=True)
class Sizes:
    repeats: int
    rows: int  # throughput: row changes per repeat
    txn_rows: int  # throughput: rows per transaction
    lag_rate: int  # lag: changes per second the writer keeps to
    lag_seconds: float
    lag_txn_rows: int
    memory_rows: int  # memory: rows of the one big transaction


FULL = Sizes(3, 100_000, 100, 5_000, 10.0, 10, 1_000_000)
QUICK = Sizes(2, 2_000, 100, 1_000, 1.0, 10, 20_000)


def _check(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise SystemExit(f"{name} {value} must be between {low:,} and {high:,}")
    return value


# --- the PostgreSQL side ---------------------------------------------------------------


def pg(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def pg_reachable() -> str | None:
    """None if the server can do logical decoding, else why not."""
    try:
        level = pg("SHOW wal_level")[0][0]
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__})"
    if level != "logical":
        return f"PostgreSQL's wal_level is {level}, not logical"
    return None


def recvlogical_path() -> str | None:
    """Debian's pg_recvlogical of the newest installed major version (or one on PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_recvlogical"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return found[-1] if found else shutil.which("pg_recvlogical")


class Scratch:
    """One schema with the benchmark's table, a connector and a pg_recvlogical slot; every
    slot, publication and the schema are dropped on exit, also after an error."""

    def __init__(self, parent: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.schema = f"cdcbench_{tag}"
        self.connector = f"bench{tag}"
        self.raw_slot = f"cdcbench_raw_{tag}"
        self.recv_slot = f"cdcbench_recv_{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="cdcbench-", dir=parent))
        self.log_path = self.dir / "log.db"
        self.table = f'"{self.schema}"."{TABLE}"'
        self._raw = False

    def __enter__(self) -> Scratch:
        pg(f'CREATE SCHEMA "{self.schema}"')
        pg(
            f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, item text NOT NULL, "
            "qty integer NOT NULL, price numeric(10, 2) NOT NULL, "
            "created timestamptz NOT NULL, sent_us bigint)"
        )
        return self

    def config(self) -> ConnectorConfig:
        return ConnectorConfig(
            name=self.connector, source=PG_URL, tables=[f"{self.schema}.{TABLE}"]
        )

    def add_connector(self) -> ConnectorConfig:
        """Add the connector and take its (empty) snapshot, so its slot exists from now on."""
        with unbundled.open(str(self.log_path)) as db:
            config = add_connector(db, self.config())
            with CDCProducer(db, config) as producer:
                while not producer.progress.snapshot_done:
                    producer.step(0.1)
        return config

    def add_raw_slot(self) -> None:
        self._raw = True
        pg(f"CREATE PUBLICATION {self.raw_slot} FOR TABLE {self.table}")
        for slot in (self.raw_slot, self.recv_slot):
            pg("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", slot)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            admin.drop_slot(PG_URL, self.connector)
        with contextlib.suppress(Exception):
            admin.drop_publication(PG_URL, self.connector)
        if self._raw:
            for slot in (self.raw_slot, self.recv_slot):
                with contextlib.suppress(Exception):
                    _drop_raw_slot(slot)
            with contextlib.suppress(Exception):
                pg(f"DROP PUBLICATION IF EXISTS {self.raw_slot}")
        with contextlib.suppress(Exception):
            pg(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        shutil.rmtree(self.dir, ignore_errors=True)


def _drop_raw_slot(slot: str) -> None:
    for _ in range(50):  # a pg_recvlogical that just exited may hold it a moment longer
        rows = pg("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", slot)
        if not rows:
            return
        if rows[0][0] is None:
            pg("SELECT pg_drop_replication_slot(%s)", slot)
            return
        time.sleep(0.1)
    pg(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s",
        slot,
    )
    time.sleep(0.2)
    pg("SELECT pg_drop_replication_slot(%s)", slot)


INSERT = (
    "INSERT INTO {table} SELECT g, 'item-' || g, mod(g, 100), mod(g, 100000) / 100.0, now(), "
    "{sent} FROM generate_series(%s::bigint, %s::bigint) g"
)


def write_rows(table: str, rows: int, txn_rows: int, first: int = 1) -> str:
    """Insert rows first..first+rows-1 in transactions of txn_rows; the WAL LSN after."""
    import psycopg

    sql = INSERT.format(table=table, sent="NULL")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for start in range(first, first + rows, txn_rows):
            end = min(start + txn_rows, first + rows) - 1
            with conn.transaction():
                conn.execute(sql, (start, end))
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


# --- 1. throughput ---------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    raw: tuple[float, ...]  # pg_recvlogical changes/s per repeat
    ours: tuple[float, ...]  # CDCProducer changes/s per repeat
    recv: tuple[float, ...]  # psycopg2 receiving only, changes/s per repeat

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.raw)


def time_recvlogical(binary: str, scratch: Scratch, endpos: str) -> float:
    cmd = [
        binary,
        "-d",
        PG_URL,
        "--slot",
        scratch.raw_slot,
        "--start",
        "--no-loop",
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={scratch.raw_slot}",
        "-f",
        "/dev/null",
        "-E",
        endpos,
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pg_recvlogical exited {done.returncode}: {done.stderr.strip()}")
    return seconds


def time_receive_only(scratch: Scratch, rows: int) -> float:
    """Seconds until psycopg2 has received ``rows`` inserts of the raw publication on
    the third slot, doing nothing with them: the least a Python producer spends."""
    import select

    import psycopg2
    import psycopg2.extras

    started = time.perf_counter()
    conn = psycopg2.connect(PG_URL, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cur = conn.cursor()
        cur.start_replication(
            slot_name=scratch.recv_slot,
            decode=False,
            options={"proto_version": "1", "publication_names": scratch.raw_slot},
        )
        inserts = 0
        while inserts < rows:
            message = cur.read_message()
            if message is None:
                select.select([cur], [], [], 0.05)
                continue
            if bytes(message.payload)[:1] == b"I":
                inserts += 1
        return time.perf_counter() - started
    finally:
        conn.close()


def time_producer(scratch: Scratch, config: ConnectorConfig, rows: int) -> float:
    started = time.perf_counter()
    with unbundled.open(str(scratch.log_path)) as db, CDCProducer(db, config) as producer:
        # run() is what `unbundled cdc run` does; idle (50 ms without a change) ends it,
        # and the loop covers a pause of the server's decoding longer than that.
        while producer.progress.changes < rows:
            producer.run(until_idle=True, poll_s=0.05)
    return time.perf_counter() - started


def bench_throughput(parent: Path, sizes: Sizes, binary: str) -> Throughput:
    rates: dict[str, list[float]] = {"raw": [], "ours": [], "recv": []}
    for repeat in range(sizes.repeats):
        with Scratch(parent) as scratch:
            config = scratch.add_connector()
            scratch.add_raw_slot()
            endpos = write_rows(scratch.table, sizes.rows, sizes.txn_rows)
            timed = {
                "raw": lambda: time_recvlogical(binary, scratch, endpos),  # noqa: B023
                "ours": lambda: time_producer(scratch, config, sizes.rows),  # noqa: B023
                "recv": lambda: time_receive_only(scratch, sizes.rows),
            }
            names = list(timed)
            turn = repeat % len(names)  # the order rotates: no side always goes first
            for name in names[turn:] + names[:turn]:
                rates[name].append(sizes.rows / timed[name]())
    return Throughput(tuple(rates["raw"]), tuple(rates["ours"]), tuple(rates["recv"]))


# --- the producer in a child process (lag and memory) ------------------------------------


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # pragma: no cover - Linux always has it


def child_main(log_path: str, connector: str, stop_after: int) -> int:
    """Run the connector until ``stop_after`` changes are stored (0: until stdin closes);
    print one JSON line: RSS before the first poll and the peak, in KiB."""
    # The drivers the first poll would import: loaded before the baseline, so the growth
    # is what streaming holds, not the size of two client libraries.
    import psycopg
    import psycopg2.extras

    del psycopg, psycopg2
    with unbundled.open(log_path) as db:
        config = unbundled.cdc.get_connector(db, connector)
        with CDCProducer(db, config) as producer:
            before = rss_kb()
            stop = threading.Event()
            if stop_after == 0:
                print("ready", flush=True)
                threading.Thread(target=_stop_at_eof, args=(stop,), daemon=True).start()
                producer.run(stop=stop, poll_s=0.05)
            else:
                while producer.progress.changes < stop_after:
                    producer.run(until_idle=True, poll_s=0.05)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            report = {"rss_before_kb": before, "rss_peak_kb": peak}
            print(json.dumps({**report, "changes": producer.progress.changes}), flush=True)
    return 0


def _stop_at_eof(stop: threading.Event) -> None:
    sys.stdin.read()  # the parent closes our stdin to stop us
    stop.set()


def _child(scratch: Scratch, stop_after: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(scratch.log_path),
            scratch.connector,
            str(stop_after),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


# --- 2. lag ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lag:
    p50_ms: float
    p99_ms: float
    max_ms: float
    seen: int
    rate: float  # changes/s the writer actually kept


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_lag(parent: Path, sizes: Sizes) -> Lag:
    import psycopg

    with Scratch(parent) as scratch:
        scratch.add_connector()
        child = _child(scratch, 0)
        try:
            assert child.stdout is not None and child.stdin is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the producer child did not start")
            total = int(sizes.lag_rate * sizes.lag_seconds)
            lags: list[float] = []
            done = threading.Event()
            reader = threading.Thread(
                target=_consume, args=(scratch, total, lags, done), daemon=True
            )
            reader.start()
            sql = INSERT.format(table=scratch.table, sent="%s::bigint")
            step = sizes.lag_txn_rows / sizes.lag_rate
            started = time.perf_counter()
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                due = started
                for first in range(1, total + 1, sizes.lag_txn_rows):
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    due += step
                    last = min(first + sizes.lag_txn_rows, total + 1) - 1
                    # One statement in autocommit: one round trip per transaction, so the
                    # clock is read just before the server commits.
                    conn.execute(sql, (time.time_ns() // 1000, first, last))
            kept = total / (time.perf_counter() - started)
            done.wait(60)
            child.stdin.close()
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    if len(lags) < total:
        raise RuntimeError(f"the consumer saw {len(lags)} of {total} rows within a minute")
    return Lag(percentile(lags, 0.5), percentile(lags, 0.99), max(lags), len(lags), kept)


def _consume(scratch: Scratch, total: int, lags: list[float], done: threading.Event) -> None:
    """The derived view: reads the topic from the log file, notes each row's lag in ms."""
    topic = f"{scratch.connector}.{scratch.schema}.{TABLE}"
    deadline = time.monotonic() + 600
    with unbundled.open(str(scratch.log_path)) as db:
        offset = 0
        while len(lags) < total and time.monotonic() < deadline:
            try:
                records = db.log.read(topic, 0, offset, records_max=1000)
            except unbundled.errors.NotFound:
                records = []  # the topic is created with the first change
            now_us = time.time_ns() // 1000
            for record in records:
                after = json.loads(record.value or b"null")["after"]
                lags.append((now_us - after["sent_us"]) / 1000)
            if records:
                offset = records[-1].offset + 1
            else:
                time.sleep(0.001)
    done.set()


# --- 3. memory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    rows: int
    before_kb: int
    peak_kb: int
    seconds: float

    @property
    def growth_kb(self) -> int:
        return self.peak_kb - self.before_kb


def bench_memory(parent: Path, rows: int) -> Memory:
    with Scratch(parent) as scratch:
        scratch.add_connector()
        pg(INSERT.format(table=scratch.table, sent="NULL"), 1, rows)  # one transaction
        started = time.perf_counter()
        child = _child(scratch, rows)
        try:
            out, _ = child.communicate(timeout=1800)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            raise RuntimeError(f"the producer child exited {child.returncode}")
        report = json.loads(out.strip().splitlines()[-1])
    return Memory(rows, report["rss_before_kb"], report["rss_peak_kb"], seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--rows", type=int, default=None, help="case 1 row changes per repeat")
    parser.add_argument("--repeats", type=int, default=None, help="case 1 repeats")
    parser.add_argument(
        "--memory-rows", type=int, default=None, help="case 3 transaction size (1,000,000)"
    )
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child[0], args.child[1], int(args.child[2]))

    from rich.console import Console
    from rich.table import Table

    sizes = QUICK if args.quick else FULL
    sizes = Sizes(
        repeats=_check("--repeats", args.repeats or sizes.repeats, 1, 20),
        rows=_check("--rows", args.rows or sizes.rows, sizes.txn_rows, 10_000_000),
        txn_rows=sizes.txn_rows,
        lag_rate=sizes.lag_rate,
        lag_seconds=sizes.lag_seconds,
        lag_txn_rows=sizes.lag_txn_rows,
        memory_rows=_check("--memory-rows", args.memory_rows or sizes.memory_rows, 1, 10_000_000),
    )
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    why = pg_reachable()
    binary = recvlogical_path()
    if why is not None or binary is None:
        console.print(f"cdc benchmark skipped: {why or 'pg_recvlogical not found'}")
        return 0
    parent = scratch_parent()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with console.status("1. throughput: pg_recvlogical vs CDCProducer vs receiving only"):
        thr = bench_throughput(parent, sizes, binary)
    with console.status(f"2. lag at {sizes.lag_rate:,} changes/s"):
        lag = bench_lag(parent, sizes)
    mems = []
    # A tenth first: the same growth at both sizes says it does not follow the
    # transaction's size.
    for rows_in_txn in (max(1, sizes.memory_rows // 10), sizes.memory_rows):
        with console.status(f"3. memory of a {rows_in_txn:,}-row transaction"):
            mems.append(bench_memory(parent, rows_in_txn))
    rows = table_rows(sizes, thr, lag, mems)
    server = "unknown"
    with contextlib.suppress(Exception):
        server = str(pg("SHOW server_version")[0][0])
    facts = machine_facts(sizes, binary, server)
    facts.append(
        (
            "load average",
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute; 2 = both "
            "CPUs busy): the producer is one Python thread, so other work on the machine "
            "slows it more than pg_recvlogical, whose decoding runs in the server",
        )
    )
    notes = []
    if args.quick:
        notes.append("--quick run: tiny sizes, the numbers are not comparable to a full run.")
    if sizes.memory_rows != 1_000_000:
        notes.append(f"case 3 ran with {sizes.memory_rows:,} rows (--memory-rows), not 1,000,000.")
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")
    table = Table(title="unbundled CDC benchmarks")
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("median", "ratio") else "left")
    for row in rows:
        table.add_row(*row, style="red" if row[6] == "BELOW FLOOR" else None)
    for name, value in facts:
        console.print(f"[bold]{name}[/bold]: {value}")
    console.print(table)
    for note in notes:
        console.print(f"- {note}")
    command = "bench/run.py --only cdc" + (" --quick" if args.quick else "")
    notes.append(f"command: `.venv/bin/python {command}`")
    write_results(console, output, markdown(facts, rows, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
