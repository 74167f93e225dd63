"""The stream-processing part of the demo passes and says what it verified."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from unbundled.demo_streams import run_streams_demo


def test_the_streams_demo_passes(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    assert run_streams_demo(console, tmp_path)
    text = out.getvalue()
    assert "stream-processing demo: all checks passed" in text
    for claim in (
        "the worker was SIGKILLed and restarted",
        "output byte-identical to an uninterrupted run",
        "every window = a batch count, but for its late clicks",
    ):
        assert claim in text
