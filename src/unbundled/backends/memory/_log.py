"""The memory backend: plain Python, no durability, the executable specification.

Every other backend is compared with this one by the model-based tests, so it
is written for obviousness, not speed: one lock, validate everything, then
mutate. Group commit is trivial here (each batch is applied at once).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ... import limits
from ..._ground import Waiter
from ...errors import (
    Closed,
    Error,
    LimitExceeded,
    NotFound,
    OffsetOutOfRange,
    TopicExists,
    TopicNotFound,
)
from ...log import _core, _groups
from ...log._protocol import (
    GroupInfo,
    MaintenanceReport,
    MemberView,
    PartitionInfo,
    Position,
    Record,
    TopicConfig,
    TopicInfo,
    TopicPartition,
    WriteBatch,
)


@dataclass
class _Partition:
    offsets: list[int] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    start: int = 0
    end: int = 0
    bytes: int = 0


@dataclass
class _Topic:
    config: TopicConfig
    partitions: list[_Partition]


@dataclass
class _Producer:
    epoch: int = 0
    last_sequence: int = -1
    window: OrderedDict[int, list[Position]] = field(default_factory=OrderedDict)


class MemoryLog:
    """The log part of the memory backend: dicts and lists under one lock."""

    url = "memory://"

    def __init__(self, clock: Callable[[], int] = _core.now_ms) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _groups.GroupState] = {}
        self._offsets: dict[str, dict[TopicPartition, int]] = {}
        self._producers: dict[str, _Producer] = {}
        self._token = 0
        self._closed = False

    # --- topics ---------------------------------------------------------------

    def _topic(self, name: str) -> _Topic:
        self._check_open()
        topic = self._topics.get(name)
        if topic is None:
            raise TopicNotFound(f"topic {name!r} does not exist", topic=name)
        return topic

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the log is closed")

    def create_topic(self, name: str, config: TopicConfig) -> None:
        with self._lock:
            self._check_open()
            if name in self._topics:
                raise TopicExists(f"topic {name!r} already exists", topic=name)
            if len(self._topics) >= limits.topics_max:
                raise LimitExceeded(f"at most {limits.topics_max} topics", topic=name)
            parts = [_Partition() for _ in range(config.partitions)]
            self._topics[name] = _Topic(config, parts)
            self._bump()

    def delete_topic(self, name: str) -> None:
        with self._lock:
            self._topic(name)
            del self._topics[name]
            for offsets in self._offsets.values():
                for tp in [tp for tp in offsets if tp.topic == name]:
                    del offsets[tp]
            self._bump()

    def list_topics(self) -> list[str]:
        with self._lock:
            self._check_open()
            return sorted(self._topics)

    def topic_config(self, name: str) -> TopicConfig:
        with self._lock:
            return self._topic(name).config

    def describe_topic(self, name: str) -> TopicInfo:
        with self._lock:
            topic = self._topic(name)
            infos = tuple(
                PartitionInfo(i, p.start, p.end, len(p.records), p.bytes)
                for i, p in enumerate(topic.partitions)
            )
            return TopicInfo(name, topic.config, infos)

    def _partition(self, tp: TopicPartition) -> _Partition:
        topic = self._topic(tp.topic)
        _core.check_partition(tp.topic, tp.partition, topic.config.partitions)
        return topic.partitions[tp.partition]

    def offset_bounds(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        with self._lock:
            out = {}
            for tp in tps:
                p = self._partition(tp)
                out[tp] = (p.start, p.end)
            return out

    # --- writing --------------------------------------------------------------

    def submit(self, batch: WriteBatch, done: Waiter) -> None:
        try:
            with self._lock:
                result: object = self._apply(batch)
                self._bump()
        except Error as exc:
            result = exc
        done(result)

    def _check_batch(self, batch: WriteBatch) -> None:
        """Everything that can refuse ``batch``, before anything is changed."""
        for name, items in batch.appends.items():
            topic = self._topic(name)
            _core.check_partition_count(name, batch.partitions, topic.config.partitions)
            for item in items:
                _core.check_partition(name, item.partition, topic.config.partitions)
        for commit in batch.commits:
            state = self._groups.get(commit.group) or _groups.GroupState(commit.group)
            _groups.check_commit(state, commit)
            for tp in commit.offsets:
                self._partition(tp)

    def _write_batch(self, batch: WriteBatch) -> list[Position]:
        """Write a checked batch (nothing here can fail)."""
        positions = []
        for name, items in batch.appends.items():
            topic = self._topic(name)
            for item in items:
                part = topic.partitions[item.partition]
                offset = part.end
                record = Record(
                    name,
                    item.partition,
                    offset,
                    item.key,
                    item.value,
                    item.headers,
                    item.timestamp,
                )
                size = _core.payload_size(item.key, item.value)
                part.offsets.append(offset)
                part.records.append(record)
                part.sizes.append(size)
                part.end += 1
                part.bytes += size
                positions.append(Position(name, item.partition, offset))
        for commit in batch.commits:
            self._offsets.setdefault(commit.group, {}).update(commit.offsets)
        return positions

    def _apply(self, batch: WriteBatch) -> list[Position]:
        # Validate everything first; mutate only when nothing can fail.
        producer = None
        if batch.producer is not None:
            stamp = batch.producer
            producer = self._producers.get(stamp.producer_id)
            seen = _core.check_sequence(
                stamp,
                producer.epoch if producer else None,
                producer.last_sequence if producer else -1,
                dict(producer.window) if producer else {},
            )
            if seen is not None:
                return seen
        self._check_batch(batch)
        positions = self._write_batch(batch)
        if producer is not None and batch.producer is not None:
            producer.last_sequence = batch.producer.sequence
            producer.window[batch.producer.sequence] = positions
            while len(producer.window) > limits.producer_window_requests_max:
                producer.window.popitem(last=False)
        return positions

    def _bump(self) -> None:
        self._token += 1
        self._changed.notify_all()

    # --- reading --------------------------------------------------------------

    def read(
        self, topic: str, partition: int, offset: int, records_max: int, bytes_max: int
    ) -> list[Record]:
        with self._lock:
            p = self._partition(TopicPartition(topic, partition))
            if offset < p.start or offset > p.end:
                raise OffsetOutOfRange(
                    f"offset {offset} is outside {topic}[{partition}]'s range {p.start}..{p.end}",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    start_offset=p.start,
                    end_offset=p.end,
                )
            i = bisect.bisect_left(p.offsets, offset)
            out: list[Record] = []
            size = 0
            for j in range(i, min(i + records_max, len(p.records))):
                size += p.sizes[j]
                if out and size > bytes_max:
                    break
                out.append(p.records[j])
            return out

    def change_token(self) -> int:
        with self._lock:
            return self._token

    def wait_for_change(self, token: int, timeout_s: float) -> int:
        with self._lock:
            self._changed.wait_for(lambda: self._token != token or self._closed, timeout_s)
            return self._token

    # --- producers ------------------------------------------------------------

    def init_producer(self, producer_id: str) -> tuple[int, int]:
        with self._lock:
            self._check_open()
            producer = self._producers.setdefault(producer_id, _Producer())
            producer.epoch += 1
            return producer.epoch, producer.last_sequence

    # --- consumer groups ------------------------------------------------------

    def _partition_counts(self, topics: set[str]) -> dict[str, int]:
        return {t: self._topics[t].config.partitions for t in topics if t in self._topics}

    def _subscribed(self, state: _groups.GroupState, extra: tuple[str, ...] = ()) -> dict[str, int]:
        topics = {t for m in state.members.values() for t in m.topics} | set(extra)
        return self._partition_counts(topics)

    def group_join(
        self,
        group: str,
        member_id: str,
        topics: tuple[str, ...],
        lease_ms: int,
        instance_id: str | None = None,
        replace: bool = False,
    ) -> MemberView:
        with self._lock:
            for t in topics:
                self._topic(t)
            state = self._groups.setdefault(group, _groups.GroupState(group))
            view = _groups.join(
                state,
                member_id,
                topics,
                lease_ms,
                self.clock(),
                self._subscribed(state, topics),
                instance_id,
                replace,
            )
            self._bump()
            return view

    def group_heartbeat(self, group: str, member_id: str, acked_generation: int) -> MemberView:
        with self._lock:
            self._check_open()
            # Not setdefault: a heartbeat to an unknown group fails and must
            # not create it (describe_group would then find an empty group).
            state = self._groups.get(group) or _groups.GroupState(group)
            view = _groups.heartbeat(
                state, member_id, acked_generation, self.clock(), self._subscribed(state)
            )
            self._bump()
            return view

    def group_version(self, group: str) -> int:
        with self._lock:
            self._check_open()
            state = self._groups.get(group)
            return state.version if state is not None else 0

    def group_leave(self, group: str, member_id: str) -> None:
        with self._lock:
            self._check_open()
            state = self._groups.get(group)
            if state is not None:
                _groups.leave(state, member_id, self._subscribed(state))
                self._bump()

    def committed(self, group: str) -> dict[TopicPartition, int]:
        with self._lock:
            self._check_open()
            return dict(self._offsets.get(group, {}))

    def list_groups(self) -> list[str]:
        with self._lock:
            self._check_open()
            names = {g for g, s in self._groups.items() if s.members}
            names |= {g for g, o in self._offsets.items() if o}
            return sorted(names)

    def describe_group(self, group: str) -> GroupInfo:
        with self._lock:
            self._check_open()
            state = self._groups.get(group)
            offsets = self._offsets.get(group, {})
            if state is None and not offsets:
                raise NotFound(f"group {group!r} does not exist", group=group)
            state = state or _groups.GroupState(group)
            return _groups.describe(state, dict(sorted(offsets.items())))

    # --- maintenance ----------------------------------------------------------

    def maintain(self) -> MaintenanceReport:
        with self._lock:
            self._check_open()
            now = self.clock()
            removed: dict[str, int] = {}
            for name, topic in self._topics.items():
                count = 0
                for p in topic.partitions:
                    if topic.config.cleanup_policy == "compact":
                        entries = [
                            (r.offset, r.key, r.value is None, r.timestamp) for r in p.records
                        ]
                        victims = set(_core.compaction_victims(entries, topic.config, now))
                        keep = [i for i, o in enumerate(p.offsets) if o not in victims]
                    else:
                        entries3 = [
                            (r.offset, r.timestamp, s)
                            for r, s in zip(p.records, p.sizes, strict=True)
                        ]
                        start = _core.retention_start(entries3, p.end, topic.config, now, p.bytes)
                        keep = [i for i, o in enumerate(p.offsets) if o >= start]
                        p.start = max(p.start, start)
                    count += len(p.offsets) - len(keep)
                    p.offsets = [p.offsets[i] for i in keep]
                    p.records = [p.records[i] for i in keep]
                    p.sizes = [p.sizes[i] for i in keep]
                    p.bytes = sum(p.sizes)
                if count:
                    removed[name] = count
            if removed:
                self._bump()
            return MaintenanceReport(removed)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify_all()
