"""What the log's sync and async facades share (:class:`LogBase`: the topic
config cache, the partitioner, validation; building a consumer; a group's
lag), below both, so that neither twin imports the other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from .. import limits
from .._bounds import check_int, check_optional_seconds
from ..errors import Closed, PartitionNotFound, TopicNotFound, UsageError
from . import _core
from ._consumer import ConsumerCore, OffsetReset
from ._protocol import (
    AppendItem,
    CleanupPolicy,
    Headers,
    LogBackend,
    Message,
    TopicConfig,
    TopicPartition,
    ValueRun,
)

__all__ = ["LogBase", "group_lag"]


class LogBase:
    """What the sync and async facades share: config cache, partitioner, validation."""

    _shared = False  # True for a part of a Database, which owns the backend

    def __init__(self, backend: LogBackend) -> None:
        self.backend = backend
        self._now = backend.clock
        self._configs: dict[str, TopicConfig] = {}
        self._partitioner = _core.Partitioner()
        self._closed = False

    @property
    def url(self) -> str:
        """The URL of the backend this log was opened on (no password in it)."""
        return self.backend.url

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the log is closed")

    def _forget(self, error: BaseException) -> None:
        """After an error that may mean a stale topic cache, drop the cache."""
        if isinstance(error, TopicNotFound | PartitionNotFound):
            self._configs.clear()

    def _items(
        self, topic: str, config: TopicConfig, messages: Iterable[Any]
    ) -> Sequence[AppendItem]:
        return _core.build_items(topic, config, messages, self._partitioner, self._now())

    def _prepare_one(
        self,
        topic: str,
        config: TopicConfig,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | dict[str, bytes] | None,
        timestamp: int | None,
        partition: int | None,
    ) -> Sequence[AppendItem]:
        """Validated items for a single append, with a fast path for a bare value."""
        if (
            key is None
            and headers is None
            and timestamp is None
            and partition is None
            and type(value) is bytes
            and len(value) <= config.record_bytes_max
            and config.cleanup_policy == "delete"
        ):
            return ValueRun(self._partitioner.sticky(config.partitions), [value], self._now())
        message = self._one(value, key, headers, timestamp, partition)
        return self._items(topic, config, (message,))

    def _one(
        self,
        value: bytes | None,
        key: bytes | None,
        headers: Headers | dict[str, bytes] | None,
        timestamp: int | None,
        partition: int | None,
    ) -> bytes | Message:
        if (
            key is None
            and not headers
            and timestamp is None
            and partition is None
            and (type(value) is bytes)
        ):
            return value  # the fast path: a bare value
        return Message(value, key, headers or (), timestamp, partition)  # type: ignore[arg-type]

    @staticmethod
    def _topic_config(
        partitions: int,
        retention_ms: int | None,
        retention_bytes: int | None,
        cleanup_policy: CleanupPolicy,
        tombstone_retention_ms: int,
        record_bytes_max: int,
    ) -> TopicConfig:
        return _core.check_config(
            TopicConfig(
                partitions=partitions,
                retention_ms=retention_ms,
                retention_bytes=retention_bytes,
                cleanup_policy=cleanup_policy,
                tombstone_retention_ms=tombstone_retention_ms,
                record_bytes_max=record_bytes_max,
            )
        )

    @staticmethod
    def _check_read(
        topic: str,
        offset: int,
        records_max: int,
        bytes_max: int = limits.read_bytes_max,
        timeout_s: float | None = None,
    ) -> None:
        _core.check_topic_name(topic)
        _core.check_offset("offset", offset)
        check_int("records_max", records_max, 1, limits.read_records_max)
        check_int("bytes_max", bytes_max, 1, limits.read_bytes_max)
        check_optional_seconds("timeout_s", timeout_s)


def group_lag(backend: LogBackend, group: str) -> dict[TopicPartition, tuple[int | None, int, int]]:
    """``(committed, end, lag)`` per partition of the group's topics (blocking)."""
    info = backend.describe_group(group)
    topics = {tp.topic for tp in info.committed}
    for member in info.members:
        topics.update(member.topics)
    out: dict[TopicPartition, tuple[int | None, int, int]] = {}
    for topic in sorted(topics):
        try:
            bounds = partition_bounds(backend, topic)
        except (TopicNotFound, PartitionNotFound):  # deleted (or re-created) meanwhile
            continue
        for partition, (start, end) in bounds.items():
            tp = TopicPartition(topic, partition)
            committed = info.committed.get(tp)
            base = committed if committed is not None else start
            out[tp] = (committed, end, max(0, end - base))
    return out


def partition_bounds(backend: LogBackend, topic: str) -> dict[int, tuple[int, int]]:
    """``(start_offset, end_offset)`` per partition of ``topic`` (blocking).
    Not ``describe_topic``: a backend may have to read a partition to count
    its bytes (NATS), while bounds are what every backend knows cheaply."""
    partitions = backend.topic_config(topic).partitions
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    return {tp.partition: bounds for tp, bounds in backend.offset_bounds(tps).items()}


def _consumer_core(
    topics: str | Sequence[str],
    group: str | None,
    member_id: str | None,
    auto_commit: bool,
    auto_commit_interval_s: float,
    offset_reset: OffsetReset,
    lease_ms: int,
    partitions: Sequence[TopicPartition] | None,
    instance_id: str | None = None,
) -> ConsumerCore:
    names = (topics,) if isinstance(topics, str) else tuple(topics)
    if not names:
        raise UsageError("a consumer needs at least one topic")
    for name in names:
        _core.check_topic_name(name)
    if group is not None:
        _core.check_group_name(group)
    if instance_id is not None:
        _check_static(group, member_id, partitions, instance_id)
    member = member_id or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    _core.check_group_name(member, "member_id")
    return ConsumerCore(
        names,
        group=group,
        member_id=member,
        auto_commit=auto_commit,
        auto_commit_interval_s=auto_commit_interval_s,
        offset_reset=offset_reset,
        lease_ms=lease_ms,
        partitions=[TopicPartition(*tp) for tp in partitions] if partitions is not None else None,
        instance_id=instance_id,
    )


def _check_static(
    group: str | None,
    member_id: str | None,
    partitions: Sequence[TopicPartition] | None,
    instance_id: str,
) -> None:
    """Validate a static member's options (see ``Log.consumer``)."""
    _core.check_group_name(instance_id, "instance_id")
    if group is None or partitions is not None:
        raise UsageError(
            f"instance_id {instance_id!r} needs a group and no fixed partitions: "
            "it names a member of a consumer group",
            instance_id=instance_id,
        )
    if member_id is not None:
        # Each incarnation needs its own member id: one shared with its
        # predecessor would let that zombie's commits through.
        raise UsageError(
            f"give instance_id {instance_id!r} or member_id {member_id!r}, not both: a "
            "static member gets a new member id each time it is opened",
            instance_id=instance_id,
            member_id=member_id,
        )
