#!/usr/bin/env python3
"""Check the servers the test suite talks to, and start any that is down.

    python scripts/services.py ensure   # check, start what is down, report
    python scripts/services.py check    # only report

With CI=true a server that stays down makes this exit 1 (the run must fail,
not skip). Elsewhere it prints how to start the server and exits 0; the tests
that need it then skip with the same hint.

Standard library only: it runs before anything else is trusted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    port: int
    start: str  # shell command, run as root, that starts it in the background

    def up(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False


# The start commands of the Debian packages these machines run (loopback only).
SERVICES = (
    Service(
        "postgres",
        "127.0.0.1",
        5432,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    Service(
        "mariadb",
        "127.0.0.1",
        3306,
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    ),
    Service(
        "redis",
        "127.0.0.1",
        6379,
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ),
    Service(
        "nats",
        "127.0.0.1",
        4222,
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
        "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log",
    ),
)


def _startable(service: Service) -> str | None:
    """Why we cannot start it here, or None if we can try."""
    if os.geteuid() != 0:
        return "not root"
    program = service.start.split()[0]
    if shutil.which(program) is None:
        return f"{program} is not installed"
    return None


def _wait_up(service: Service, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.up():
            return True
        time.sleep(0.25)
    return service.up()


def _psql(sql: str) -> str | None:
    """One value from the local server as the postgres user, or None if psql fails."""
    try:
        done = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _logical_wal(service: Service, state: str) -> str:
    """CDC needs wal_level=logical; set it and restart PostgreSQL only when it is not."""
    level = _psql("SHOW wal_level")
    if level is None or level == "logical":
        return state
    if _startable(service) is not None:
        return f"{state}, wal_level={level} (CDC tests need logical; not root)"
    _psql("ALTER SYSTEM SET wal_level = logical")
    restart = service.start.replace(" start", " restart")
    subprocess.run(
        restart, shell=True, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not _wait_up(service, 60.0) or _psql("SHOW wal_level") != "logical":
        return "failed to restart with wal_level=logical"
    return f"{state}, restarted with wal_level=logical (for CDC)"


FUSE_INSTALL = "apt-get install -y fuse3"


def _fuse(start: bool) -> str | None:
    """The lazyfs tests (tests/lazyfs) need /dev/fuse and fusermount3 (Debian's
    fuse3): install fuse3 when it is missing. Returns what is still missing."""
    if shutil.which("fusermount3") is None:
        if not start:
            state = "fusermount3 missing (check only)"
        elif os.geteuid() != 0 or shutil.which("apt-get") is None:
            state = "fusermount3 missing (not root, or no apt-get)"
        else:
            subprocess.run(
                FUSE_INSTALL,
                shell=True,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
            state = "installed fuse3" if shutil.which("fusermount3") else "fuse3 install failed"
    else:
        state = "up"
    if state in ("up", "installed fuse3"):
        state = state if os.path.exists("/dev/fuse") else "/dev/fuse missing"
    print(f"  {'fuse':9s} {'/dev/fuse':15s} {state}")
    if state in ("up", "installed fuse3"):
        return None
    return state


def ensure(start: bool) -> int:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    missing = []
    for service in SERVICES:
        state = "up"
        if not service.up():
            reason = _startable(service) if start else "not started (check only)"
            if reason is None:
                subprocess.run(
                    service.start,
                    shell=True,
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                state = "started" if _wait_up(service, 30.0) else "failed to start"
            else:
                state = f"down ({reason})"
            if state not in ("up", "started"):
                missing.append(service)
        if service.name == "postgres" and state in ("up", "started") and start:
            state = _logical_wal(service, state)
            if state.startswith("failed"):
                missing.append(service)
        print(f"  {service.name:9s} {service.host}:{service.port:<5d} {state}")
    fuse = _fuse(start)
    if missing or fuse is not None:
        for service in missing:
            print(f"  to enable the {service.name} tests, start it (as root): {service.start}")
        if fuse is not None:
            print(f"  to enable the lazyfs tests (as root, with /dev/fuse): {FUSE_INSTALL}")
        if ci:
            print("CI=true: a server the tests need is missing; failing.", file=sys.stderr)
            return 1
        print("their tests will be skipped (set CI=true to make that a failure)")
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "ensure"
    if command not in ("ensure", "check"):
        print(__doc__)
        return 2
    print("services:")
    return ensure(start=command == "ensure")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
