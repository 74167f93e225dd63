"""The NATS server for the key-value store's tests: a fresh bucket per test,
deleted after (skipped without the server, failed with CI=true)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
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


HOWTO = Path(__file__).resolve().parents[3] / "docs" / "how-to"
FENCE = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)


def run_howto(page: str, bucket_word: str, closeable: type) -> int:
    """Run the ``py`` examples of ``docs/how-to/<page>`` in order, in one
    namespace, against the real server in a fresh bucket (the page's
    ``bucket_word`` renamed); close what they left open of ``closeable``
    and delete the bucket. How many blocks ran."""
    path = HOWTO / page
    host_port = server().removeprefix("nats://")
    bucket = fresh_bucket("test_howto")
    blocks = FENCE.findall(path.read_text())
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for number, block in enumerate(blocks, 1):
            source = re.sub(rf"\b{bucket_word}\b", bucket, block)
            source = source.replace("127.0.0.1:4222", host_port)
            exec(compile(source, f"{path.name}:block{number}", "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, closeable):
                value.close()  # type: ignore[attr-defined]
        delete_bucket(bucket)
    return len(blocks)
