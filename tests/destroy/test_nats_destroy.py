"""``destroy`` on NATS: buckets and streams that are not ours are refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from tests.backends.nats._nats import admin, bucket_url, delete_bucket, fresh_bucket, server
from unbundled import UsageError
from unbundled.backends import destroy

pytestmark = pytest.mark.nats


@pytest.fixture
def bucket() -> Iterator[str]:
    name = fresh_bucket("test_destroy")
    server()  # skip (or fail with CI=true) without the server
    yield name
    delete_bucket(name)


def stream_exists(name: str) -> bool:
    async def look(js: Any) -> bool:
        return name in [info.config.name for info in await js.streams_info()]

    return bool(admin(look))


def test_a_bucket_written_by_another_client_is_refused(bucket: str) -> None:
    async def create(js: Any) -> None:
        kv = await js.create_key_value(KeyValueConfig(bucket=bucket))
        await kv.put("theirs", b"1")

    admin(create)
    with pytest.raises(UsageError, match="not written by unbundled"):
        destroy(bucket_url(bucket), confirm=True)
    assert stream_exists(f"KV_{bucket}")


def test_a_stream_that_is_not_a_bucket_is_refused(bucket: str) -> None:
    async def create(js: Any) -> None:
        await js.add_stream(StreamConfig(name=f"KV_{bucket}", subjects=[f"orders.{bucket}"]))

    admin(create)
    with pytest.raises(UsageError, match="not the KV bucket"):
        destroy(bucket_url(bucket), dry_run=True)
    assert stream_exists(f"KV_{bucket}")
