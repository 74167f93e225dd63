"""Pure, I/O-free decisions of the log: partitioning, validation, checksums,
retention and compaction. Backends and the sync/async facades share these, so
they agree by construction and the memory backend stays the specification.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from .. import limits
from .._bounds import check_int, check_optional_int
from .._ground import crc32
from .._ground import now_ms as now_ms  # noqa: PLC0414 (moved; its old home)
from ..errors import (
    LimitExceeded,
    OutOfOrderSequence,
    PartitionNotFound,
    ProducerFenced,
    RecordTooLarge,
    UsageError,
)
from ._protocol import (
    AppendItem,
    Headers,
    Message,
    Position,
    ProducerStamp,
    TopicConfig,
    TopicPartition,
    ValueRun,
)

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")
_GROUP_NAME = re.compile(r"[A-Za-z0-9._:@-]+")


# --- partitioning -------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a
    signed 32-bit int. Used so a key lands in the same partition as with
    Kafka's default partitioner, in every process and every version."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - (length & 3)
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@lru_cache(maxsize=65_536)
def partition_for_key(key: bytes, partitions: int) -> int:
    """``toPositive(murmur2(key)) % partitions``, exactly as Kafka computes it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --- validation at the boundary -----------------------------------------------


def check_topic_name(name: object) -> str:
    if not isinstance(name, str):
        raise UsageError(f"topic name must be a str, got {type(name).__name__}", topic=name)
    if not name or len(name.encode()) > limits.topic_name_bytes_max:
        raise UsageError(
            f"topic name {name!r} must be 1 to {limits.topic_name_bytes_max} bytes", topic=name
        )
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"topic name {name!r} may only contain letters, digits, '.', '_' and '-'",
            topic=name,
        )
    return name


_NAME_BOUNDS = {
    "group": limits.group_name_bytes_max,
    "member_id": limits.member_id_bytes_max,
    "instance_id": limits.instance_id_bytes_max,
}


def check_group_name(name: object, what: str = "group") -> str:
    """A group name, member id or instance id (``what``): a str of letters,
    digits and ``._:@-`` within its bound."""
    bound = _NAME_BOUNDS[what]
    if not isinstance(name, str) or not name or len(name.encode()) > bound:
        raise UsageError(f"{what} {name!r} must be a str of 1 to {bound} bytes", **{what: name})
    if not _GROUP_NAME.fullmatch(name):
        raise UsageError(
            f"{what} {name!r} may only contain letters, digits and '._:@-'", **{what: name}
        )
    return name


def check_producer_id(producer_id: object) -> str:
    if (
        not isinstance(producer_id, str)
        or not producer_id
        or len(producer_id.encode()) > limits.producer_id_bytes_max
    ):
        raise UsageError(
            f"producer id {producer_id!r} must be a str of 1 to "
            f"{limits.producer_id_bytes_max} bytes",
            producer_id=producer_id,
        )
    return producer_id


def check_config(config: TopicConfig) -> TopicConfig:
    """Every field in its bound (``limits``): a config that passes can never
    make maintenance or a read fail later."""
    check_int("partitions", config.partitions, 1, limits.partitions_max)
    check_optional_int("retention_ms", config.retention_ms, 1, limits.retention_ms_max)
    check_optional_int("retention_bytes", config.retention_bytes, 1, limits.retention_bytes_max)
    check_int("tombstone_retention_ms", config.tombstone_retention_ms, 0, limits.retention_ms_max)
    check_int("record_bytes_max", config.record_bytes_max, 1, limits.record_bytes_max)
    if config.cleanup_policy not in ("delete", "compact"):
        raise UsageError(
            f"cleanup_policy must be 'delete' or 'compact', got {config.cleanup_policy!r}",
            cleanup_policy=config.cleanup_policy,
        )
    return config


def check_timestamp(timestamp: object, topic: str) -> int:
    """A record's timestamp: milliseconds since the epoch, up to year 9999."""
    if type(timestamp) is not int or not 0 <= timestamp <= limits.timestamp_ms_max:
        raise UsageError(
            f"timestamp must be an int 0..{limits.timestamp_ms_max} (ms), got {timestamp!r}",
            topic=topic,
            timestamp=timestamp,
        )
    return timestamp


def check_offset(name: str, offset: object) -> int:
    """An offset, position, version or sequence number a caller passes."""
    return check_int(name, offset, 0, limits.position_max)


def check_offsets(offsets: Mapping[Any, object]) -> dict[TopicPartition, int]:
    """Offsets to commit, by ``(topic, partition)``."""
    return {TopicPartition(*tp): check_offset("offset", o) for tp, o in offsets.items()}


def check_partition(topic: str, partition: int, partitions: int) -> int:
    if type(partition) is not int:
        raise UsageError(
            f"partition must be an int, got {type(partition).__name__}", partition=partition
        )
    if not 0 <= partition < partitions:
        raise PartitionNotFound(
            f"topic {topic!r} has partitions 0..{partitions - 1}, not {partition}",
            topic=topic,
            partition=partition,
        )
    return partition


def _check_bytes(what: str, value: object, topic: str) -> None:
    raise UsageError(
        f"record {what} for topic {topic!r} must be bytes or None, got {type(value).__name__}",
        topic=topic,
    )


def check_headers(headers: object, topic: str) -> Headers:
    if headers is None or headers == ():
        return ()
    items = headers.items() if isinstance(headers, dict) else headers
    try:
        out = tuple((name, value) for name, value in items)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise UsageError(
            f"headers for topic {topic!r} must be (name, bytes) pairs, got {headers!r}",
            topic=topic,
        ) from None
    if len(out) > limits.header_count_max:
        raise LimitExceeded(
            f"{len(out)} headers exceed the limit of {limits.header_count_max}", topic=topic
        )
    for name, value in out:
        if not isinstance(name, str) or len(name.encode()) > limits.header_name_bytes_max:
            raise UsageError(f"header name {name!r} must be a short str", topic=topic)
        if type(value) is not bytes:
            raise UsageError(
                f"header {name!r} value must be bytes, got {type(value).__name__}", topic=topic
            )
    return out


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
    for name, hv in headers:
        size += len(name) + len(hv)
    return size


def payload_size(key: bytes | None, value: bytes | None) -> int:
    """Bytes a record counts for in retention and in partition sizes: key and
    value (headers are bounded by ``record_bytes_max`` but not counted here)."""
    return (len(key) if key is not None else 0) + (len(value) if value is not None else 0)


def check_record(
    topic: str,
    config: TopicConfig,
    key: object,
    value: object,
    headers: Headers,
) -> int:
    """Validate one record against the topic; return its size in bytes."""
    if key is not None and type(key) is not bytes:
        _check_bytes("key", key, topic)
    if value is not None and type(value) is not bytes:
        _check_bytes("value", value, topic)
    if config.cleanup_policy == "compact" and key is None:
        raise UsageError(f"topic {topic!r} is compacted: every record needs a key", topic=topic)
    if value is None and config.cleanup_policy != "compact":
        raise UsageError(
            f"topic {topic!r}: a record without a value (tombstone) needs a compacted topic",
            topic=topic,
        )
    assert key is None or isinstance(key, bytes)
    assert value is None or isinstance(value, bytes)
    if key is not None and len(key) > limits.key_bytes_max:
        raise RecordTooLarge(
            f"key of {len(key)} bytes exceeds the limit of {limits.key_bytes_max}", topic=topic
        )
    size = record_size(key, value, headers)
    if size > config.record_bytes_max:
        raise RecordTooLarge(
            f"record of {size} bytes exceeds the record_bytes_max of topic {topic!r} "
            f"({config.record_bytes_max} bytes)",
            topic=topic,
            size=size,
            record_bytes_max=config.record_bytes_max,
        )
    return size


class Partitioner:
    """Chooses partitions: by key hash; without a key, sticky per batch and
    round-robin between batches (Kafka's sticky partitioner), so one batch of
    keyless records lands in one partition and one transaction."""

    def __init__(self) -> None:
        self._next = 0

    def sticky(self, partitions: int) -> int:
        chosen = self._next % partitions
        self._next = chosen + 1
        return chosen

    def choose(self, key: bytes | None, partitions: int, sticky: int) -> int:
        if key is None:
            return sticky
        if partitions == 1:
            # Not through partition_for_key's cache: every distinct key of a one-partition
            # topic (CDC's default) would take a cache entry only to learn the answer 0.
            return 0
        return partition_for_key(key, partitions)


def build_items(
    topic: str,
    config: TopicConfig,
    messages: Iterable[Any],
    partitioner: Partitioner,
    timestamp: int,
) -> Sequence[AppendItem]:
    """Turn user input (``bytes`` values or :class:`Message`) into validated items."""
    partitions = config.partitions
    sticky = partitioner.sticky(partitions)
    if (
        type(messages) is list
        and config.cleanup_policy == "delete"
        and all(type(m) is bytes for m in messages)
    ):
        # The common case, kept columnar: bare values, one partition.
        if len(messages) > limits.batch_records_max:
            raise LimitExceeded(
                f"batch of {len(messages)} records exceeds the limit of {limits.batch_records_max}",
                topic=topic,
            )
        if sum(map(len, messages)) > limits.batch_bytes_max:
            raise LimitExceeded(
                f"batch exceeds the limit of {limits.batch_bytes_max} bytes", topic=topic
            )
        if messages and max(map(len, messages)) > config.record_bytes_max:
            for m in messages:
                check_record(topic, config, None, m, ())
        return ValueRun(sticky, messages.copy(), timestamp)
    items: list[AppendItem] = []
    total = 0
    for message in messages:
        if type(message) is bytes:
            if len(message) > config.record_bytes_max or config.cleanup_policy == "compact":
                check_record(topic, config, None, message, ())
            items.append(AppendItem(sticky, None, message, (), timestamp))
            total += len(message)
            continue
        if not isinstance(message, Message):
            raise UsageError(
                f"append to {topic!r} takes bytes or Message, got {type(message).__name__}",
                topic=topic,
            )
        headers = check_headers(message.headers, topic)
        total += check_record(topic, config, message.key, message.value, headers)
        if message.partition is None:
            partition = partitioner.choose(message.key, partitions, sticky)
        else:
            partition = check_partition(topic, message.partition, partitions)
        ts = timestamp if message.timestamp is None else check_timestamp(message.timestamp, topic)
        items.append(AppendItem(partition, message.key, message.value, headers, ts))
    if len(items) > limits.batch_records_max:
        raise LimitExceeded(
            f"batch of {len(items)} records exceeds the limit of {limits.batch_records_max}",
            topic=topic,
        )
    if total > limits.batch_bytes_max:
        raise LimitExceeded(
            f"batch of {total} bytes exceeds the limit of {limits.batch_bytes_max}", topic=topic
        )
    return items


# --- checksums ----------------------------------------------------------------

# The one CRC-32 every stored checksum uses; the name stays for old imports.
_crc32 = crc32


def checksum(
    offset: int, timestamp: int, key: bytes | None, value: bytes | None, headers_blob: bytes | None
) -> int:
    """CRC-32 of a stored record: chained over headers, key and value, seeded
    with the low 32 bits of ``offset XOR timestamp`` (see docs/reference/format.md)."""
    crc = _crc32(headers_blob or b"", (offset ^ timestamp) & 0xFFFFFFFF)
    crc = _crc32(key or b"", crc)
    return _crc32(value or b"", crc)


# --- retention and compaction -------------------------------------------------


def retention_start(
    entries: Sequence[tuple[int, int, int]],
    end_offset: int,
    config: TopicConfig,
    now: int,
    total_bytes: int,
) -> int:
    """The new start offset of a ``delete`` partition.

    ``entries`` are ``(offset, timestamp, size)`` in offset order. Time
    retention removes the longest prefix whose records are all older than
    ``now - retention_ms``; size retention then removes the shortest prefix
    that brings the partition to ``retention_bytes`` or less. Never removes
    past ``end_offset``; offsets themselves are never reused.
    """
    cut = 0
    if config.retention_ms is not None:
        cutoff = now - config.retention_ms
        while cut < len(entries) and entries[cut][1] < cutoff:
            cut += 1
    if config.retention_bytes is not None:
        remaining = total_bytes - sum(size for _, _, size in entries[:cut])
        while cut < len(entries) and remaining > config.retention_bytes:
            remaining -= entries[cut][2]
            cut += 1
    return entries[cut][0] if cut < len(entries) else end_offset


def compaction_victims(
    entries: Sequence[tuple[int, bytes | None, bool, int]],
    config: TopicConfig,
    now: int,
) -> list[int]:
    """Offsets a ``compact`` partition drops: every record that has a later
    record with the same key, and tombstones (latest for their key) whose
    timestamp is older than ``now - tombstone_retention_ms``.

    ``entries`` are ``(offset, key, is_tombstone, timestamp)``.
    """
    latest: dict[bytes | None, int] = {}
    for offset, key, _, _ in entries:
        latest[key] = offset
    cutoff = now - config.tombstone_retention_ms
    victims = []
    for offset, key, tombstone, timestamp in entries:
        if latest[key] != offset or (tombstone and timestamp < cutoff):
            victims.append(offset)
    return victims


# --- idempotent producers -----------------------------------------------------


def check_sequence(
    stamp: ProducerStamp,
    epoch: int | None,
    last_sequence: int,
    window: dict[int, list[Position]],
) -> list[Position] | None:
    """Decide an idempotent append: ``None`` means write it; a list means it is
    a retry of an append already written, answered with its positions.

    Raises ``ProducerFenced`` if a newer incarnation of the producer exists, and
    ``OutOfOrderSequence`` for a sequence at or below the last one that is not
    among the remembered recent ones. Sequences must increase but may skip.
    """
    if epoch is None or stamp.epoch != epoch:
        raise ProducerFenced(
            f"producer {stamp.producer_id!r} epoch {stamp.epoch} was fenced by epoch {epoch}",
            producer_id=stamp.producer_id,
            epoch=stamp.epoch,
        )
    if stamp.sequence > last_sequence:
        return None
    if stamp.sequence in window:
        return window[stamp.sequence]
    raise OutOfOrderSequence(
        f"producer {stamp.producer_id!r} sequence {stamp.sequence} is not above its last "
        f"written sequence {last_sequence} and not one of its last "
        f"{limits.producer_window_requests_max} requests (a retry of those gets its "
        "positions back); nothing was written. Resuming a numbered input? Skip up to "
        "the producer's last_sequence",
        producer_id=stamp.producer_id,
        sequence=stamp.sequence,
        last_sequence=last_sequence,
    )


def check_partition_count(topic: str, expected: Mapping[str, int] | None, actual: int) -> None:
    """Refuse a batch partitioned for another incarnation of the topic."""
    if expected is not None and expected.get(topic, actual) != actual:
        raise PartitionNotFound(
            f"topic {topic!r} now has {actual} partitions, not {expected[topic]}: it was "
            "deleted and created again meanwhile; nothing was written, retry",
            topic=topic,
            partitions=actual,
            recreated=True,
        )
