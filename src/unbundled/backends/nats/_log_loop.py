"""Appends from the caller's event loop (``AsyncLog`` on ``nats://``).

The backend's calls run on its own loop thread, so an ``AsyncLog`` append
would cross from the caller's loop to that thread and back: two thread
switches and two loop wake-ups per append, several times the cost of the
publish itself (measured: 0.2x the throughput of nats-py publishing from the
caller's loop). A :class:`NatsLoopWriter` instead opens a second connection
on the caller's loop and runs the very same write (``_write``: producer
check, pipelined publish with message ids, producer record, announcement)
there, through a view of the backend whose connection, JetStream context,
documents and partition locks are that loop's.

What changes for a caller: nothing in the guarantees (N1 to N10). Batches
of one process no longer share one connection, so two batches to one
partition, one from the backend's loop (the sync API) and one from an
``AsyncLog``, may interleave as two processes' batches may (N2 says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
from typing import Any

from nats.aio.client import Client

from ...errors import Closed, Error
from ...log._protocol import Position, WriteBatch
from ._log import NatsLogRecords
from ._log_meta import Documents
from ._publish import Acks


class NatsLoopWriter:
    """Writes of one event loop on a connection of that loop (see the module)."""

    def __init__(self, backend: NatsLogRecords, view: NatsLogRecords) -> None:
        self._backend = backend
        self._view = view
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @classmethod
    async def open(cls, backend: NatsLogRecords, servers: list[str]) -> NatsLoopWriter:
        # A shallow copy shares the backend's configuration and caches that
        # are safe across threads (the direct-get flags); what belongs to a
        # loop is replaced below. The view is never closed as a backend: its
        # connection is this writer's.
        view = copy.copy(backend)
        view._loop = asyncio.get_running_loop()
        view._nc = Client()
        view._partition_locks = {}
        view._announcer = None
        view._first_catalog = None  # a future of the backend's loop
        # Readers of this process wait on the backend's token: bump that one.
        view._bump = backend._bump  # type: ignore[method-assign]
        await view._connect(servers)
        view._js = view._nc.jetstream(timeout=backend.timeout_s)
        view._acks = Acks(view._nc, backend.timeout_s)
        await view._acks.subscribe()
        view._docs = Documents(view._js, view._stream, view.url)
        return cls(backend, view)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this writer belongs to."""
        return self._loop

    async def write(self, batch: WriteBatch) -> list[Position]:
        if self._closed or self._backend._closed:
            raise Closed(f"the NATS backend at {self._backend.url} is closed")
        if batch.producer is None and not batch.commits and len(batch.appends) == 1:
            (items,) = batch.appends.values()
            if len(items) == 1:
                # One message, written to the connection before this task
                # first yields: a cancellation cannot split it, so no shield
                # (a task per append, a quarter of the throughput).
                return await self._write(batch)
        # Shielded: a caller cancelled once the write started gets
        # CancelledError, and the write completes (as the group-commit
        # writers do with a batch they have taken); retry it with an
        # idempotent producer and the same sequence.
        task = asyncio.ensure_future(self._write(batch))
        return await asyncio.shield(task)

    async def _write(self, batch: WriteBatch) -> list[Position]:
        try:
            return await self._view._write(batch)
        except (Error, asyncio.CancelledError):
            raise
        except BaseException as exc:
            raise self._backend._error(exc, "an append") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._view._acks.close()
        nc: Any = self._view._nc
        timeout_s = self._backend.timeout_s
        with contextlib.suppress(Exception):  # drain: acknowledgements in flight arrive first
            await asyncio.wait_for(nc.flush(timeout=max(1, math.ceil(timeout_s))), timeout_s)
            await asyncio.wait_for(nc.drain(), timeout_s)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()
