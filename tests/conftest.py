"""Shared fixtures: backends for the contract suites, and real servers.

A server test asks for a fixture below. If the server is unreachable the test
skips with the command that starts it, except with CI=true, where it fails:
CI must never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from unbundled import Log

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SERVERS = {
    "postgres": ("127.0.0.1", 5432),
    "mariadb": ("127.0.0.1", 3306),
    "redis": ("127.0.0.1", 6379),
    "nats": ("127.0.0.1", 4222),
}


def require_server(name: str) -> tuple[str, int]:
    host, port = SERVERS[name]
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return host, port
    except OSError:
        message = (
            f"{name} is not reachable at {host}:{port}; start it with "
            f"`python scripts/services.py ensure` (as root) to run this test"
        )
        if CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


@pytest.fixture(params=["memory", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    """A fresh log on each backend the log supports."""
    url = "memory://" if request.param == "memory" else str(tmp_path / "log.db")
    with Log.open(url, sync="normal") as opened:
        yield opened
