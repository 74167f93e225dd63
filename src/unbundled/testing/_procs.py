"""Server processes that die with the test that started them."""

from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path

__all__ = ["die_with_parent", "free_ports"]

# Below the kernel's ephemeral range: a port picked here is not taken by an
# outgoing connection while its server is down between a kill and a restart.
_PORTS_LOW = 20_000


def die_with_parent(command: list[str]) -> list[str]:
    """``command`` run so that the kernel SIGKILLs it when the thread that
    started it ends (``PR_SET_PDEATHSIG``, set by util-linux's ``setpriv``
    just before it execs ``command``; no Python runs between fork and exec).
    Without ``setpriv``, ``command`` as it is: only ``close()`` stops it."""
    setpriv = shutil.which("setpriv")
    return command if setpriv is None else [setpriv, "--pdeathsig", "KILL", "--", *command]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now, below the ephemeral
    range (so no client socket takes one while its server is down for a
    restart; another test process could, which is rare, and then the
    restart fails loudly)."""
    high = _ephemeral_low() - 1
    chosen: list[int] = []
    for port in random.sample(range(_PORTS_LOW, high), min(10 * count + 100, high - _PORTS_LOW)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise OSError(f"no {count} free ports on {host} between {_PORTS_LOW} and {high}")
