"""The node-loss how-to's examples run, in order, on the clusters they start
themselves (``docs/how-to/node-loss.md``, fenced as ``py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.conftest import require
from unbundled.testing.natscluster import nats_server_unavailable
from unbundled.testing.pginstance import postgres_unavailable

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "node-loss.md"
FENCE = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(nats_server_unavailable())
    require(postgres_unavailable())
    blocks = FENCE.findall(PAGE.read_text())
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{PAGE.name}:block{number}", "exec"), namespace)
