"""``unbundled demo`` runs end to end (with fewer records) and verifies what it claims."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from unbundled.demo import run_demo
from unbundled.demo_events import run_eventstore_demo


def line_of(text: str, check: str) -> str:
    line = next((row for row in text.splitlines() if check in row), None)
    assert line is not None, f"{check!r} missing from:\n{text}"
    return line


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
        line = line_of(text, check)
        assert "✓" in line and "✗" not in line, line
    assert "SIGKILL member-" in text
    assert "demo: all checks passed" in text
    assert (tmp_path / "demo.db").exists()
    # Exactly once is the transaction's doing, not the group's: it says so.
    once = line_of(text, "every order processed exactly once")
    assert "(with log.transaction())" in once
    assert "at-least-once" in text


def test_the_event_store_demo_shows_times_as_times(tmp_path: Path) -> None:
    """Time travel by time names the moment as a UTC time, not epoch milliseconds."""
    console = Console(record=True, width=200, force_terminal=False)
    assert run_eventstore_demo(console, tmp_path, commands=15), console.export_text()
    line = line_of(console.export_text(), "time travel by time")
    assert re.search(r"as of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC: v\d+", line), line
    assert not re.search(r"\d{13}", line), line
