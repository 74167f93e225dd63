"""The benchmark functions at tiny sizes: they run, count what they wrote, and
return well-formed rows. No timing is asserted: rates only have to be positive."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from bench import common, log_bench, run

VERDICTS = {"PASS", "baseline", "context"}


def check_rows(rows: list[log_bench.Row], repeats: int) -> None:
    assert rows
    for row in rows:
        assert row.case and row.name and row.unit
        assert len(row.samples) == repeats, row
        assert all(math.isfinite(s) and s > 0 for s in row.samples), row
        assert row.rate == statistics.median(row.samples)
        assert row.verdict in VERDICTS or row.verdict.startswith("BELOW FLOOR ("), row
        if row.verdict == "baseline":
            assert row.floor is None and row.ratio is None
        if row.floor is not None:
            # A library line: its ratio is of medians, to a baseline in the same list.
            baseline = next(r for r in rows if r.name == row.baseline)
            assert row.baseline_rate == baseline.rate
            assert row.ratio == pytest.approx(row.rate / baseline.rate)
            assert row.verdict == row.floor.verdict(row.rate, row.ratio)
    # Every line renders to a full table row.
    for row in rows:
        assert len(common.cells(row)) == len(common.HEADERS)


def test_floor_verdicts_name_what_missed() -> None:
    floor = log_bench.Floor(ratio_min=6, rate_min=20_000)
    assert floor.verdict(25_000, 7.0) == "PASS"
    assert floor.verdict(25_000, 3.0) == "BELOW FLOOR (ratio)"
    assert floor.verdict(10_000, 7.0) == "BELOW FLOOR (rate)"
    assert floor.verdict(10_000, None) == "BELOW FLOOR (rate, ratio)"
    assert floor.describe() == ">= 20,000/s and >= 6x"


def test_fsync(tmp_path: Path) -> None:
    rows = log_bench.bench_fsync(tmp_path, seconds=0.01, repeats=2)
    check_rows(rows, 2)
    assert rows[0].case == "4"
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_batched_append(tmp_path: Path) -> None:
    rows = log_bench.bench_batched_append(tmp_path, records=2_000, batch=500, repeats=2)
    check_rows(rows, 2)
    assert [r.verdict == "baseline" for r in rows] == [False, True]
    assert rows[0].floor == log_bench.Floor(ratio_min=0.7)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_appends(tmp_path: Path) -> None:
    rows = log_bench.bench_concurrent_appends(
        tmp_path,
        writers=4,
        per_writer_log=5,
        per_writer_tasks=5,
        raw_records=20,
        raw_per_writer=3,
        repeats=2,
    )
    check_rows(rows, 2)
    assert [r.case for r in rows] == ["2", "2", "2", "2a", "2b", "2c"]
    best = max(rows[:3], key=lambda r: r.rate)
    assert rows[3].baseline == rows[4].baseline == best.name
    assert rows[5].baseline == rows[0].name and rows[5].verdict == "context"  # vs 1 raw thread
    assert "records/txn" in rows[3].note and "records/txn" in rows[4].note


def test_sequential_read(tmp_path: Path) -> None:
    rows = log_bench.bench_sequential_read(tmp_path, records=3_000, repeats=2)
    check_rows(rows, 2)
    assert [r.name for r in rows if r.verdict != "baseline"] == [
        "Log.read loop, 10,000/call",
        "Log.scan",
    ]


def test_crash_result_and_markdown(tmp_path: Path) -> None:
    seen: list[int] = []
    crash = log_bench.bench_crash(tmp_path, kills=2, seed=7, progress=seen.append)
    assert seen == [1, 2]
    assert crash.kills == 2 and crash.seed == 7
    assert crash.ok, crash.summary
    assert crash.lost == crash.duplicates == 0
    assert crash.present == crash.acknowledged
    assert len(run.crash_cells(crash)) == len(run.CRASH_HEADERS)

    fsync = log_bench.bench_fsync(tmp_path, seconds=0.01, repeats=1)[0]
    rows = log_bench.bench_batched_append(tmp_path, records=1_000, batch=500, repeats=1)
    text = run.markdown(run.machine_facts(fsync, run.QUICK), rows, crash, ["a note"])
    lines = text.splitlines()
    assert lines[0] == "# Log benchmarks"
    table = [line for line in lines if line.startswith("| ")]
    # Header, separator and one line per row, then the crash table's three.
    assert len(table) == 2 + len(rows) + 3
    assert all(line.count(" | ") == len(common.HEADERS) - 1 for line in table[: 2 + len(rows)])
    assert "SQLite" in text and "fsync rate" in text and "- a note" in text
