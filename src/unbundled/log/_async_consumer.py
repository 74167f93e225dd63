"""``AsyncConsumer``, the asyncio twin of :class:`unbundled.Consumer`: the same
sans-I/O ``ConsumerCore``, its blocking backend calls on a worker thread of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Any

from .._ground.waiters import AsyncWaiter
from ..errors import Error
from ._base import LogBase
from ._consumer import ConsumerCore, Steps
from ._protocol import OffsetCommit, Record, TopicPartition


class AsyncConsumer:
    """The asyncio twin of :class:`unbundled.Consumer`. Blocking backend calls
    run on the consumer's own worker thread, so a waiting consumer never
    starves the event loop's shared executor."""

    def __init__(self, log: LogBase, core: ConsumerCore) -> None:
        self._log = log
        self._core = core
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="unbundled-consumer")

    @property
    def group(self) -> str | None:
        """See :attr:`unbundled.Consumer.group`."""
        return self._core.group

    @property
    def member_id(self) -> str:
        """See :attr:`unbundled.Consumer.member_id`."""
        return self._core.member_id

    @property
    def instance_id(self) -> str | None:
        """See :attr:`unbundled.Consumer.instance_id`."""
        return self._core.instance_id

    async def _drive(self, steps: Steps) -> Any:
        backend = self._log.backend
        loop = asyncio.get_running_loop()
        try:
            op = next(steps)
            while True:
                try:
                    if op.name == "submit":
                        waiter = AsyncWaiter()
                        backend.submit(op.args[0], waiter)
                        result = await waiter.future
                    else:
                        result = await loop.run_in_executor(
                            self._executor, partial(getattr(backend, op.name), *op.args)
                        )
                except Error as exc:
                    op = steps.throw(exc)
                    continue
                op = steps.send(result)
        except StopIteration as stop:
            return stop.value

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def poll(self, timeout_s: float = 1.0, *, records_max: int = 500) -> list[Record]:
        """Async twin of :meth:`unbundled.Consumer.poll`: waits
        without blocking the event loop (the backend calls run on this consumer's own
        worker thread)."""
        records: list[Record] = await self._drive(self._core.poll(timeout_s, records_max))
        return records

    async def __aiter__(self) -> AsyncIterator[Record]:
        while not self._core.closed:
            for record in await self.poll(1.0):
                yield record

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Async twin of :meth:`unbundled.Consumer.commit`."""
        await self._drive(self._core.commit(offsets))

    def offset_commit(self, offsets: dict[TopicPartition, int] | None = None) -> OffsetCommit:
        """Twin of :meth:`unbundled.Consumer.offset_commit`
        (not a coroutine: nothing is written)."""
        return self._core.offset_commit(offsets)

    def assignment(self) -> set[TopicPartition]:
        """Twin of :meth:`unbundled.Consumer.assignment` (not a coroutine)."""
        return self._core.assignment()

    def position(self, tp: TopicPartition) -> int:
        """Twin of :meth:`unbundled.Consumer.position` (not a coroutine)."""
        return self._core.position(TopicPartition(*tp))

    def positions(self) -> dict[TopicPartition, int]:
        """Twin of :meth:`unbundled.Consumer.positions` (not a coroutine)."""
        return dict(self._core.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Twin of :meth:`unbundled.Consumer.seek` (not a coroutine)."""
        self._core.seek(TopicPartition(*tp), offset)

    async def close(self, *, leave: bool | None = None) -> None:
        """Async twin of :meth:`unbundled.Consumer.close`; also
        stops the consumer's worker thread. Idempotent."""
        try:
            await self._drive(self._core.close(leave))
        finally:
            self._executor.shutdown(wait=False)
