"""The memory backend: plain Python, no durability, the executable specification
of every concept protocol (the log, the event store). The model-based tests
compare every other backend with it."""

from __future__ import annotations

from collections.abc import Callable

from ...log import _core
from ._events import MemoryEvents, MemoryProjections
from ._idempotency import MemoryIdempotency
from ._kv import MemoryKV
from ._log import MemoryLog
from ._unit import MemoryUnit


class MemoryBackend(
    MemoryLog, MemoryEvents, MemoryProjections, MemoryIdempotency, MemoryKV, MemoryUnit
):
    """Everything in dicts and lists under one lock; one change counter."""

    def __init__(self, clock: Callable[[], int] = _core.now_ms) -> None:
        MemoryLog.__init__(self, clock)
        self._init_events()
        self._init_projections()
        self._init_idempotency()
        self._init_kv()


__all__ = ["MemoryBackend"]
