"""The bodies of the scale-out benchmark's processes (``bench/scaleout_bench.py``).

Each function runs in a process of its own (multiprocessing, spawn), waits at the
shared barrier so every process starts together, does its share and puts
``(started, finished, records)`` on the queue, wall-clock seconds from
``time.time()`` (one machine: the processes' clocks agree).

* :func:`append_unbundled`: ``tasks`` asyncio tasks share one ``AsyncLog``, each
  awaiting ``append`` of its records one by one (every await is a durable,
  acknowledged append: group commit is what lets 64 of them share a commit).
* :func:`consume_unbundled`: one member of a consumer group polls until the group
  as a whole has read every record (a shared counter), committing as it goes.
* :func:`append_nats_raw`: the same shape with nats-py's ``js.publish`` (waits for
  the PubAck) on one connection per process: the raw floor of the NATS backend;
  with ``partitions``, messages shaped as the backend's single appends (a stream
  per partition, each task's to the partition of its key as ours, the body
  led by its CRC-32): the client's cost shows apart.
* :func:`append_pg_raw`: the same shape with psycopg, one INSERT and one COMMIT
  per record, the tasks sharing a pool of connections: the raw floor of
  PostgreSQL for one acknowledged record at a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

VALUE = b"x" * 100
PG_POOL = 4  # connections per process for the raw psycopg line (16 processes: 64)


def _key(process: int, task: int) -> bytes:
    return f"p{process}-t{task}".encode()


def append_unbundled(
    url: str, topic: str, process: int, tasks: int, per_task: int, barrier: Any, queue: Any
) -> None:
    from unbundled.log.aio import AsyncLog

    async def main() -> tuple[float, float, int]:
        log = await AsyncLog.open(url)
        try:
            await log.describe_topic(topic)  # connected and warm before the clock starts

            async def work(task: int) -> None:
                key = _key(process, task)
                for _ in range(per_task):
                    await log.append(topic, VALUE, key=key)

            await asyncio.to_thread(barrier.wait)
            started = time.time()
            await asyncio.gather(*(work(t) for t in range(tasks)))
            return started, time.time(), tasks * per_task
        finally:
            await log.close()

    queue.put(asyncio.run(main()))


def consume_unbundled(
    url: str, topic: str, group: str, total: int, counter: Any, barrier: Any, queue: Any
) -> None:
    from unbundled import Log

    with Log.open(url) as log, log.consumer(topic, group=group, lease_ms=30_000) as consumer:
        mine = 0
        barrier.wait()
        started = time.time()
        deadline = started + 600
        while counter.value < total and time.time() < deadline:
            records = consumer.poll(0.2, records_max=5_000)
            if records:
                mine += len(records)
                with counter.get_lock():
                    counter.value += len(records)
        finished = time.time()
        consumer.commit()
    queue.put((started, finished, mine))


def append_nats_raw(
    url: str,
    subject: str,
    process: int,
    tasks: int,
    per_task: int,
    partitions: int,
    barrier: Any,
    queue: Any,
) -> None:
    """``partitions`` > 0: the backend's message shape, to ``<subject>.<p>``
    round-robin (a stream each), each body led by its CRC-32, as the backend's."""
    import zlib

    import nats

    from unbundled.log._core import partition_for_key

    async def main() -> tuple[float, float, int]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()

            async def work(task: int) -> None:
                # The partition ours gives this task's key: some streams busier than others.
                to = f"{subject}.{partition_for_key(_key(process, task), max(1, partitions))}"
                for _ in range(per_task):
                    if not partitions:
                        await js.publish(subject, VALUE)  # returns once the server acked it
                        continue
                    body = zlib.crc32(VALUE).to_bytes(4, "big") + VALUE  # per message, as ours
                    await js.publish(to, body)

            await asyncio.to_thread(barrier.wait)
            started = time.time()
            await asyncio.gather(*(work(t) for t in range(tasks)))
            return started, time.time(), tasks * per_task
        finally:
            await nc.close()

    queue.put(asyncio.run(main()))


def append_pg_raw(
    conninfo: str, table: str, process: int, tasks: int, per_task: int, barrier: Any, queue: Any
) -> None:
    import psycopg

    async def main() -> tuple[float, float, int]:
        conns = [await psycopg.AsyncConnection.connect(conninfo) for _ in range(PG_POOL)]
        free: asyncio.Queue[Any] = asyncio.Queue()
        for conn in conns:
            free.put_nowait(conn)
        try:

            async def work(task: int) -> None:
                key = _key(process, task)
                for _ in range(per_task):
                    conn = await free.get()
                    try:
                        await conn.execute(
                            f"INSERT INTO {table} (k, v) VALUES (%s, %s)",
                            (key, VALUE),
                        )
                        await conn.commit()  # one commit per record
                    finally:
                        free.put_nowait(conn)

            await asyncio.to_thread(barrier.wait)
            started = time.time()
            await asyncio.gather(*(work(t) for t in range(tasks)))
            return started, time.time(), tasks * per_task
        finally:
            for conn in conns:
                await conn.close()

    queue.put(asyncio.run(main()))
