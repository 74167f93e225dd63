"""Administration of the test cluster with nats-py: R3 KV buckets and streams."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.js.api import KeyValueConfig, StorageType


async def _with_js(url: str, work: Any) -> Any:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        return await work(nc.jetstream(timeout=10))
    finally:
        await nc.close()


def create_kv_bucket(url: str, bucket: str, *, replicas: int = 3) -> None:
    """A KV bucket as ``unbundled.backends.nats`` creates one (history 1,
    file storage, no TTL), but with ``replicas`` replicas."""

    async def create(js: Any) -> None:
        config = KeyValueConfig(
            bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas
        )
        await js.create_key_value(config)

    asyncio.run(_with_js(url, create))
