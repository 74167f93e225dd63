"""The NATS event-store how-to's examples run, in order, against the real server,
in a fresh bucket (the page's ``bank`` renamed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.backends.nats._nats import delete_bucket, fresh_bucket, server
from unbundled.eventstore import EventStore

pytestmark = pytest.mark.nats

PAGE = Path(__file__).resolve().parents[3] / "docs" / "how-to" / "eventstore-nats.md"
FENCE = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host_port = server().removeprefix("nats://")
    bucket = fresh_bucket("test_howto")
    blocks = FENCE.findall(PAGE.read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for number, block in enumerate(blocks, 1):
            source = re.sub(r"\bbank\b", bucket, block).replace("127.0.0.1:4222", host_port)
            exec(compile(source, f"{PAGE.name}:block{number}", "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, EventStore):
                value.close()
        delete_bucket(bucket)
