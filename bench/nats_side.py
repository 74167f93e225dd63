"""The peer of the unit-of-work benchmark's log line: NATS JetStream publish
with ack from nats-py, on the machine's server.

Each measurement makes a fresh file-storage stream with its own subject,
publishes from ``writers`` asyncio tasks on one connection (as an asyncio
service shares its client), each ``await js.publish(...)`` waiting for the
server's PubAck, checks that the stream holds every message, and deletes the
stream. nats-py is the project's ``nats`` extra (installed in bench/.venv
too); a server that cannot be reached is reported by :func:`skip_reason`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
import uuid
from typing import Any

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"
#: The names of the streams made here begin with it (a test sets its own).
STREAM_PREFIX = "UNBUNDLED_BENCH_"


def skip_reason() -> str | None:
    """Why the NATS line cannot run here, or None if it can."""
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install -e '.[nats]')"
    try:
        with socket.create_connection((NATS_HOST, NATS_PORT), timeout=2.0):
            pass
    except OSError:
        return f"no NATS server at {NATS_HOST}:{NATS_PORT}"
    return None


async def server_facts() -> dict[str, Any]:
    """The server's version and JetStream's storage settings, for the report."""
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        v = nc.connected_server_version
        return {"version": f"{v.major}.{v.minor}.{v.patch}", "max_payload": nc.max_payload}
    finally:
        await nc.close()


async def _publish(writers: int, per_writer: int, value: bytes) -> float:
    import nats
    from nats.js.api import StorageType, StreamConfig

    name = f"{STREAM_PREFIX}{uuid.uuid4().hex[:12].upper()}"
    subject = f"unbundled.bench.{name.lower()}"
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
        try:
            start = asyncio.Event()

            async def work() -> None:
                await start.wait()
                for _ in range(per_writer):
                    await js.publish(subject, value)  # returns once the server acked it

            tasks = [asyncio.create_task(work()) for _ in range(writers)]
            await asyncio.sleep(0)  # let every task reach start.wait()
            started = time.perf_counter()
            start.set()
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - started
            info = await js.stream_info(name)
            total = writers * per_writer
            if info.state.messages != total:
                raise AssertionError(
                    f"the NATS stream holds {info.state.messages} messages, not {total}"
                )
        finally:
            await js.delete_stream(name)
    finally:
        await nc.close()
    return total / elapsed


def publish_rate(writers: int, per_writer: int, value: bytes) -> float:
    """Messages/s of ``writers`` tasks each publishing ``per_writer`` times with ack."""
    return asyncio.run(_publish(writers, per_writer, value))


async def stream_names() -> list[str]:
    """The names of the server's streams (a test checks none of its own is left)."""
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        return [str(info.config.name) for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


__all__ = [
    "NATS_URL",
    "STREAM_PREFIX",
    "publish_rate",
    "stream_names",
    "server_facts",
    "skip_reason",
]
