"""The CDC part of the demo passes and says what it verified."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from unbundled.demo_cdc import run_cdc_demo


def test_the_cdc_demo_passes(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    assert run_cdc_demo(console, tmp_path)
    text = out.getvalue()
    assert "CDC demo: all checks passed" in text
    for claim in (
        "the CDC-fed view equals the database",
        "the log holds each change once",
        "a view rebuilt from the log equals",
        "dual writes: after 4 kills of the service",
    ):
        assert claim in text
