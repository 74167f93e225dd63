"""``unbundled demo`` runs end to end (with fewer records) and verifies what it claims."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from unbundled.demo import run_demo


def test_the_demo_passes_and_lists_the_guarantees(tmp_path: Path) -> None:
    console = Console(record=True, width=200, force_terminal=False)
    assert run_demo(console, tmp_path, records=2000), console.export_text()
    text = console.export_text()
    for check in (
        "every order acknowledged",
        "every order processed exactly once",
        "per-key order preserved in the output",
        "offsets dense in both topics",
        "committed offsets == end offsets (lag 0)",
        "partitions taken over",
    ):
        line = next((row for row in text.splitlines() if check in row), None)
        assert line is not None, f"{check!r} missing from:\n{text}"
        assert "✓" in line and "✗" not in line, line
    assert "SIGKILL member-" in text
    assert "demo: all checks passed" in text
    assert (tmp_path / "demo.db").exists()
