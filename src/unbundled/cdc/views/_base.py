"""What a derived view is, and the loop that feeds it from a connector's topics.

A view holds, per topic-partition, the next log offset it has not applied, in its own
store. `View.apply` writes a batch's effects and the new offsets atomically: in one
transaction (SQLite, PostgreSQL) or one server-side script (Redis), and only if the
stored offsets are still the ones the batch was read from (else ``ConflictError``, and
nothing is written). So a crash anywhere leaves effects and offsets agreeing, a restart
resumes exactly after the last applied batch, and two runners of one view never both
apply a batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..._bounds import check_int
from ...errors import UsageError
from .._replay import Event, decode

if TYPE_CHECKING:
    from ...log import Log

TopicPartition = tuple[str, int]
BATCH_MAX = 10_000
NAME_CHARS_MAX = 40


class View(Protocol):
    """A derived view of change events (key_text -> row per topic)."""

    def offsets(self) -> dict[TopicPartition, int]:
        """The next offset to apply, per topic-partition it has seen (absent: 0)."""

    def apply(
        self,
        batch: Sequence[Event],
        start: dict[TopicPartition, int],
        end: dict[TopicPartition, int],
    ) -> None:
        """Apply ``batch`` and move each offset from ``start`` to ``end``, atomically.

        Raises ``ConflictError`` (nothing applied) if a stored offset is not ``start``'s:
        another runner moved it.
        """

    def rows(self, topic: str) -> dict[str, dict[str, Any]]:
        """Every row the view holds for ``topic`` (key_text -> row), as stored."""

    def close(self) -> None:
        """Let go of connections (idempotent)."""


def check_name(name: str) -> str:
    """A view's name, which names its tables or keys: [A-Za-z_][A-Za-z0-9_]*, <= 40."""
    if (
        not name
        or len(name) > NAME_CHARS_MAX
        or not (name[0].isalpha() or name[0] == "_")
        or not all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    ):
        raise UsageError(
            f"view name {name!r} must be 1 to {NAME_CHARS_MAX} letters, digits or '_', "
            "not starting with a digit"
        )
    return name


def follow(
    log: Log,
    view: View,
    topics: Sequence[str],
    *,
    batch: int = 500,
    until_idle: bool = True,
    stop: threading.Event | None = None,
    poll_s: float = 0.1,
) -> int:
    """Apply the topics' change events to ``view`` from its stored offsets on.

    Each batch is at most ``batch`` records of one topic-partition, applied atomically
    with its offset. Returns the number of events applied. With ``until_idle`` it returns
    once every partition is read to its end; otherwise it runs until ``stop`` is set.
    """
    check_int("batch", batch, 1, BATCH_MAX)
    if not topics:
        raise UsageError("follow needs at least one topic")
    stop = stop or threading.Event()
    applied = 0
    while not stop.is_set():
        moved = False
        offsets = view.offsets()
        for topic in topics:
            for partition, end in sorted(log.end_offsets(topic).items()):
                at = offsets.get((topic, partition), 0)
                if at >= end:
                    continue
                records = log.read(topic, partition, at, records_max=batch)
                if not records:
                    continue
                found = [e for e in map(decode, records) if e is not None]
                tp = (topic, partition)
                view.apply(found, {tp: at}, {tp: records[-1].offset + 1})
                applied += len(found)
                moved = True
        if not moved:
            if until_idle:
                break
            time.sleep(poll_s)
    return applied
