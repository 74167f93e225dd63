"""The log's pure core: Kafka's partitioning, validation at the boundary,
checksums, and the retention/compaction spec the backends implement."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled import limits
from unbundled.errors import (
    LimitExceeded,
    OutOfOrderSequence,
    PartitionNotFound,
    ProducerFenced,
    RecordTooLarge,
    UsageError,
)
from unbundled.log import _core
from unbundled.log._core import (
    Partitioner,
    build_items,
    check_config,
    check_partition,
    check_sequence,
    check_topic_name,
    checksum,
    compaction_victims,
    murmur2,
    partition_for_key,
    retention_start,
)
from unbundled.log._protocol import Message, Position, ProducerStamp, TopicConfig, ValueRun

# --- partitioning -------------------------------------------------------------

# From Kafka's own test suite (clients/.../common/utils/UtilsTest.java).
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"abc", 479470107),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_MURMUR2)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


# Where keys land, pinned: a change here moves every keyed record of every
# user to another partition, so it must never happen silently.
PINNED = {
    b"": [0, 1, 0, 2, 9, 81],
    b"a": [0, 0, 1, 5, 4, 24],
    b"customer-7": [0, 1, 1, 6, 7, 11],
    b"order-12345": [0, 1, 1, 3, 1, 29],
    b"\xff\x00\x01": [0, 1, 0, 5, 3, 55],
    "ключ".encode(): [0, 0, 2, 4, 8, 24],
}
COUNTS = (1, 2, 3, 7, 12, 100)


@pytest.mark.parametrize("key", list(PINNED))
def test_partition_for_key_is_pinned(key: bytes) -> None:
    assert [partition_for_key(key, n) for n in COUNTS] == PINNED[key]


def test_partition_for_key_is_the_same_in_another_process() -> None:
    # A different PYTHONHASHSEED: placement must not depend on hash().
    code = (
        "from unbundled.log._core import partition_for_key as p\n"
        f"print([[p(k, n) for n in {COUNTS!r}] for k in {list(PINNED)!r}])"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == repr(list(PINNED.values()))


@given(st.binary(max_size=64), st.integers(1, limits.partitions_max))
def test_partition_for_key_is_kafkas_formula(key: bytes, partitions: int) -> None:
    h = murmur2(key)
    assert -(2**31) <= h < 2**31
    assert partition_for_key(key, partitions) == (h & 0x7FFFFFFF) % partitions


def test_partitioner_is_sticky_per_batch_and_round_robin_between() -> None:
    partitioner = Partitioner()
    config = TopicConfig(partitions=3)
    chosen = []
    for _ in range(6):
        items = build_items("t", config, [b"a", b"b", b"c"], partitioner, 0)
        assert len({item.partition for item in items}) == 1
        chosen.append(items[0].partition)
    assert chosen == [0, 1, 2, 0, 1, 2]
    keyed = build_items("t", config, [Message(b"v", key=b"customer-7")], partitioner, 0)
    assert keyed[0].partition == partition_for_key(b"customer-7", 3)


@given(st.lists(st.binary(max_size=32), min_size=1, max_size=50), st.integers(1, 8))
def test_partitioner_choose_agrees_with_kafka_and_skips_the_cache_for_one_partition(
    keys: list[bytes], partitions: int
) -> None:
    partitioner = Partitioner()
    partition_for_key.cache_clear()
    chosen = [partitioner.choose(key, partitions, 0) for key in keys]
    assert chosen == [(murmur2(k) & 0x7FFFFFFF) % partitions for k in keys]
    # One partition: the answer is 0 and the cache (which grew per distinct key) is untouched.
    cached = partition_for_key.cache_info().currsize
    assert cached == (0 if partitions == 1 else len(set(keys)))


def test_bare_values_stay_columnar() -> None:
    items = build_items("t", TopicConfig(partitions=2), [b"a", b"b"], Partitioner(), 7)
    assert type(items) is ValueRun
    assert [tuple(i) for i in items] == [(0, None, b"a", (), 7), (0, None, b"b", (), 7)]


# --- validation names the offending value ---------------------------------------


@pytest.mark.parametrize("name", ["", "a b", "x/y", ".", "..", "ü", "t" * 250, 3, None])
def test_bad_topic_names(name: Any) -> None:
    with pytest.raises(UsageError) as info:
        check_topic_name(name)
    assert info.value.details["topic"] == name
    if isinstance(name, str) and name:
        assert repr(name)[:40] in str(info.value)


def test_good_topic_names() -> None:
    for name in ["orders", "a.b-c_d", "T1", "t" * 249]:
        assert check_topic_name(name) == name


def test_partition_out_of_range_names_it() -> None:
    with pytest.raises(PartitionNotFound) as info:
        check_partition("orders", 3, 3)
    assert info.value.details == {"topic": "orders", "partition": 3}
    assert "3" in str(info.value) and "orders" in str(info.value)
    with pytest.raises(UsageError) as bad:
        check_partition("orders", "1", 3)  # type: ignore[arg-type]
    assert bad.value.details["partition"] == "1"
    assert not isinstance(bad.value, PartitionNotFound)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partitions", 0),
        ("partitions", limits.partitions_max + 1),
        ("partitions", 1.5),
        ("retention_ms", 0),
        ("retention_bytes", -1),
        ("tombstone_retention_ms", -1),
        ("record_bytes_max", limits.record_bytes_max + 1),
        ("partitions", True),  # bool is an int subclass, but not a count
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    config = TopicConfig(**{field: value})
    with pytest.raises(UsageError) as info:
        check_config(config)
    assert info.value.details == {field: value}
    assert field in str(info.value)


def test_bad_cleanup_policy() -> None:
    with pytest.raises(UsageError) as info:
        check_config(TopicConfig(cleanup_policy="keep"))  # type: ignore[arg-type]
    assert info.value.details["cleanup_policy"] == "keep"


@pytest.mark.parametrize(
    ("check", "value", "detail"),
    [
        (_core.check_group_name, "a b", "group"),
        (_core.check_group_name, "", "group"),
        (_core.check_group_name, "g" * 256, "group"),
        (_core.check_producer_id, "", "producer_id"),
        (_core.check_producer_id, 7, "producer_id"),
        (_core.check_producer_id, "p" * 256, "producer_id"),
    ],
)
def test_bad_names(check: Any, value: Any, detail: str) -> None:
    with pytest.raises(UsageError) as info:
        check(value)
    assert info.value.details == {detail: value}


def test_record_too_large_names_the_sizes() -> None:
    config = TopicConfig(record_bytes_max=10)
    assert _core.check_record("t", config, b"k", b"v" * 9, ()) == 10
    with pytest.raises(RecordTooLarge) as info:
        _core.check_record("t", config, b"k", b"v" * 9, (("h", b""),))
    assert info.value.details == {"topic": "t", "size": 11, "record_bytes_max": 10}
    with pytest.raises(RecordTooLarge):
        _core.check_record("t", TopicConfig(), b"k" * (limits.key_bytes_max + 1), b"", ())


@pytest.mark.parametrize(
    ("message", "config"),
    [
        (Message("text"), TopicConfig()),  # type: ignore[arg-type]
        (Message(b"v", key="k"), TopicConfig()),  # type: ignore[arg-type]
        (Message(None), TopicConfig()),  # a tombstone outside a compacted topic
        (Message(b"v"), TopicConfig(cleanup_policy="compact")),  # no key
        (Message(b"v", timestamp=-1), TopicConfig()),
        (Message(b"v", headers=(("h", "text"),)), TopicConfig()),  # type: ignore[arg-type]
        (Message(b"v", headers=((1, b"x"),)), TopicConfig()),  # type: ignore[arg-type]
        ("text", TopicConfig()),
    ],
)
def test_wrong_types_are_usage_errors(message: Any, config: TopicConfig) -> None:
    with pytest.raises(UsageError) as info:
        build_items("orders", config, [message], Partitioner(), 0)
    assert info.value.details["topic"] == "orders"


def test_too_many_headers() -> None:
    headers = tuple((f"h{i}", b"") for i in range(limits.header_count_max + 1))
    with pytest.raises(LimitExceeded):
        build_items("t", TopicConfig(), [Message(b"v", headers=headers)], Partitioner(), 0)


def test_headers_accept_dict_and_pairs() -> None:
    assert _core.check_headers({"a": b"1"}, "t") == (("a", b"1"),)
    assert _core.check_headers([("a", b"1"), ("a", b"2")], "t") == (("a", b"1"), ("a", b"2"))
    assert _core.check_headers(None, "t") == ()


# --- checksums ------------------------------------------------------------------


def test_checksum_covers_every_field() -> None:
    base = checksum(5, 1000, b"k", b"v", b"h")
    assert base == checksum(5, 1000, b"k", b"v", b"h")
    variants = [
        checksum(6, 1000, b"k", b"v", b"h"),
        checksum(5, 1001, b"k", b"v", b"h"),
        checksum(5, 1000, b"K", b"v", b"h"),
        checksum(5, 1000, b"k", b"V", b"h"),
        checksum(5, 1000, b"k", b"v", b"H"),
    ]
    assert base not in variants
    assert 0 <= base < 2**32


# --- retention and compaction (the spec SQLite's SQL must match) -----------------


def _entries(sizes: list[int], stamps: list[int]) -> list[tuple[int, int, int]]:
    return [(i, ts, size) for i, (size, ts) in enumerate(zip(sizes, stamps, strict=True))]


def test_retention_by_time_removes_the_old_prefix_only() -> None:
    config = TopicConfig(retention_ms=100)
    entries = _entries([1, 1, 1, 1], [0, 50, 0, 500])
    # now=200: cutoff 100; records 0..2 are old, but the prefix stops at none young.
    assert retention_start(entries, 4, config, 200, 4) == 3
    young_first = _entries([1, 1], [150, 0])
    assert retention_start(young_first, 2, config, 200, 2) == 0, "a young record shields"


def test_retention_by_bytes_removes_the_shortest_prefix() -> None:
    config = TopicConfig(retention_bytes=25)
    entries = _entries([10] * 5, [0] * 5)
    assert retention_start(entries, 5, config, 0, 50) == 3
    assert retention_start(entries[3:], 5, config, 0, 20) == 3


def test_retention_of_everything_moves_start_to_end() -> None:
    entries = _entries([10, 10], [0, 0])
    assert retention_start(entries, 2, TopicConfig(retention_ms=1), 100, 20) == 2
    assert retention_start([], 7, TopicConfig(retention_ms=1), 100, 0) == 7


@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1000)), max_size=30),
    st.one_of(st.none(), st.integers(1, 500)),
    st.one_of(st.none(), st.integers(1, 100)),
    st.integers(0, 1500),
)
def test_retention_start_is_the_minimal_cut(
    records: list[tuple[int, int]], retention_ms: int | None, retention_bytes: int | None, now: int
) -> None:
    entries = [(i, ts, size) for i, (size, ts) in enumerate(records)]
    total = sum(size for size, _ in records)
    config = TopicConfig(retention_ms=retention_ms, retention_bytes=retention_bytes)
    cut = retention_start(entries, len(entries), config, now, total)
    assert 0 <= cut <= len(entries)
    kept = entries[cut:]
    if retention_bytes is not None:
        assert sum(e[2] for e in kept) <= retention_bytes or not kept
    if cut > 0:  # the last removed record had to go: too old or too many bytes
        last = entries[cut - 1]
        old_prefix = retention_ms is not None and all(
            e[1] < now - retention_ms for e in entries[:cut]
        )
        over = retention_bytes is not None and sum(e[2] for e in entries[cut - 1 :]) > (
            retention_bytes
        )
        assert old_prefix or over, (cut, last)


def test_compaction_keeps_latest_per_key_and_expires_tombstones() -> None:
    config = TopicConfig(cleanup_policy="compact", tombstone_retention_ms=100)
    entries = [
        (0, b"a", False, 0),
        (1, b"b", False, 0),
        (2, b"a", False, 0),
        (3, b"b", True, 0),
        (4, b"c", True, 950),
    ]
    assert compaction_victims(entries, config, 1000) == [0, 1, 3]
    assert compaction_victims(entries, config, 50) == [0, 1]


@given(
    st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"c", b""]), st.booleans(), st.integers(0, 100)),
        max_size=30,
    ),
    st.integers(0, 100),
    st.integers(0, 200),
)
def test_compaction_victims_law(
    records: list[tuple[bytes, bool, int]], tombstone_ms: int, now: int
) -> None:
    entries = [(i, key, dead, ts) for i, (key, dead, ts) in enumerate(records)]
    config = TopicConfig(cleanup_policy="compact", tombstone_retention_ms=tombstone_ms)
    victims = set(compaction_victims(entries, config, now))
    latest = {key: i for i, (key, _, _) in enumerate(records)}
    for offset, key, dead, ts in entries:
        expired = dead and ts < now - tombstone_ms
        assert (offset in victims) == (latest[key] != offset or expired)
    assert compaction_victims(entries, config, now) == sorted(victims), "in offset order"


# --- idempotent producers -----------------------------------------------------------


def test_check_sequence_rules() -> None:
    window = {4: [Position("t", 0, 9)]}
    stamp = ProducerStamp("p", 2, 5)
    assert check_sequence(stamp, 2, 4, window) is None, "above the last: write"
    assert check_sequence(ProducerStamp("p", 2, 9), 2, 4, window) is None, "may skip"
    assert check_sequence(ProducerStamp("p", 2, 4), 2, 4, window) == [Position("t", 0, 9)]
    with pytest.raises(OutOfOrderSequence) as info:
        check_sequence(ProducerStamp("p", 2, 3), 2, 4, window)
    assert info.value.details == {"producer_id": "p", "sequence": 3, "last_sequence": 4}
    with pytest.raises(ProducerFenced) as fenced:
        check_sequence(ProducerStamp("p", 1, 5), 2, 4, window)
    assert fenced.value.details == {"producer_id": "p", "epoch": 1}
    with pytest.raises(ProducerFenced):
        check_sequence(stamp, None, -1, {})
