"""The NATS event-store how-to's examples run, in order, against the real server,
in a fresh bucket (the page's ``bank`` renamed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends.nats._nats import run_howto
from unbundled.eventstore import EventStore

pytestmark = pytest.mark.nats


def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_howto("eventstore-nats.md", "bank", EventStore) >= 3
