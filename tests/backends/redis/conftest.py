"""Fixtures for the Redis tests: a fresh key prefix per test, its keys deleted after.

The server is the real one (see /work/shared/services.md); without it these
tests skip, and with CI=true they fail (``tests.conftest.require_server``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import require_server
from unbundled.backends.redis import RedisBackend


def server_url() -> str:
    host, port = require_server("redis")
    return f"redis://{host}:{port}/0"


def delete_prefix(prefix: str) -> int:
    """Delete every key under ``prefix``; how many there were."""
    client = redis.Redis.from_url(server_url())
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted when the test ends."""
    prefix = f"test:{uuid.uuid4().hex[:16]}:"
    yield prefix
    delete_prefix(prefix)


@pytest.fixture
def redis_url(redis_prefix: str) -> str:
    return f"{server_url()}?prefix={redis_prefix}"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """A plain redis-py client on the same server, to look behind the backend."""
    opened = redis.Redis.from_url(server_url())
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    opened = RedisBackend(redis_url)
    try:
        yield opened
    finally:
        opened.close()
