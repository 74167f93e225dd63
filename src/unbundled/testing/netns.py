"""Network namespaces as separate hosts for tests: run a worker "elsewhere",
cut it off from the network, let it back.

:class:`NetNamespaces` creates Linux network namespaces (``ip netns add``),
each joined to the test's own (root) namespace by a veth pair with the two
addresses of a private /30: the host end (:attr:`Namespace.host_addr`) and
the namespace end (:attr:`Namespace.addr`). A process started in a namespace
(:meth:`NetNamespaces.popen`, :meth:`NetNamespaces.run`) reaches the host
through ``host_addr`` and nothing else: the namespace has no default route,
so no packet leaves the machine. A server that workers must reach listens
on ``host_addr`` (``PostgresInstance(listen=("127.0.0.1", ns.host_addr))``,
or ``NatsCluster(listen="0.0.0.0")`` and ``node.url_at(ns.host_addr)``)::

    with NetNamespaces() as nets:
        worker = nets.add("w1")
        with PostgresInstance(listen=("127.0.0.1", worker.host_addr)) as pg:
            url = pg.url_at(worker.host_addr)
            proc = nets.popen(worker, [sys.executable, "-m", "my.worker", url])
            nets.cut(worker)       # the host end goes down: packets are dropped
            ...                    # the worker's calls time out
            nets.restore(worker)

:meth:`NetNamespaces.cut` takes the host end of the veth down: packets both
ways are dropped silently (no reset, no ICMP), as when a cable is pulled or
a switch dies, so a client sees timeouts, not refusals. :meth:`restore`
brings it up again; the addresses and routes come back with it.

:meth:`NetNamespaces.close` (also on leaving the ``with`` block) SIGKILLs
every process started here and deletes the namespaces, which deletes their
veth pairs. Needs root and iproute2's ``ip``: :func:`netns_unavailable` says
why not. Names and subnets are chosen per process so that runs side by side
on one machine do not collide.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..errors import Unavailable, UsageError
from ._procs import die_with_parent

__all__ = ["NetNamespaces", "Namespace", "netns_unavailable"]

SUPERNET = ipaddress.IPv4Network("10.201.0.0/16")  # /30s are taken from here
_KILL_TIMEOUT_S = 10.0


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (``None``: they can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"ubprobe{os.getpid()}"
    made = subprocess.run(
        ["ip", "netns", "add", probe], check=False, capture_output=True, text=True
    )
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


@dataclass(frozen=True)
class Namespace:
    """One namespace: its name, its veth ends and their addresses."""

    label: str  # the test's name for it
    name: str  # the kernel's (``ip netns``) name
    host_if: str
    ns_if: str
    host_addr: str
    addr: str

    @property
    def cidr(self) -> str:
        return str(ipaddress.ip_network(f"{self.addr}/30", strict=False))


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class NetNamespaces:
    """Namespaces made for one test, all removed by :meth:`close`."""

    def __init__(self) -> None:
        reason = netns_unavailable()
        if reason is not None:
            raise Unavailable(reason)
        self._tag = f"{os.getpid() % 100_000}{random.randrange(36**2):02d}"[-6:]
        self.namespaces: dict[str, Namespace] = {}
        self._processes: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> NetNamespaces:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, label: str) -> Namespace:
        """A new namespace named ``label`` (for the test), with its veth pair up."""
        if label in self.namespaces:
            raise UsageError(f"namespace {label!r} exists", label=label)
        index = len(self.namespaces)
        network = self._free_subnet()
        host_addr, addr = (str(a) for a in list(network.hosts())[:2])
        ns = Namespace(
            label,
            f"ub{self._tag}n{index}",
            f"ub{self._tag}h{index}",  # at most 15 characters, the kernel's limit
            f"ub{self._tag}p{index}",
            host_addr,
            addr,
        )
        self.namespaces[label] = ns  # close() removes it even if the rest fails
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        _ip("link", "set", ns.ns_if, "netns", ns.name)
        _ip("addr", "add", f"{host_addr}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("-n", ns.name, "addr", "add", f"{addr}/30", "dev", ns.ns_if)
        _ip("-n", ns.name, "link", "set", ns.ns_if, "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        return ns

    def __getitem__(self, label: str) -> Namespace:
        return self.namespaces[label]

    def command(self, ns: Namespace, argv: list[str]) -> list[str]:
        """``argv`` run inside ``ns`` (``ip netns exec``), killed by the kernel
        when the thread that starts it ends."""
        return die_with_parent(["ip", "netns", "exec", ns.name, *argv])

    def popen(self, ns: Namespace, argv: list[str], **options: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``ns`` (``subprocess.Popen`` options pass through);
        :meth:`close` kills it if it still runs."""
        process = subprocess.Popen(self.command(ns, argv), **options)
        self._processes.append(process)
        return process

    def run(
        self, ns: Namespace, argv: list[str], **options: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in ``ns`` to its end (``subprocess.run`` options pass
        through; ``check`` is false unless given)."""
        check = bool(options.pop("check", False))
        return subprocess.run(self.command(ns, argv), check=check, **options)

    def cut(self, ns: Namespace) -> None:
        """Cut ``ns`` off: its veth's host end goes down, every packet is dropped."""
        _ip("link", "set", ns.host_if, "down")

    def restore(self, ns: Namespace) -> None:
        """Connect ``ns`` again after :meth:`cut`."""
        _ip("link", "set", ns.host_if, "up")

    def close(self) -> None:
        """Kill the processes started here, delete every namespace. Idempotent."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(_KILL_TIMEOUT_S)
        self._processes.clear()
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)
            # Gone with the namespace's end, unless that never moved there.
            subprocess.run(["ip", "link", "del", ns.host_if], check=False, capture_output=True)
        self.namespaces.clear()

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A /30 of ``SUPERNET`` that no interface of the host uses."""
        used = [
            ipaddress.ip_interface(line.split()[3]).network
            for line in _ip("-4", "-o", "addr").splitlines()
            if len(line.split()) > 3
        ]
        subnets: list[ipaddress.IPv4Network] = list(SUPERNET.subnets(new_prefix=30))
        for _ in range(1000):
            candidate = random.choice(subnets)
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise Unavailable(f"no free /30 left in {SUPERNET}")
