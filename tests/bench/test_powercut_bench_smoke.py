"""The power-cut benchmark at a tiny size: 10 cuts (one per case), its table
written, no failure. Needs FUSE, as tests/lazyfs does."""

from __future__ import annotations

from pathlib import Path

from bench import powercut_bench, run
from tests.lazyfs.conftest import require_fuse


def test_powercut_bench_runs_and_writes_its_table(tmp_path: Path) -> None:
    require_fuse()
    output = tmp_path / "powercut.md"
    status = powercut_bench.main(["--cuts", "10", "--seed", "3", "--output", str(output)])
    assert status == 0
    text = output.read_text()
    assert "| total |  | 10 |" in text
    assert "(a reduced run)" in text
    for part in ("log", "events", "idempotency", "kv", "unit"):
        assert f"| {part} | full | 1 |" in text and f"| {part} | normal | 1 |" in text


def test_run_offers_the_powercut_suite() -> None:
    assert "powercut" in run._other_suites(quick=True)
