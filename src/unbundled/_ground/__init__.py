"""The ground: basics that every part of unbundled shares, below all of them.

The log, the event store, idempotency keys, the key-value store, the unit of
work and every backend need the same few things: how durable a commit must be
(:data:`SyncLevel`), what time it is (:func:`now_ms`), the checksum stored
beside every record and event (:data:`crc32`) and how a group-commit writer
wakes its callers (:data:`Waiter`, and :mod:`unbundled._ground.waiters` for the
implementations). They live here, not in the log, so that no other part has to
import the log to get them: imports point down only (see
docs/explanation/design-rules.md).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Literal

__all__ = ["SyncLevel", "Waiter", "crc32", "now_ms"]

#: How durable a commit is when it returns: ``"full"`` (the default) is synced
#: to the disk and survives a power cut; ``"normal"`` and ``"off"`` survive a
#: killed process, not a crash of the machine (docs/how-to/log-sqlite.md says
#: what each means on each backend).
SyncLevel = Literal["full", "normal", "off"]

#: The completion callback of a group-commit request: called exactly once,
#: from any thread, with the request's result or the exception that failed it.
Waiter = Callable[[object], None]

#: CRC-32 (zlib's, the IEEE polynomial), ``crc32(data, seed) -> int``: every
#: stored checksum (records, events; docs/reference/format.md) is made with
#: this one function, so a reader and a writer cannot disagree about it.
crc32 = zlib.crc32


def now_ms() -> int:
    """The wall clock in whole milliseconds since the Unix epoch: the default
    clock of every part (tests pass a ``SimClock`` instead)."""
    return time.time_ns() // 1_000_000
