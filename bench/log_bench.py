"""The log benchmarks: unbundled's SQLite log side by side with raw ``sqlite3``.

Every case runs the library and its baseline in the same process, on the same
disk, interleaved repetition by repetition (library, baseline, library, ...),
so a slow moment of the machine hurts both sides alike. Each function returns
:class:`Row` s holding every sample; the table shows the median, and ratios are
computed from medians. Durability is the same on both sides: WAL with
``synchronous=FULL`` (the log's ``sync="full"``), one fsync per commit.

The functions take their sizes as arguments so the smoke test can run them tiny;
``bench/run.py`` chooses the real sizes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from unbundled import AsyncLog, Log
from unbundled.backends import SqliteBackend
from unbundled.testing.crash import run_crash_test

TOPIC = "bench"
VALUE_BYTES = 100
RAW_SCHEMA = "CREATE TABLE log(offset INTEGER PRIMARY KEY, key BLOB, value BLOB, ts INTEGER)"
RAW_INSERT = "INSERT INTO log(offset, key, value, ts) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True)
class Floor:
    """What a line must reach: a ratio to its baseline and/or an absolute rate."""

    ratio_min: float | None = None
    rate_min: float | None = None

    def describe(self) -> str:
        parts = []
        if self.rate_min is not None:
            parts.append(f">= {self.rate_min:,.0f}/s")
        if self.ratio_min is not None:
            parts.append(f">= {self.ratio_min:g}x")
        return " and ".join(parts)

    def verdict(self, rate: float, ratio: float | None) -> str:
        """``PASS``, or ``BELOW FLOOR`` naming which part missed."""
        missed = []
        if self.rate_min is not None and rate < self.rate_min:
            missed.append("rate")
        if self.ratio_min is not None and (ratio is None or ratio < self.ratio_min):
            missed.append("ratio")
        return "PASS" if not missed else f"BELOW FLOOR ({', '.join(missed)})"


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``samples`` are the rates of each repetition (``unit`` per second); a
    baseline line has no ``floor`` and its ``verdict`` is ``"baseline"``; a
    line shown for context only has verdict ``"context"``.
    """

    case: str
    name: str
    unit: str
    samples: tuple[float, ...]
    baseline: str | None = None
    baseline_rate: float | None = None
    floor: Floor | None = None
    verdict: str = "context"
    note: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(self.samples)

    @property
    def ratio(self) -> float | None:
        if self.baseline_rate is None or self.baseline_rate <= 0:
            return None
        return self.rate / self.baseline_rate


def baseline_row(case: str, name: str, unit: str, samples: list[float], note: str = "") -> Row:
    return Row(case, name, unit, tuple(samples), verdict="baseline", note=note)


def measured_row(
    case: str,
    name: str,
    samples: list[float],
    baseline: Row,
    floor: Floor | None,
    note: str = "",
) -> Row:
    """A library line: its ratio is to ``baseline``'s median, its verdict from ``floor``."""
    rate = statistics.median(samples)
    ratio = rate / baseline.rate if baseline.rate > 0 else None
    return Row(
        case,
        name,
        "records",
        tuple(samples),
        baseline=baseline.name,
        baseline_rate=baseline.rate,
        floor=floor,
        verdict=floor.verdict(rate, ratio) if floor is not None else "context",
        note=note,
    )


# --- plumbing -------------------------------------------------------------------


@contextmanager
def scratch_dir(parent: Path | None, label: str) -> Iterator[Path]:
    """A fresh directory for one benchmark, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"unbundled-bench-{label}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raw_connect(path: Path) -> sqlite3.Connection:
    """A raw connection with the log's durability: WAL, synchronous=FULL, explicit BEGIN."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def raw_create(path: Path) -> sqlite3.Connection:
    conn = raw_connect(path)
    conn.execute(RAW_SCHEMA)
    return conn


def open_log(path: Path) -> Log:
    log = Log.open(path, sync="full")
    log.create_topic(TOPIC, partitions=1)
    return log


def writer_transactions(log: Log | AsyncLog) -> int:
    """Committed transactions of the log's group-commit writer so far."""
    return cast(SqliteBackend, log.backend)._writer.transactions


def values(count: int) -> list[bytes]:
    """``count`` distinct 100-byte values (distinct so nothing compresses or dedupes)."""
    return [f"{i:0{VALUE_BYTES}d}".encode() for i in range(count)]


def run_threads(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` on ``count`` threads released together; seconds until all finish.

    A worker's exception is re-raised here so a broken run never reports a rate.
    """
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


# --- 4. fsync floor ---------------------------------------------------------------


def fsync_rate(directory: Path, seconds: float) -> float:
    """fsyncs/s of the disk under ``directory``: rewrite 1 byte, fsync, repeat."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            os.pwrite(fd, b"x", 0)
            os.fsync(fd)
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                return count / (now - started)
    finally:
        os.close(fd)
        path.unlink()


def bench_fsync(parent: Path | None, *, seconds: float, repeats: int) -> list[Row]:
    with scratch_dir(parent, "fsync") as directory:
        samples = [fsync_rate(directory, seconds) for _ in range(repeats)]
    return [Row("4", "fsync floor: write 1 byte + os.fsync", "fsyncs", tuple(samples))]


# --- 1. batched append ------------------------------------------------------------


def _log_batched(path: Path, data: list[bytes], batch: int) -> float:
    with open_log(path) as log:
        started = time.perf_counter()
        for i in range(0, len(data), batch):
            log.append_batch(TOPIC, data[i : i + batch])
        elapsed = time.perf_counter() - started
        if log.end_offsets(TOPIC)[0] != len(data):
            raise AssertionError("the log lost records in the batched append benchmark")
    return len(data) / elapsed


def _raw_batched(path: Path, data: list[bytes], batch: int) -> float:
    conn = raw_create(path)
    try:
        started = time.perf_counter()
        for i in range(0, len(data), batch):
            ts = time.time_ns() // 1_000_000
            conn.execute("BEGIN")
            conn.executemany(
                RAW_INSERT, [(i + j, None, v, ts) for j, v in enumerate(data[i : i + batch])]
            )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(data) / elapsed


def bench_batched_append(
    parent: Path | None, *, records: int, batch: int = 1000, repeats: int
) -> list[Row]:
    """Case 1: ``append_batch`` of 1,000 x 100 B vs ``executemany``, one commit per batch."""
    data = values(records)
    lib: list[float] = []
    raw: list[float] = []
    with scratch_dir(parent, "append-batch") as directory:
        for rep in range(repeats):
            lib.append(_log_batched(directory / f"log-{rep}.db", data, batch))
            raw.append(_raw_batched(directory / f"raw-{rep}.db", data, batch))
    base = baseline_row(
        "1", f"raw sqlite3 executemany, {batch:,}/txn", "records", raw, f"{records:,} records"
    )
    return [
        measured_row(
            "1",
            f"Log.append_batch, {batch:,}/batch",
            lib,
            base,
            Floor(ratio_min=0.7),
            f"{records:,} records",
        ),
        base,
    ]


# --- 2. concurrent durable single appends ------------------------------------------


def _raw_one_thread(path: Path, records: int, value: bytes) -> float:
    conn = raw_create(path)
    try:
        started = time.perf_counter()
        for _ in range(records):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(RAW_INSERT, (None, None, value, time.time_ns() // 1_000_000))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return records / elapsed


def _raw_shared(path: Path, writers: int, per_writer: int, value: bytes) -> float:
    conn = raw_create(path)
    lock = threading.Lock()

    def work(_: int) -> None:
        for _ in range(per_writer):
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(RAW_INSERT, (None, None, value, time.time_ns() // 1_000_000))
                conn.execute("COMMIT")

    try:
        elapsed = run_threads(writers, work)
    finally:
        conn.close()
    return writers * per_writer / elapsed


def _raw_own(path: Path, writers: int, per_writer: int, value: bytes) -> float:
    raw_create(path).close()
    conns = [raw_connect(path) for _ in range(writers)]

    def work(i: int) -> None:
        conn = conns[i]
        for _ in range(per_writer):
            # IMMEDIATE takes the write lock up front, so a busy writer waits in
            # SQLite's busy handler instead of failing on a lock upgrade.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(RAW_INSERT, (None, None, value, time.time_ns() // 1_000_000))
            conn.execute("COMMIT")

    try:
        elapsed = run_threads(writers, work)
    finally:
        for conn in conns:
            conn.close()
    return writers * per_writer / elapsed


def _log_one_thread(path: Path, records: int, value: bytes) -> float:
    """Records/s of one thread calling ``Log.append`` (no other writer)."""
    with open_log(path) as log:
        started = time.perf_counter()
        for _ in range(records):
            log.append(TOPIC, value)
        elapsed = time.perf_counter() - started
        if log.end_offsets(TOPIC)[0] != records:
            raise AssertionError("the log lost records in the one-thread append benchmark")
    return records / elapsed


def _log_threads(path: Path, writers: int, per_writer: int, value: bytes) -> tuple[float, float]:
    """Records/s and records per transaction of ``writers`` threads on ``Log.append``."""
    with open_log(path) as log:
        before = writer_transactions(log)

        def work(_: int) -> None:
            for _ in range(per_writer):
                log.append(TOPIC, value)

        elapsed = run_threads(writers, work)
        transactions = writer_transactions(log) - before
        total = writers * per_writer
        if log.end_offsets(TOPIC)[0] != total:
            raise AssertionError("the log lost records in the threaded append benchmark")
    return total / elapsed, total / max(transactions, 1)


async def _log_tasks_async(
    path: Path, writers: int, per_writer: int, value: bytes
) -> tuple[float, float]:
    log = await AsyncLog.open(path, sync="full")
    try:
        await log.create_topic(TOPIC, partitions=1)
        start = asyncio.Event()

        async def work() -> None:
            await start.wait()
            for _ in range(per_writer):
                await log.append(TOPIC, value)

        tasks = [asyncio.create_task(work()) for _ in range(writers)]
        await asyncio.sleep(0)  # let every task reach start.wait()
        before = writer_transactions(log)
        started = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        transactions = writer_transactions(log) - before
        total = writers * per_writer
        end = (await log.describe_topic(TOPIC)).partitions[0].end_offset
        if end != total:
            raise AssertionError("the log lost records in the asyncio append benchmark")
    finally:
        await log.close()
    return total / elapsed, total / max(transactions, 1)


def _log_tasks(path: Path, writers: int, per_writer: int, value: bytes) -> tuple[float, float]:
    return asyncio.run(_log_tasks_async(path, writers, per_writer, value))


def bench_concurrent_appends(
    parent: Path | None,
    *,
    writers: int = 64,
    per_writer_log: int,
    per_writer_tasks: int,
    raw_records: int,
    raw_per_writer: int,
    repeats: int,
) -> list[Row]:
    """Case 2: durable single-record appends from ``writers`` concurrent writers.

    Baselines, one commit per record: one thread; ``writers`` threads sharing a
    locked connection; ``writers`` threads with a connection each. The library
    lines' ratios are to the best of the three.
    """
    value = values(1)[0]
    keys = ("one", "shared", "own", "threads", "tasks", "log-one")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    per_txn: dict[str, list[float]] = {"threads": [], "tasks": []}
    with scratch_dir(parent, "append-one") as d:
        for rep in range(repeats):
            samples["one"].append(_raw_one_thread(d / f"one-{rep}.db", raw_records, value))
            samples["log-one"].append(_log_one_thread(d / f"log-one-{rep}.db", raw_records, value))
            samples["shared"].append(
                _raw_shared(d / f"shared-{rep}.db", writers, raw_per_writer, value)
            )
            samples["own"].append(_raw_own(d / f"own-{rep}.db", writers, raw_per_writer, value))
            rate, txn = _log_threads(d / f"threads-{rep}.db", writers, per_writer_log, value)
            samples["threads"].append(rate)
            per_txn["threads"].append(txn)
            rate, txn = _log_tasks(d / f"tasks-{rep}.db", writers, per_writer_tasks, value)
            samples["tasks"].append(rate)
            per_txn["tasks"].append(txn)
    raw = [
        baseline_row(
            "2",
            "raw: 1 thread, BEGIN/INSERT/COMMIT per record",
            "records",
            samples["one"],
            f"{raw_records:,} records",
        ),
        baseline_row(
            "2",
            f"raw: {writers} threads, 1 shared connection + lock",
            "records",
            samples["shared"],
            f"{writers} x {raw_per_writer:,} records",
        ),
        baseline_row(
            "2",
            f"raw: {writers} threads, own connection each",
            "records",
            samples["own"],
            f"{writers} x {raw_per_writer:,} records; busy_timeout",
        ),
    ]
    best = max(raw, key=lambda r: r.rate)

    def note(key: str, per_writer: int) -> str:
        txn = statistics.median(per_txn[key])
        return f"{writers} x {per_writer:,} records; {txn:,.1f} records/txn"

    return [
        *raw,
        measured_row(
            "2a",
            f"Log.append, {writers} threads",
            samples["threads"],
            best,
            Floor(ratio_min=6, rate_min=20_000),
            note("threads", per_writer_log),
        ),
        measured_row(
            "2b",
            f"AsyncLog.append, {writers} asyncio tasks",
            samples["tasks"],
            best,
            Floor(ratio_min=15, rate_min=50_000),
            note("tasks", per_writer_tasks),
        ),
        measured_row(
            "2c",
            "Log.append, 1 thread alone",
            samples["log-one"],
            raw[0],
            None,
            f"{raw_records:,} records; the caller commits itself when the writer is idle",
        ),
    ]


# --- 3. sequential read -------------------------------------------------------------


def _fill(path: Path, records: int) -> None:
    """Write ``records`` 100-byte values in the largest batches a call allows."""
    data = values(records)
    with open_log(path) as log:
        step = 100_000  # limits.batch_records_max
        for i in range(0, records, step):
            log.append_batch(TOPIC, data[i : i + step])


def _log_read(log: Log, records: int) -> float:
    started = time.perf_counter()
    offset = count = 0
    while True:
        batch = log.read(TOPIC, 0, offset, records_max=10_000)
        if not batch:
            break
        count += len(batch)
        offset = batch[-1].offset + 1
    elapsed = time.perf_counter() - started
    if count != records:
        raise AssertionError(f"Log.read returned {count} records, expected {records}")
    return count / elapsed


def _log_scan(log: Log, records: int) -> float:
    started = time.perf_counter()
    count = 0
    for _ in log.scan(TOPIC, 0, 0):
        count += 1
    elapsed = time.perf_counter() - started
    if count != records:
        raise AssertionError(f"Log.scan returned {count} records, expected {records}")
    return count / elapsed


def _raw_select(conn: sqlite3.Connection, sql: str, records: int) -> float:
    started = time.perf_counter()
    count = 0
    for _ in conn.execute(sql):
        count += 1
    elapsed = time.perf_counter() - started
    if count != records:
        raise AssertionError(f"raw SELECT returned {count} rows, expected {records}")
    return count / elapsed


def _raw_fill(path: Path, records: int) -> None:
    """The same values stored as a hand-written log would: a row per record."""
    conn = raw_create(path)
    try:
        conn.execute("BEGIN")
        conn.executemany(RAW_INSERT, ((i, None, v, 0) for i, v in enumerate(values(records))))
        conn.execute("COMMIT")
    finally:
        conn.close()


def bench_sequential_read(parent: Path | None, *, records: int, repeats: int) -> list[Row]:
    """Case 3: read a partition of ``records`` x 100 B, vs a raw SELECT of the
    same records stored a row each (the log stores a ``delete`` topic's records
    in batches: its own table is no longer the hand-written baseline)."""
    with scratch_dir(parent, "read") as directory:
        path = directory / "read.db"
        _fill(path, records)
        _raw_fill(directory / "raw.db", records)
        raw = raw_connect(directory / "raw.db")
        sql = "SELECT offset, key, value, ts FROM log ORDER BY offset"
        lib_read: list[float] = []
        lib_scan: list[float] = []
        raw_rates: list[float] = []
        try:
            with Log.open(path, sync="full") as log:
                _raw_select(raw, sql, records)  # warm the page cache for everyone
                for _ in range(repeats):
                    lib_read.append(_log_read(log, records))
                    lib_scan.append(_log_scan(log, records))
                    raw_rates.append(_raw_select(raw, sql, records))
        finally:
            raw.close()
    note = f"{records:,} records"
    base = baseline_row(
        "3", "raw sqlite3 SELECT ... ORDER BY offset, a row each", "records", raw_rates, note
    )
    floor = Floor(ratio_min=0.5)
    return [
        measured_row("3", "Log.read loop, 10,000/call", lib_read, base, floor, note),
        measured_row("3", "Log.scan", lib_scan, base, floor, note),
        base,
    ]


# --- 5. crash test ------------------------------------------------------------------


@dataclass(frozen=True)
class CrashResult:
    """The crash test's outcome as the table shows it."""

    kills: int
    acknowledged: int
    present: int
    lost: int
    duplicates: int
    retries: int  # re-sent appends answered with their original positions
    seed: int
    ok: bool
    seconds: float
    summary: str  # the report's own text: on failure, what failed and how to replay


def bench_crash(
    parent: Path | None,
    *,
    kills: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> CrashResult:
    """Case 5: SIGKILL a durable appender ``kills`` times; nothing acknowledged may go."""
    with scratch_dir(parent, "crash") as directory:
        report = run_crash_test(directory, kills, seed=seed, progress=progress)
    return CrashResult(
        kills=report.kills,
        acknowledged=report.acknowledged,
        present=report.present,
        lost=report.lost,
        duplicates=report.duplicates,
        retries=report.retries,
        seed=report.seed,
        ok=report.ok,
        seconds=report.elapsed_s,
        summary=report.summary(),
    )
