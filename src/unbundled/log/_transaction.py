"""The sans-I/O core of the log's transaction, shared by the sync and async
twins (:class:`unbundled.Transaction`, :class:`unbundled.AsyncTransaction`),
as ``_consumer`` is the consumer's: what a transaction holds, how each
write is checked when it is added, and the batch its commit sends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UsageError
from . import _core
from ._consumer import ConsumerCore
from ._protocol import AppendItem, OffsetCommit, TopicPartition, WriteBatch


class LogTxnCore:
    """Appends and offset commits added so far; no I/O."""

    __slots__ = ("appends", "commits", "consumers", "done", "partitions")

    def __init__(self) -> None:
        self.appends: dict[str, list[AppendItem]] = {}
        self.commits: list[OffsetCommit] = []
        self.partitions: dict[str, int] = {}
        self.consumers: list[tuple[ConsumerCore, OffsetCommit]] = []
        self.done = False

    def check(self) -> None:
        if self.done:
            raise UsageError("the transaction is already committed or aborted")

    def add_items(self, topic: str, items: Sequence[AppendItem], partitions: int) -> None:
        """Records already checked against the topic's settings (``partitions``)."""
        self.appends.setdefault(topic, []).extend(items)
        self.partitions[topic] = partitions

    def add_offsets(
        self,
        consumer: Any,
        group: str | None,
        offsets: dict[TopicPartition, int] | None,
    ) -> None:
        """A consumer's positions (fenced by its generation), or ``offsets``
        of a ``group`` without members."""
        self.check()
        commit = offset_commit(consumer, group, offsets)
        if consumer is not None:
            self.consumers.append((consumer._core, commit))
        self.commits.append(commit)

    def finish(self) -> WriteBatch | None:
        """End the transaction; the batch to write, or None if it is empty."""
        self.check()
        self.done = True
        if not self.appends and not self.commits:
            return None
        return WriteBatch(self.appends, tuple(self.commits), None, self.partitions)

    def committed(self) -> None:
        """After the batch was written: the consumers learn their committed offsets."""
        for core, commit in self.consumers:
            core.mark_committed(commit.offsets)

    def abort(self) -> None:
        self.done = True
        self.appends.clear()
        self.commits.clear()


def offset_commit(
    consumer: Any, group: str | None, offsets: dict[TopicPartition, int] | None
) -> OffsetCommit:
    """The commit of ``consumer``'s positions (or of ``offsets`` where given),
    or of ``offsets`` for a ``group`` without members; checked now."""
    if consumer is not None:
        commit: OffsetCommit = consumer.offset_commit(offsets)
        return commit
    if group is not None and offsets is not None:
        _core.check_group_name(group)
        return OffsetCommit(group, None, _core.check_offsets(offsets), {})
    raise UsageError("commit_offsets needs a consumer, or a group and offsets")


__all__ = ["LogTxnCore", "offset_commit"]
