"""The backend-by-capability matrix: which backends each part's tests run on.

One table instead of a target list per test module. A contract test asks
for ``params(part)`` (the backends that serve ``part``, each marked with the
server it needs) and opens its store at ``isolated(backend, tmp_path)``: a
URL no other test uses (a fresh SQLite file, PostgreSQL schema, Redis key
prefix or JetStream bucket), cleaned up afterwards. A server that is not
running skips its cases on a laptop and fails them with CI=true
(``tests.conftest.require_server``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unbundled.backends import EVENTS, IDEMPOTENCY, KV, LOG, SERVES
from unbundled.transaction import capabilities

#: Transactions across the parts (``db.transaction()``), as a part of the matrix.
TRANSACTIONS = capabilities.TRANSACTIONS

#: The backends, by the names tests use; the URL scheme of each.
BACKENDS = {
    "memory": "memory",
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "redis": "redis",
    "nats": "nats",
}
_SERVER = {"postgres": pytest.mark.postgres, "redis": pytest.mark.redis, "nats": pytest.mark.nats}
# Which backends commit several parts in one transaction (their unit_parts).
_TRANSACTIONS = ("memory", "sqlite", "postgres")


def serves(backend: str, part: str) -> bool:
    """Whether ``backend`` serves ``part`` (LOG, EVENTS, IDEMPOTENCY, KV or TRANSACTIONS)."""
    if part == TRANSACTIONS:
        return backend in _TRANSACTIONS
    return part in SERVES[BACKENDS[backend]]


def backends(part: str) -> list[str]:
    """The names of the backends that serve ``part``."""
    return [name for name in BACKENDS if serves(name, part)]


def params(part: str) -> list[Any]:
    """``pytest.param`` per backend serving ``part``, marked with its server."""
    return [
        pytest.param(name, marks=[_SERVER[name]] if name in _SERVER else [], id=name)
        for name in backends(part)
    ]


@contextlib.contextmanager
def isolated(backend: str, tmp_path: Path, name: str = "store") -> Iterator[str]:
    """A URL of an empty store on ``backend`` that no other test uses,
    cleaned up when the block ends. ``memory://`` opens a new store each time."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield str(tmp_path / f"{name}.db")
    elif backend == "postgres":
        from tests.backends.postgres.conftest import fresh_schema, server_url

        with fresh_schema() as schema:
            yield f"{server_url()}?schema={schema}"
    elif backend == "redis":
        from tests.backends.redis.conftest import delete_prefix
        from tests.backends.redis.conftest import server_url as redis_server

        prefix = f"test:{uuid.uuid4().hex[:16]}:"
        try:
            yield f"{redis_server()}?prefix={prefix}"
        finally:
            delete_prefix(prefix)
    elif backend == "nats":
        from tests.backends.nats._nats import bucket_url, delete_bucket, fresh_bucket

        bucket = fresh_bucket()
        try:
            yield bucket_url(bucket)
        finally:
            delete_bucket(bucket)
    else:
        raise AssertionError(f"no backend {backend!r} in the matrix")


__all__ = [
    "BACKENDS",
    "EVENTS",
    "IDEMPOTENCY",
    "KV",
    "LOG",
    "TRANSACTIONS",
    "backends",
    "isolated",
    "params",
    "serves",
]
