"""The idempotency benchmark at tiny sizes, unbundled's side only: the
competitor (Powertools) lives in bench/.venv, never in this venv. The
functions run, check what the handlers did, and return well-formed rows. No
timing is asserted: latencies only have to be positive."""

from __future__ import annotations

import math
import tomllib
import uuid
from pathlib import Path

import pytest
import redis

from bench import bench_venv, run
from bench import idempotency_bench as ib
from tests.conftest import require_server

TINY = ib.Sizes(repeats=2, calls=20, warmup=3)


def check_rows(rows: list[ib.LatencyRow], names: list[str]) -> None:
    assert [r.name for r in rows] == names
    for row in rows:
        assert len(row.p50s) == len(row.p99s) == TINY.repeats, row
        assert all(math.isfinite(v) and v > 0 for v in (*row.p50s, *row.p99s)), row
        assert all(p50 <= p99 for p50, p99 in zip(row.p50s, row.p99s, strict=True)), row
        # Without the competitor there is no baseline: context lines only.
        assert (row.verdict, row.baseline, row.floor, row.ratio) == ("context", None, None, None)
        assert len(ib.cells(row)) == len(ib.HEADERS)


def test_memory_and_sqlite_sides(tmp_path: Path) -> None:
    rows = ib.bench_idempotency(tmp_path, TINY, None, None)
    sqlite = 'unbundled, SQLite (sync="full")'
    check_rows(
        rows,
        [
            f"{sqlite}: new key",
            "unbundled, memory: new key",
            f"{sqlite}: repeated key",
            "unbundled, memory: repeated key",
        ],
    )
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_redis_side_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, port = require_server("redis")
    # This run's own prefix: another run of the suite on the same server
    # (CI beside a developer's run) has its keys under the default one.
    prefix = f"bench:unbundled:test-{uuid.uuid4().hex[:12]}:"
    monkeypatch.setattr(ib, "REDIS_PREFIX", prefix)
    rows = ib.bench_idempotency(tmp_path, TINY, None, (host, port))
    check_rows(
        rows,
        [
            "unbundled, Redis: new key",
            'unbundled, SQLite (sync="full"): new key',
            "unbundled, memory: new key",
            "unbundled, Redis: repeated key",
            'unbundled, SQLite (sync="full"): repeated key',
            "unbundled, memory: repeated key",
            "redis-py PING round trip (the floor of any Redis call)",
        ],
    )
    client = redis.Redis(host=host, port=port)
    try:
        assert list(client.scan_iter(match=prefix + "*")) == []
    finally:
        client.close()


def test_a_handler_that_runs_when_it_must_not_is_caught() -> None:
    runs = [0]

    def not_idempotent(key: str, payload: dict[str, object]) -> None:
        runs[0] += 1

    with pytest.raises(AssertionError, match="ran 20 times in a repeated-key run"):
        ib.run_case(not_idempotent, "repeated", TINY, lambda: runs[0])


def test_ratios_and_floors_against_a_baseline() -> None:
    base = ib.LatencyRow("2", "rival", (300.0, 280.0, 320.0), (400.0, 400.0, 400.0))
    fast = ib.judged(ib.LatencyRow("2", "ours", (100.0,), (150.0,)), base, ib.Floor(2.5))
    assert (fast.baseline, fast.baseline_p50, fast.ratio, fast.verdict) == (
        "rival",
        300.0,
        3.0,
        "PASS",
    )
    slow = ib.judged(ib.LatencyRow("1", "ours", (301.0,), (350.0,)), base, ib.Floor(1.0))
    assert slow.verdict == "BELOW FLOOR" and ib.Floor(1.0).describe() == "no slower (>= 1x)"
    context = ib.judged(ib.LatencyRow("1", "sqlite", (900.0,), (950.0,)), base, None)
    assert context.verdict == "context" and context.ratio == pytest.approx(1 / 3)
    assert ib.percentiles(list(range(1, 101))) == (0.051, 0.1)


def test_markdown_report(tmp_path: Path) -> None:
    rows = ib.bench_idempotency(tmp_path, TINY, None, None)
    facts = ib.machine_facts(TINY, None, None)
    assert ("Powertools", "not installed") in facts
    text = ib.markdown(facts, rows, ["a note"])
    lines = text.splitlines()
    assert lines[0] == "# Idempotency benchmarks"
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 2 + len(rows)
    assert all(line.count(" | ") == len(ib.HEADERS) - 1 for line in table)
    assert "- a note" in text and "Redis: not reachable" in text
    assert text.count("\n1. ") == 1 and "3. Context" in text


def test_competitor_is_only_in_the_bench_environment() -> None:
    root = Path(ib.__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert not [d for d in declared if "powertools" in d.lower()]
    requirements = bench_venv.REQUIREMENTS.read_text().splitlines()
    assert "aws-lambda-powertools[redis,aws-sdk]==3.*" in requirements
    assert ib.load_rival() is None  # not importable in the dev venv


def test_run_accepts_only_idempotency() -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--only", "idempotency", "--help"])
    assert info.value.code == 0
