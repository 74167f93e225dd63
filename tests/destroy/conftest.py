"""One store per backend for the ``destroy`` tests, with a neighbour that
must survive: the same kind of store next to it (a file in the same
directory, a schema in the same database, a prefix and a bucket on the same
server). Whatever a test leaves behind is removed with the drivers.

Each store is filled through the facades its backend serves, so that
``destroy`` meets every table, key and message unbundled writes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import psycopg
import pytest
import redis

from tests.backends.nats._nats import bucket_url, delete_bucket, fresh_bucket
from tests.backends.nats._nats import server as nats_server
from tests.backends.postgres.conftest import drop_schema
from tests.backends.postgres.conftest import server_url as pg_server_url
from tests.backends.redis.conftest import delete_prefix
from tests.backends.redis.conftest import server_url as redis_server_url
from unbundled import EventStore, Idempotency, Log
from unbundled.consistency import KV
from unbundled.eventstore import NO_STREAM, NewEvent

EVENT_ID = "1f0c2a5e-0000-4000-8000-000000000001"
# The concepts each backend serves: the store is filled through each of them.
SERVES = {
    "sqlite": ("log", "events", "idempotency", "kv"),
    "postgres": ("events", "idempotency", "kv"),
    "redis": ("idempotency",),
    "nats": ("events", "kv"),
}


def fill(backend: str, url: str) -> None:
    """Write to every part the backend serves, then close."""
    for part in SERVES[backend]:
        if part == "log":
            with Log.open(url, sync="off") as log:
                log.create_topic("orders", partitions=2)
                log.append("orders", b"order-1", key=b"a")
        elif part == "events":
            with EventStore.open(url, sync="off") as store:
                store.append("order-1", [NewEvent(EVENT_ID, "Placed", b"{}")], NO_STREAM)
        elif part == "idempotency":
            with Idempotency.open(url, sync="off") as idem:
                idem.call("pay-1", {"amount": 5}, lambda attempt: {"paid": 5})
        else:
            with KV.open(url, sync="off") as kv:
                kv.write("limit", b"100")


def holds_data(backend: str, url: str) -> bool:
    """Whether the store at ``url`` still holds what :func:`fill` wrote."""
    part = SERVES[backend][-1]
    if part == "kv":
        with KV.open(url, sync="off") as kv:
            found = kv.read("limit")
            return found is not None and found.value == b"100"
    with Idempotency.open(url, sync="off") as idem:
        record = idem.get("pay-1")
        return record is not None and record.state == "completed"


@dataclass
class Target:
    """A store of one backend, and its neighbour."""

    backend: str
    url: str
    neighbour: str
    exists: Callable[[str], bool]  # without opening (which would create it)

    def fill(self, url: str) -> None:
        fill(self.backend, url)

    def holds_data(self, url: str) -> bool:
        return holds_data(self.backend, url)


def _pg_exists(url: str) -> bool:
    schema = url.rpartition("schema=")[2]
    with psycopg.connect(pg_server_url(), autocommit=True) as conn:
        row = conn.execute("SELECT FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def _redis_exists(url: str) -> bool:
    prefix = url.rpartition("prefix=")[2]
    client = redis.Redis.from_url(redis_server_url())
    try:
        return any(True for _ in client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


def _nats_exists(url: str) -> bool:
    bucket = url.rpartition("bucket=")[2]

    async def look() -> bool:
        nc = await nats.connect(nats_server())
        found = False
        try:
            for stream in (f"KV_{bucket}", f"UBES_{bucket}"):  # the bucket, the events
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await nc.jetstream().stream_info(stream)
                    found = True
            return found
        finally:
            await nc.close()

    return asyncio.run(look())


@contextlib.contextmanager
def target(backend: str, tmp_path: Path) -> Iterator[Target]:
    if backend == "sqlite":
        yield Target(
            backend, str(tmp_path / "shop.db"), str(tmp_path / "shop-eu.db"), os.path.exists
        )
    elif backend == "postgres":
        schemas = [f"test_destroy_{uuid.uuid4().hex[:12]}" for _ in range(2)]
        base = pg_server_url()
        try:
            urls = [f"{base}?schema={s}" for s in schemas]
            yield Target(backend, urls[0], urls[1], _pg_exists)
        finally:
            for schema in schemas:
                drop_schema(schema)
    elif backend == "redis":
        # The neighbour shares all of the prefix but its last character.
        stem = f"test:{uuid.uuid4().hex[:12]}"
        prefixes = [f"{stem}:", f"{stem}-eu:"]
        base = redis_server_url()
        try:
            yield Target(
                backend,
                f"{base}?prefix={prefixes[0]}",
                f"{base}?prefix={prefixes[1]}",
                _redis_exists,
            )
        finally:
            for prefix in prefixes:
                delete_prefix(prefix)
    else:
        buckets = [fresh_bucket("test_destroy"), fresh_bucket("test_destroy")]
        try:
            yield Target(backend, bucket_url(buckets[0]), bucket_url(buckets[1]), _nats_exists)
        finally:
            for bucket in buckets:
                delete_bucket(bucket)


BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("nats", marks=pytest.mark.nats),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    with target(request.param, tmp_path) as made:
        yield made
