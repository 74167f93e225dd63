"""The harnesses themselves: they start what they say, find leaders, kill and
restart, and leave no process, namespace or directory behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.cluster.conftest import require, shm_or_tmp
from unbundled.consistency import KV
from unbundled.errors import Unavailable, UsageError
from unbundled.testing.natscluster import NatsCluster, nats_server_unavailable
from unbundled.testing.netns import NetNamespaces, netns_unavailable
from unbundled.testing.pginstance import PostgresInstance, postgres_unavailable


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie not yet reaped by its parent counts as gone.
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" in status


@pytest.mark.nats
def test_a_single_nats_server_serves_and_leaves_nothing() -> None:
    require(nats_server_unavailable())
    cluster = NatsCluster(nodes=1, sync_interval=None)
    root = cluster.root
    with cluster:
        assert cluster.meta_leader() is cluster.nodes[0]
        with KV.open(f"{cluster.url}?bucket=single") as kv:
            assert kv.write("a", b"1") == 1
        assert cluster.kv_leader("single") is cluster.nodes[0]
        assert cluster.streams()["KV_single"].replicas == 1
        config = (cluster.nodes[0].directory / "server.conf").read_text()
        assert "sync_interval" not in config and "cluster {" not in config
        assert cluster.nodes[0].url_at("127.0.0.1") == cluster.url
        with pytest.raises(UsageError, match=r"listens on 127\.0\.0\.1 only"):
            cluster.nodes[0].url_at("10.0.0.1")  # loopback only, unless told
        pid = cluster.nodes[0].process.pid if cluster.nodes[0].process else -1
    assert _gone(pid)
    assert not root.exists()  # made by the cluster, removed by it


@pytest.mark.nats
def test_a_cluster_node_killed_and_restarted_rejoins(nats_cluster: NatsCluster) -> None:
    assert "sync_interval: always" in (nats_cluster.nodes[0].directory / "server.conf").read_text()
    victim = nats_cluster.nodes[2]
    killed = nats_cluster.kill(victim.index)
    assert killed is victim and not victim.alive
    assert victim.process is not None and victim.process.returncode == -9
    with pytest.raises(UsageError, match="not running"):
        nats_cluster.kill(victim.index)
    with pytest.raises(Unavailable):
        nats_cluster.jsz(victim.index)
    nats_cluster.restart(victim.name)
    assert victim.alive and nats_cluster.meta_leader() is not None
    with pytest.raises(UsageError, match="running"):
        nats_cluster.restart(victim.index)
    with pytest.raises(UsageError, match="two nodes"):
        NatsCluster(nodes=2)


@pytest.mark.nats
@pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux's")
def test_a_nats_server_listening_everywhere_is_reached_from_a_namespace() -> None:
    require(nats_server_unavailable())
    require(netns_unavailable())
    with (
        NetNamespaces() as nets,
        NatsCluster(nodes=1, sync_interval=None, listen="0.0.0.0") as nats,
    ):
        ns = nets.add("client")
        url = urlsplit(nats.nodes[0].url_at(ns.host_addr))
        assert (url.hostname, url.port) == (ns.host_addr, nats.nodes[0].port)
        hello = "import socket; print(socket.create_connection({!r}, 5).recv(4).decode())"
        for address in (ns.host_addr, "127.0.0.1"):  # the namespace's loopback is its own
            probe = nets.run(
                ns,
                [sys.executable, "-c", hello.format((address, url.port))],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if address == ns.host_addr:
                assert probe.stdout.strip() == "INFO", probe  # the server's greeting
            else:
                assert "ConnectionRefused" in probe.stderr, probe
        with KV.open(f"{nats.url}?bucket=everywhere") as kv:  # loopback still serves
            assert kv.write("a", b"1") == 1


@pytest.mark.postgres
def test_a_private_postgres_stops_every_way_and_leaves_nothing() -> None:
    require(postgres_unavailable())
    pg = PostgresInstance(parent=shm_or_tmp())
    with pg:
        with KV.open(f"{pg.url}?schema=harness") as kv:
            kv.write("kept", b"yes")
        for mode in ("smart", "fast", "immediate"):
            pg.stop(mode)
            assert not pg.running
            pg.start()
        with KV.open(f"{pg.url}?schema=harness") as kv:
            kept = kv.read("kept")
            assert kept is not None and kept.value == b"yes"  # through crash recovery
        assert pg.starts == 4
        pid = pg.process.pid if pg.process else -1
    assert _gone(pid)
    assert not pg.root.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux's")
def test_namespaces_are_removed_with_their_processes() -> None:
    require(netns_unavailable())
    with NetNamespaces() as nets:
        ns = nets.add("a")
        sleeper = nets.popen(ns, ["sleep", "60"])
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        assert ns.name in listed.stdout
        inside = nets.run(ns, ["ip", "-4", "-o", "addr"], capture_output=True, text=True)
        assert f"{ns.addr}/30" in inside.stdout
        with pytest.raises(UsageError):
            nets.add("a")
    assert sleeper.returncode == -9
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert ns.name not in listed.stdout
    links = subprocess.run(["ip", "link"], capture_output=True, text=True, check=True)
    assert ns.host_if not in links.stdout
