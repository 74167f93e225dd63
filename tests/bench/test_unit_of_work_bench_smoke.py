"""The unit-of-work benchmark at tiny sizes, unbundled's side only: the
competitor (``eventsourcing``) lives in bench/.venv, never in this venv. The
functions run, check what they wrote, leave no file, schema or stream
behind, and return well-formed lines. No timing is asserted: rates only have
to be positive."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import uuid
from pathlib import Path

import psycopg
import pytest

from bench import log_bench, nats_side, run, unit_workload
from bench import unit_of_work_bench as ub
from bench import unit_of_work_report as report
from bench import writer_profile as wp
from tests.conftest import require_server
from unbundled.backends.sqlite import _writer

TINY = ub.Sizes(
    repeats=2,
    writers=4,
    units=3,
    appends=3,
    rival=1,
    pg_units=2,
    pg_appends=2,
    pg_rival=1,
    log=5,
    nats=3,
    profile_units=3,
    profile_log=5,
    fsync_seconds=0.01,
)


def check_lines(lines: list[report.Line]) -> None:
    for line in lines:
        assert line.case and line.name and line.unit
        assert len(line.samples) == TINY.repeats, line
        assert all(math.isfinite(s) and s > 0 for s in line.samples), line
        assert line.rate == statistics.median(line.samples)
        assert len(report.cells(line)) == len(report.HEADERS)
        for versus in line.against:
            # Every comparison is with a baseline line of the same list.
            assert versus.rate in [b.rate for b in lines if b.kind == "baseline"], line


def test_a_unit_of_work_run_writes_every_part(tmp_path: Path) -> None:
    run_ = unit_workload.units(str(tmp_path / "u.db"), 4, 3, log=True, claim_inside=False)
    assert run_.rate > 0 and run_.claim_rate > 0
    assert 1 <= run_.per_commit <= 4 * 3  # transactions share the writer's commits
    inside = unit_workload.units(str(tmp_path / "c.db"), 4, 3, log=True, claim_inside=True)
    assert inside.rate > 0 and inside.claim_rate == 0  # claims are inside the timed loop


def test_sqlite_case(tmp_path: Path) -> None:
    lines = ub.bench_sqlite(tmp_path, TINY, None)
    check_lines(lines)
    assert [(line.case, line.kind) for line in lines] == [
        ("1", "baseline"),
        ("1a", "measured"),
        ("1b", "context"),
        ("1L", "baseline"),
        ("1L", "context"),
    ]
    # The least work: the same rows by raw sqlite3, the unit's held to A's.
    assert [v.label for v in lines[4].against] == ["least A"]
    measured = lines[1]
    # Without the competitor, only A remains: floor 0.7x, judged on the ratio of medians.
    assert [(v.label, v.floor) for v in measured.against] == [("A", log_bench.Floor(0.7))]
    ratio = measured.rate / lines[0].rate
    assert measured.verdict == ("PASS" if ratio >= 0.7 else "BELOW FLOOR (A)")
    assert "claims before the timed region" in measured.note
    assert [v.floor for v in lines[2].against] == [None]
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def _schemas(pid_marker: str) -> list[str]:
    host, port = require_server("postgres")
    with psycopg.connect(f"postgresql://postgres@{host}:{port}/test") as conn:
        rows = conn.execute(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
            (f"bench_%_{pid_marker}_%",),
        ).fetchall()
    return [r[0] for r in rows]


def test_postgres_case_drops_its_schemas() -> None:
    require_server("postgres")
    lines = ub.bench_postgres(TINY, None)
    check_lines(lines)
    assert [(line.case, line.kind) for line in lines] == [
        ("2", "baseline"),
        ("2a", "measured"),
        ("2b", "context"),
    ]
    assert "PostgreSQL" in lines[1].name
    assert _schemas(str(os.getpid())) == []


def test_log_beside_nats_deletes_its_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    require_server("nats")
    prefix = f"UNBUNDLED_TEST_{uuid.uuid4().hex[:8].upper()}_"
    monkeypatch.setattr(nats_side, "STREAM_PREFIX", prefix)
    lines = ub.bench_log_nats(None, TINY, nats=True)
    check_lines(lines)
    assert [(line.case, line.kind) for line in lines] == [("3", "baseline"), ("3a", "measured")]
    assert [v.label for v in lines[1].against] == ["NATS"]
    assert lines[1].verdict in ("PASS", "BELOW FLOOR (NATS)")
    names = asyncio.run(nats_side.stream_names())
    assert not [n for n in names if n.startswith(prefix)]


def test_log_alone_is_context(tmp_path: Path) -> None:
    lines = ub.bench_log_nats(tmp_path, TINY, nats=False)
    check_lines(lines)
    assert [(line.case, line.kind, line.against) for line in lines] == [("3a", "context", ())]


def test_profiles_account_for_the_cycle_and_leave_the_writer_as_it_was(tmp_path: Path) -> None:
    announce = _writer.Writer.__dict__["_announce"]
    serve = _writer.Writer.__dict__["_serve"]
    for profile, items in (
        (unit_workload.profile_log(tmp_path, 4, 5), 20),
        (unit_workload.profile_units(tmp_path, 4, 3), 12),
    ):
        assert 1 <= profile.cycles <= items
        steps = profile.steps()
        names = [name for name, _, _, _ in steps]
        assert "COMMIT (WAL append + fsync)" in names
        assert names[-1].startswith("writer loop")
        # The steps are exclusive: with the rest of the loop they add up to the wall time.
        assert sum(wall for _, wall, _, _ in steps) == pytest.approx(profile.wall_ns, rel=1e-9)
        commit = next(s for s in steps if s[0].startswith("COMMIT"))
        assert commit[2] is not None and commit[3] == profile.cycles
        rows = report.profile_cells(profile)
        assert len(rows) == len(steps)
        assert all(len(r) == len(report.PROFILE_HEADERS) for r in rows)
        assert len(report.profile_summary(profile, items, "records", 1.0, 1000.0)) == 2
    # Nothing of the profiling is left on the writer.
    assert _writer.Writer.__dict__["_announce"] is announce
    assert _writer.Writer.__dict__["_serve"] is serve
    assert list(tmp_path.iterdir()) == []


def test_spans_are_exclusive() -> None:
    spans = wp.Spans()

    def inner() -> None:
        sum(range(10_000))

    timed_inner = spans.timed("inner", inner)

    def outer() -> None:
        timed_inner()
        timed_inner()

    spans.timed("outer", outer, cpu=True)()
    assert spans.calls == {"outer": 1, "inner": 2}
    assert spans.wall["outer"] >= 0 and spans.wall["inner"] > 0
    assert spans.cpu["outer"] > 0 and "inner" not in spans.cpu


def test_verdicts_name_the_baselines_missed() -> None:
    a = report.Versus("A", 100.0, log_bench.Floor(ratio_min=0.7))
    b = report.Versus("B", 10.0, log_bench.Floor(ratio_min=15))
    line = report.Line("1a", "unit", "txns", (80.0, 60.0, 100.0), "measured", (a, b))
    assert line.rate == 80.0
    assert line.verdict == "BELOW FLOOR (B)"  # 0.8x A passes, 8x B does not
    cells = report.cells(line)
    assert cells[4] == "0.80x A; 8.00x B"
    assert cells[5] == ">= 0.7x A; >= 15x B"
    context = report.Line("1b", "unit", "txns", (1.0,), "context", (a, b))
    assert context.verdict == "context" and report.cells(context)[5] == ""


def test_markdown_page(tmp_path: Path) -> None:
    lines = ub.bench_log_nats(tmp_path, TINY, nats=False)
    profile = unit_workload.profile_log(tmp_path, 4, 5)
    facts = report.machine_facts(1000.0, 3, TINY.repeats, {"eventsourcing": "x"}, (0.5, 0.6))
    text = report.markdown(facts, lines, ["a note"], [("3a: the log", profile, ["a summary line"])])
    page = text.splitlines()
    assert page[0] == "# Unit-of-work benchmarks"
    table = [row for row in page if row.startswith("| ")]
    assert len(table) == 2 + len(lines) + 2 + len(profile.steps())
    assert "### 3a: the log" in page and "- a summary line" in page and "- a note" in page
    assert "- eventsourcing: x" in page and "durability" in text
    assert text.count("\n1. ") == 1 and "4. fsync floor" in text


def test_run_accepts_unit() -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--only", "unit", "--help"])
    assert info.value.code == 0
