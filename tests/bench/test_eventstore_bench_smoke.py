"""The event-store benchmark at tiny sizes, unbundled's side only: the
competitor (``eventsourcing``) lives in bench/.venv, never in this venv. The
functions run, check what they wrote, and return well-formed rows. No timing
is asserted: rates only have to be positive."""

from __future__ import annotations

import math
import statistics
import tomllib
from pathlib import Path

import pytest

from bench import bench_venv, common, log_bench, run
from bench import eventstore_bench as eb
from bench import eventstore_report as report

TINY = eb.Sizes(
    repeats=2,
    writers=4,
    per_writer_tasks=3,
    per_writer_threads=3,
    per_writer_rival=1,
    aggregates=30,
    rebuilt=10,
    fsync_seconds=0.01,
)


def check_rows(rows: list[log_bench.Row], repeats: int) -> None:
    for row in rows:
        assert row.case and row.name and row.unit
        assert len(row.samples) == repeats, row
        assert all(math.isfinite(s) and s > 0 for s in row.samples), row
        assert row.rate == statistics.median(row.samples)
        # Without the competitor there is no baseline: context lines only.
        assert (row.verdict, row.baseline, row.floor) == ("context", None, None), row
        assert len(common.cells(row)) == len(common.HEADERS)


def test_appends_from_many_writers(tmp_path: Path) -> None:
    rows = eb.bench_appends(tmp_path, TINY, None)
    check_rows(rows, 2)
    assert [(r.case, r.unit) for r in rows] == [("1a", "events"), ("1b", "events")]
    assert "events/txn" in rows[0].note and "events/txn" in rows[1].note
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_rebuild_and_read_all(tmp_path: Path) -> None:
    rows = eb.bench_reads(tmp_path, TINY, None)
    check_rows(rows, 2)
    assert [(r.case, r.unit) for r in rows] == [("2", "aggregates"), ("3", "events")]
    assert "10 aggregates of 20 events" in rows[0].note
    assert rows[1].note == "600 events"
    assert list(tmp_path.iterdir()) == []


def test_ratios_and_floors_against_a_baseline() -> None:
    base = eb.rival_row("1", "rival", "events", [100.0, 300.0, 200.0])
    ours = eb.row("1a", "ours", "events", [2_500.0, 1_500.0, 2_000.0], base, log_bench.Floor(10))
    assert (ours.baseline, ours.baseline_rate, ours.ratio) == ("rival", 200.0, 10.0)
    assert ours.verdict == "PASS"
    slow = eb.row("1b", "ours", "events", [900.0], base, log_bench.Floor(5))
    assert slow.verdict == "BELOW FLOOR (ratio)"
    alone = eb.row("1a", "ours", "events", [5.0], None, log_bench.Floor(10))
    assert (alone.verdict, alone.ratio, alone.floor) == ("context", None, None)


def test_markdown_report(tmp_path: Path) -> None:
    rows = eb.bench_reads(tmp_path, TINY, None)
    fsync = log_bench.bench_fsync(tmp_path, seconds=0.01, repeats=1)[0]
    facts = report.machine_facts(fsync, TINY, None)
    assert ("eventsourcing", "not installed") in facts
    text = report.markdown(facts, [*rows, fsync], ["a note"])
    lines = text.splitlines()
    assert lines[0] == "# Event-store benchmarks"
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 2 + len(rows) + 1
    assert all(line.count(" | ") == len(common.HEADERS) - 1 for line in table)
    assert "durability" in text and "- a note" in text
    assert text.count("\n1. ") == 1 and "4. fsync floor" in text


def test_competitor_is_only_in_the_bench_environment() -> None:
    root = Path(eb.__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert not [d for d in declared if d.lower().startswith("eventsourcing")]
    requirements = bench_venv.REQUIREMENTS.read_text().splitlines()
    assert "eventsourcing==9.*" in requirements
    assert root / "bench" / ".venv" == bench_venv.VENV
    assert "bench/.venv/" in (root / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("name", ["log", "eventstore"])
def test_run_accepts_only(name: str) -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--only", name, "--help"])
    assert info.value.code == 0
