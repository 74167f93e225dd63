"""The CDC benchmark at tiny sizes against the local PostgreSQL: each case runs, returns
positive figures, and leaves no slot, publication or schema behind (also when a case
fails half-way). No speed is asserted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import cdc_bench as cb
from bench import cdc_report as cr
from bench import run
from tests.cdc._pg import need_logical, pg

TINY = cb.Sizes(
    repeats=1,
    rows=300,
    txn_rows=100,
    lag_rate=500,
    lag_seconds=0.4,
    lag_txn_rows=10,
    memory_rows=2_000,
)


def leftovers() -> list[str]:
    """Slots, publications and schemas of any benchmark run (ours use these prefixes)."""
    slots = pg(
        "SELECT slot_name FROM pg_replication_slots "
        "WHERE slot_name LIKE 'cdcbench%%' OR slot_name LIKE 'unbundled_bench%%'"
    )
    pubs = pg(
        "SELECT pubname FROM pg_publication "
        "WHERE pubname LIKE 'cdcbench%%' OR pubname LIKE 'unbundled_bench%%'"
    )
    schemas = pg("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cdcbench%%'")
    return [str(r[0]) for r in [*slots, *pubs, *schemas]]


@pytest.fixture
def clean_server() -> None:
    need_logical()
    if cb.recvlogical_path() is None:
        pytest.skip("pg_recvlogical is not installed (Debian: postgresql-client)")
    assert leftovers() == []  # another run's leftovers would make the check below moot


def test_throughput_both_sides(tmp_path: Path, clean_server: None) -> None:
    binary = cb.recvlogical_path()
    assert binary is not None
    thr = cb.bench_throughput(tmp_path, TINY, binary)
    assert len(thr.raw) == len(thr.ours) == len(thr.recv) == TINY.repeats
    assert all(math.isfinite(v) and v > 0 for v in (*thr.raw, *thr.ours, *thr.recv))
    assert thr.ratio > 0
    assert leftovers() == []
    assert list(tmp_path.iterdir()) == []  # the scratch log is gone too


def test_lag_sees_every_row(tmp_path: Path, clean_server: None) -> None:
    lag = cb.bench_lag(tmp_path, TINY)
    assert lag.seen == int(TINY.lag_rate * TINY.lag_seconds)
    assert 0 < lag.p50_ms <= lag.p99_ms <= lag.max_ms
    assert lag.rate > 0
    assert leftovers() == []


def test_memory_of_one_transaction(tmp_path: Path, clean_server: None) -> None:
    mem = cb.bench_memory(tmp_path, TINY.memory_rows)
    assert mem.rows == TINY.memory_rows
    assert 0 < mem.before_kb <= mem.peak_kb and mem.seconds > 0
    assert leftovers() == []


def test_a_failing_case_still_drops_what_it_created(tmp_path: Path, clean_server: None) -> None:
    with pytest.raises(RuntimeError, match="half-way"), cb.Scratch(tmp_path) as scratch:
        scratch.add_connector()
        scratch.add_raw_slot()
        assert len(leftovers()) == 6  # three slots, two publications, the schema
        raise RuntimeError("half-way")
    assert leftovers() == []


def test_report_rows_and_markdown() -> None:
    thr = cb.Throughput(raw=(100.0, 120.0, 110.0), ours=(90.0, 95.0, 80.0), recv=(99.0,))
    assert thr.ratio == pytest.approx(90 / 110)
    rows = cr.table_rows(
        cb.FULL,
        thr,
        cb.Lag(5.0, 40.0, 60.0, 50_000, 5_000.0),
        [cb.Memory(100_000, 10, 20, 1.0), cb.Memory(1_000_000, 10, 20, 2.0)],
    )
    assert [r[6] for r in rows] == [
        "baseline",
        "PASS",
        "context",
        "",
        "PASS",
        "measured",
        "measured",
    ]
    assert rows[2][4] == "0.90x"  # receiving only, against pg_recvlogical
    assert all(len(r) == len(cr.HEADERS) for r in rows)
    slow = cr.table_rows(cb.FULL, cb.Throughput((100.0,), (70.0,), (100.0,)), None, [])
    assert slow[1][4:7] == ["0.70x", ">= 0.8x", "BELOW FLOOR"]
    text = cr.markdown([("CPUs", "2")], rows, ["a note"])
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows)
    assert "- a note" in text and "3. Memory" in text


def test_run_accepts_only_cdc() -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--only", "cdc", "--help"])
    assert info.value.code == 0
