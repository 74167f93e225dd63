"""The report of ``bench/cdc_bench.py``: the table's rows, machine facts, what each
line measures, and the Markdown page (``bench/results/cdc.md``)."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import statistics
from typing import Any

from bench.common import git_commit, markdown_table, results_page

RATIO_FLOOR = 0.8
LAG_P99_FLOOR_MS = 100.0


HEADERS = ["#", "measured", "median", "min to max", "ratio", "floor", "result", "notes"]


def _rate(value: float) -> str:
    return f"{value:,.0f} changes/s"


def table_rows(sizes: Any, thr: Any | None, lag: Any | None, mems: list[Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    if thr is not None:
        each = f"{sizes.rows:,} inserts in transactions of {sizes.txn_rows}"
        rows.append(
            [
                "1",
                "pg_recvlogical, pgoutput protocol 1, to /dev/null",
                _rate(statistics.median(thr.raw)),
                f"{min(thr.raw):,.0f} to {max(thr.raw):,.0f}",
                "",
                "",
                "baseline",
                each,
            ]
        )
        verdict = "PASS" if thr.ratio >= RATIO_FLOOR else "BELOW FLOOR"
        rows.append(
            [
                "1",
                'CDCProducer, commit to durable in the log (sync="full")',
                _rate(statistics.median(thr.ours)),
                f"{min(thr.ours):,.0f} to {max(thr.ours):,.0f}",
                f"{thr.ratio:.2f}x",
                f">= {RATIO_FLOOR:g}x",
                verdict,
                each,
            ]
        )
        rows.append(
            [
                "1",
                "the least work: psycopg2 receiving the same stream, each message dropped",
                _rate(statistics.median(thr.recv)),
                f"{min(thr.recv):,.0f} to {max(thr.recv):,.0f}",
                f"{statistics.median(thr.recv) / statistics.median(thr.raw):.2f}x",
                "",
                "context",
                each + "; the ceiling of a Python producer before it decodes anything",
            ]
        )
    if lag is not None:
        at = f"writer kept {lag.rate:,.0f} changes/s; {lag.seen:,} rows seen"
        rows.append(["2", "lag, commit to derived view: p50", f"{lag.p50_ms:.1f} ms"] + [""] * 4)
        rows[-1].append(at)
        verdict = "PASS" if lag.p99_ms < LAG_P99_FLOOR_MS else "BELOW FLOOR"
        rows.append(
            [
                "2",
                "lag, commit to derived view: p99",
                f"{lag.p99_ms:.1f} ms",
                f"max {lag.max_ms:.1f} ms",
                "",
                f"< {LAG_P99_FLOOR_MS:g} ms",
                verdict,
                at,
            ]
        )
    for mem in mems:
        rows.append(
            [
                "3",
                f"memory: peak RSS growth, one {mem.rows:,}-row transaction",
                f"{mem.growth_kb / 1024:,.1f} MiB",
                f"{mem.before_kb / 1024:,.1f} -> {mem.peak_kb / 1024:,.1f} MiB",
                "",
                "",
                "measured",
                f"captured in {mem.seconds:,.1f} s ({mem.rows / mem.seconds:,.0f} changes/s)",
            ]
        )
    return rows


def machine_facts(sizes: Any, binary: str | None, server: str) -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", f"{os.cpu_count()} (PostgreSQL, the producer and the baseline share them)"),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("PostgreSQL", f"{server} on 127.0.0.1 (loopback, same machine)"),
        ("pg_recvlogical", binary or "not found"),
        (
            "runs",
            f"case 1: median of {sizes.repeats} repeats, each on a fresh table with all three "
            "slots created before the writes (the order of the sides rotates); cases 2 and "
            "3: one run",
        ),
    ]


CASES = [
    "Throughput: a fresh table `(id bigint primary key, item text, qty integer, price "
    "numeric(10,2), created timestamptz, sent_us bigint)` gets the inserts; then "
    "`pg_recvlogical --start --no-loop -o proto_version=1 -o publication_names=... -f "
    "/dev/null -E <LSN after the last commit>` is timed from its start to its exit, and "
    "`CDCProducer` (a new process's view: open the log, connect, stream) from its start "
    'until the last change is committed to the log with sync="full", in batches of the '
    "connector's batch_max (1,000). The least work: a third slot on the same publication, "
    "read by psycopg2's LogicalReplicationConnection with the producer's options "
    "(`read_message` in a loop, every message copied to bytes and dropped) until the last "
    "insert arrived: what a Python producer spends before decoding a byte. When it runs "
    "no faster than pg_recvlogical, the server's decoding (the walsender, on the other "
    "core) sets the pace of both, and 0.8x leaves the producer 1 / (0.8 x that rate) of "
    "CPU per change for decoding, the envelope and the durable append.",
    "Lag: a writer thread inserts rows at a steady rate (transactions of 10 rows, one "
    "autocommit INSERT each, paced by the clock), each row carrying `time.time()` taken just "
    "before the statement is sent; the producer runs "
    "in a child process; a consumer thread reads the topic from the log file (polling every "
    "millisecond when idle) and takes the lag of each row when it reads it.",
    "Memory: one transaction inserts every row at once (`INSERT ... SELECT FROM "
    "generate_series`); a child process runs the producer until all are stored; growth is "
    "its peak RSS (`ru_maxrss`) minus its RSS after importing the PostgreSQL drivers and "
    "opening the log, before the first poll. "
    "Measured at a tenth of the size and at the full size: growth that does not follow the "
    "transaction's size is the working set of one batch (batch_max changes), not the "
    "transaction.",
]


def markdown(facts: list[tuple[str, str]], rows: list[list[str]], notes: list[str]) -> str:
    return results_page(
        "CDC benchmarks",
        "Written by `make bench` (`bench/run.py --only cdc`, which runs `bench/cdc_bench.py`). "
        "`pg_recvlogical` and CDCProducer decoded the same WAL, side by side in one run on "
        "this machine.",
        facts,
        markdown_table(HEADERS, rows),
        notes,
        CASES,
    )
