"""The store on each backend: ``memory``, ``sqlite`` (a fresh file),
``postgres`` (a fresh schema on the real server, dropped after) and ``nats``
(a fresh JetStream KV bucket, deleted after); the servers' tests skip
without the server and fail with CI=true."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consistency_kv._nats import bucket_url, delete_bucket, fresh_bucket
from tests.postgres.conftest import drop_schema, server_url
from unbundled.consistency import KV

BACKENDS = ["memory", "sqlite", "postgres", pytest.param("nats", marks=pytest.mark.nats)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store on each backend (or, parametrized
    indirectly, on the backends named)."""
    name = request.param
    if name == "memory":
        yield "memory://"
    elif name == "sqlite":
        yield f"sqlite:///{tmp_path / 'kv.db'}"
    elif name == "nats":
        bucket = fresh_bucket()
        yield bucket_url(bucket)
        delete_bucket(bucket)
    else:
        schema = f"test_kv_{uuid.uuid4().hex[:12]}"
        yield f"{server_url()}?schema={schema}"
        drop_schema(schema)


@pytest.fixture
def kv(store_url: str) -> Iterator[KV]:
    with KV.open(store_url, sync="normal") as opened:
        yield opened
