"""The NATS server for the key-value store's tests: a fresh bucket per test,
deleted after (skipped without the server, failed with CI=true)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from tests.conftest import require_server
from unbundled.backends.nats._log_meta import stream_pattern


def server() -> str:
    host, port = require_server("nats")
    return f"nats://{host}:{port}"


def fresh_bucket(prefix: str = "test_kv") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def bucket_url(bucket: str) -> str:
    return f"{server()}?bucket={bucket}"


def admin(work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(js)`` on a connection of its own (nats-py is asyncio-only)."""

    async def run() -> Any:
        nc = await nats.connect(server())
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


def delete_bucket(bucket: str) -> None:
    """Delete the bucket and the log's record streams named after it."""
    pattern = re.compile(stream_pattern(bucket))

    async def delete(js: Any) -> None:
        # NotFound: never created (the test failed before opening it).
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_key_value(bucket)
        for name in await js.streams_info():
            if pattern.fullmatch(name.config.name):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name.config.name)

    admin(delete)
