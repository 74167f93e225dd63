"""The PostgreSQL how-to's examples run, in order, against the real server,
in a fresh schema (the page's ``shop`` renamed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unbundled import EventStore

pytestmark = pytest.mark.postgres

PAGE = Path(__file__).resolve().parents[3] / "docs" / "how-to" / "eventstore-postgres.md"
FENCE = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_examples_run(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = pg_url.rpartition("schema=")[2]
    blocks = FENCE.findall(PAGE.read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for number, block in enumerate(blocks, 1):
            source = re.sub(r"\bshop\b", schema, block)
            exec(compile(source, f"{PAGE.name}:block{number}", "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, EventStore):
                value.close()
