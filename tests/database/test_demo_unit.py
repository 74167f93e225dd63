"""The unit-of-work part of the demo passes and says what it verified."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from unbundled.demo_unit import run_unit_demo


def test_the_unit_of_work_demo_passes(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    assert run_unit_demo(console, tmp_path)
    text = out.getvalue()
    assert "unit-of-work demo: all checks passed" in text
    for claim in (
        "committed together",
        "gets the stored reply and writes nothing",
        "a conflict writes nothing",
        "every transaction is whole or absent",
    ):
        assert claim in text
