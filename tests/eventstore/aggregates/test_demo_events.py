"""The event store demo runs end to end (fewer commands) and verifies what it claims."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from unbundled.demo_events import run_eventstore_demo


def test_the_event_store_demo_passes_every_check(tmp_path: Path) -> None:
    console = Console(record=True, width=200, force_terminal=False)
    assert run_eventstore_demo(console, tmp_path, commands=15), console.export_text()
    text = console.export_text()
    for check in (
        "a concurrent save is refused",
        "no update lost under concurrent saves",
        "no balance below zero",
        "load uses the latest snapshot",
        "time travel by version",
        "time travel by time",
        "a forgotten customer's name is gone",
        "the rest of their events stays readable",
        "other customers are unaffected",
        "no owner name written to the file in plain text",
    ):
        line = next((row for row in text.splitlines() if check in row), None)
        assert line is not None, f"{check!r} missing from:\n{text}"
        assert "✓" in line and "✗" not in line, line
    assert "event store demo: all checks passed" in text
    assert (tmp_path / "events.db").exists()
