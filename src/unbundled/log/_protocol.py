"""The log's records and the backend protocol every log backend implements.

Records crossing the boundary are frozen ``msgspec.Struct``s: as immutable as a
frozen dataclass, and several times cheaper to create, which matters when a
read hands out a million of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import msgspec

from .. import limits
from .._ground import SyncLevel as SyncLevel  # noqa: PLC0414 (moved; its old home)
from .._ground import Waiter as Waiter  # noqa: PLC0414 (moved; its old home)

CleanupPolicy = Literal["delete", "compact"]
Headers = tuple[tuple[str, bytes], ...]


class TopicPartition(NamedTuple):
    """One partition of one topic; usable as a dict key."""

    topic: str
    partition: int


class Record(msgspec.Struct, frozen=True, gc=False):
    """One stored record. ``value is None`` marks a tombstone (compacted topics)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int  # milliseconds since the Unix epoch

    @property
    def position(self) -> Position:
        """Where this record is: its topic, partition and offset."""
        return Position(self.topic, self.partition, self.offset)


class Position(msgspec.Struct, frozen=True, gc=False):
    """Where an appended record landed: the partition and its offset there."""

    topic: str
    partition: int
    offset: int


class Message(msgspec.Struct, frozen=True):
    """A record to append. ``partition=None`` lets the partitioner choose."""

    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()
    timestamp: int | None = None
    partition: int | None = None


class TopicConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A topic's settings, fixed at creation.

    ``retention_ms`` and ``retention_bytes`` (per partition, as in Kafka) bound
    ``delete`` topics; ``None`` keeps everything. ``compact`` topics keep the
    latest record per key and drop tombstones ``tombstone_retention_ms`` after
    their timestamp.
    """

    partitions: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None
    cleanup_policy: CleanupPolicy = "delete"
    tombstone_retention_ms: int = 86_400_000
    record_bytes_max: int = limits.record_bytes_default


class PartitionInfo(msgspec.Struct, frozen=True):
    """``start_offset`` is the first offset still stored; ``end_offset`` the next to be written."""

    partition: int
    start_offset: int
    end_offset: int
    records: int
    bytes: int


class TopicInfo(msgspec.Struct, frozen=True):
    """A topic as :meth:`Log.describe_topic <unbundled.Log.describe_topic>`
    finds it: its config, and its partitions in partition order."""

    name: str
    config: TopicConfig
    partitions: tuple[PartitionInfo, ...]


class AppendItem(NamedTuple):
    """A record ready for the backend: partition chosen, timestamp set, validated."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int


class ValueRun(Sequence[AppendItem]):
    """Bare values bound for one partition with one timestamp: the common
    batch, kept columnar so a backend can write it without an object per record."""

    __slots__ = ("partition", "timestamp", "values")

    def __init__(self, partition: int, values: list[bytes], timestamp: int) -> None:
        self.partition = partition
        self.values = values
        self.timestamp = timestamp

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> AppendItem:  # type: ignore[override]
        return AppendItem(self.partition, None, self.values[index], (), self.timestamp)

    def __iter__(self) -> Iterator[AppendItem]:
        partition, timestamp = self.partition, self.timestamp
        for value in self.values:
            yield AppendItem(partition, None, value, (), timestamp)


class ProducerStamp(NamedTuple):
    """Identifies an idempotent append: the producer, its epoch and sequence."""

    producer_id: str
    epoch: int
    sequence: int


class OffsetCommit(NamedTuple):
    """Offsets a group member commits, with the assignment generations it holds.

    ``offsets`` maps each partition to the next offset to consume (Kafka's
    convention). ``generations`` maps each to the generation in which the
    member was given it; the commit is fenced if ownership changed since.
    ``member_id=None`` commits without fencing (a consumer outside any group).
    """

    group: str
    member_id: str | None
    offsets: dict[TopicPartition, int]
    generations: dict[TopicPartition, int]


class WriteBatch(NamedTuple):
    """One atomic unit of writing: all of it becomes visible, or none of it.

    ``appends`` maps a topic to its records in order. A plain append is a batch
    with one topic; a transaction may hold several topics and offset commits.
    """

    appends: Mapping[str, Sequence[AppendItem]]
    commits: tuple[OffsetCommit, ...] = ()
    producer: ProducerStamp | None = None
    # The partition count each topic had when the partitioner chose: if the
    # topic was re-created with another count since, the batch is refused
    # (a key would land in the wrong partition).
    partitions: Mapping[str, int] | None = None


class MemberView(NamedTuple):
    """What a group member may do now.

    ``assigned`` maps each owned partition to the generation it was assigned
    in. ``ready`` are those the previous owner has released (or whose previous
    owner is gone): only these may be fetched, so two live members never work
    on one partition at once.
    """

    group: str
    member_id: str
    generation: int
    version: int
    assigned: dict[TopicPartition, int]
    ready: frozenset[TopicPartition]
    lease_ms: int


class GroupMemberInfo(msgspec.Struct, frozen=True):
    """One member of a group. ``instance_id`` is the stable name a static
    member gave (``None`` for a dynamic one); ``member_id`` is per incarnation."""

    member_id: str
    topics: tuple[str, ...]
    lease_until_ms: int
    partitions: tuple[TopicPartition, ...]
    instance_id: str | None = None


class GroupInfo(msgspec.Struct, frozen=True):
    """A consumer group as :meth:`Log.describe_group <unbundled.Log.describe_group>`
    finds it: the generation (it moves on every rebalance), the live members,
    and the committed offsets (the next offset to consume, per partition)."""

    name: str
    generation: int
    members: tuple[GroupMemberInfo, ...]
    committed: dict[TopicPartition, int]


class MaintenanceReport(msgspec.Struct, frozen=True):
    """What one retention/compaction pass removed, per topic."""

    removed: dict[str, int]


@runtime_checkable
class RecordStorage(Protocol):
    """The log's first capability: topics and their records. Every method is
    safe to call from any thread.

    Writes go through :meth:`submit`, which group-commits: many batches share
    one transaction and one sync. Reads never block writers.
    """

    url: str
    clock: Callable[[], int]  # ms since the epoch; records without a timestamp get it

    def create_topic(self, name: str, config: TopicConfig) -> None:
        """Create ``name``. Raises ``TopicExists`` if taken. Not idempotent."""

    def delete_topic(self, name: str) -> None:
        """Delete ``name`` with its records and committed offsets.
        Raises ``TopicNotFound``. A later topic of the same name starts empty."""

    def list_topics(self) -> list[str]:
        """Names of existing topics, sorted."""

    def topic_config(self, name: str) -> TopicConfig:
        """The topic's config. Raises ``TopicNotFound``."""

    def describe_topic(self, name: str) -> TopicInfo:
        """Config and per-partition bounds. Raises ``TopicNotFound``."""

    def offset_bounds(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """``(start_offset, end_offset)`` of each partition, as committed now.
        Raises ``TopicNotFound`` / ``PartitionNotFound``."""

    def submit(self, batch: WriteBatch, done: Waiter) -> None:
        """Queue ``batch`` for group commit and return at once.

        ``done`` is called exactly once, from any thread, with either the list
        of positions (in append order, topic by topic as given) or the typed
        error; on error nothing of the batch is visible. ``done`` runs only
        after the batch is durable at the backend's sync level.
        Validation errors in the batch (unknown topic, partition out of range,
        stale generation, fenced producer) fail this batch alone.
        """

    def read(
        self, topic: str, partition: int, offset: int, records_max: int, bytes_max: int
    ) -> list[Record]:
        """Records from ``offset`` on, in offset order, at most ``records_max``
        (at least one record if any exists, even if larger than ``bytes_max``).
        Raises ``OffsetOutOfRange`` for an offset below the start or above the
        end; returns ``[]`` at the end. Checksums are verified:
        ``CorruptionError`` rather than a damaged record."""

    def change_token(self) -> int:
        """A counter that moves when anything is committed, in this process or another."""

    def wait_for_change(self, token: int, timeout_s: float) -> int:
        """Block (without spinning) until the change token differs from
        ``token`` or ``timeout_s`` passes; return the current token."""

    def maintain(self) -> MaintenanceReport:
        """Apply retention and compaction now, per topic config."""

    def close(self) -> None:
        """Finish queued writes, then release everything. Idempotent."""


@runtime_checkable
class ProducerState(Protocol):
    """The log's idempotent producers: epochs that fence, sequences that dedupe."""

    def init_producer(self, producer_id: str) -> tuple[int, int]:
        """Register a new incarnation of ``producer_id``: returns ``(epoch,
        last_sequence)``. Earlier incarnations are fenced from now on."""


@runtime_checkable
class GroupCoordination(Protocol):
    """Consumer groups: membership with leases and generations (fencing
    tokens), assignments, committed offsets."""

    def group_join(
        self,
        group: str,
        member_id: str,
        topics: tuple[str, ...],
        lease_ms: int,
        instance_id: str | None = None,
        replace: bool = False,
    ) -> MemberView:
        """Add or refresh ``member_id`` (rebalancing if membership changed).

        With ``instance_id`` (static membership) and a live member holding
        it: ``replace=True`` hands that member's partitions to ``member_id``
        at once and removes it; ``replace=False`` raises ``InstanceFenced``.
        Raises ``UsageError`` if ``member_id`` is a member with another
        instance id. See ``log._groups.join``."""

    def group_heartbeat(self, group: str, member_id: str, acked_generation: int) -> MemberView:
        """Renew the lease, acknowledge ``acked_generation`` (releasing revoked
        partitions), expire dead members. Raises ``StaleGeneration`` if this
        member was expired: it must join again."""

    def group_version(self, group: str) -> int:
        """A counter that moves on every rebalance and release (cheap; a read).
        0 for a group that does not exist."""

    def group_leave(self, group: str, member_id: str) -> None:
        """Remove the member and hand its partitions to the others at once."""

    def committed(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed offsets."""

    def list_groups(self) -> list[str]:
        """Names of groups with members or committed offsets, sorted."""

    def describe_group(self, group: str) -> GroupInfo:
        """Members, assignments and committed offsets. Raises ``NotFound``."""


@runtime_checkable
class LogBackend(RecordStorage, ProducerState, GroupCoordination, Protocol):
    """Everything the log needs: records, idempotent producers, consumer groups."""


@runtime_checkable
class LoopWriter(Protocol):
    """Appends written from one event loop with a client of that loop's own
    (see :class:`OpensLoopWriter`)."""

    async def write(self, batch: WriteBatch) -> list[Position]:
        """What ``submit`` would answer for ``batch``, raised or returned here."""

    async def aclose(self) -> None:
        """Release the loop's client. Idempotent."""


@runtime_checkable
class OpensLoopWriter(Protocol):
    """A backend whose driver is asyncio-native (nats-py) can write from the
    caller's event loop: ``AsyncLog`` then appends without a hop to the
    backend's own loop thread and back, two thread switches per append that
    cost more than the publish itself."""

    async def _open_loop_writer(self) -> LoopWriter:
        """A writer bound to the running event loop."""
