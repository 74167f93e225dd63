"""The log's contract: checks every :class:`~unbundled.log.LogBackend` must pass.

Each check is a plain function taking a :class:`LogTarget` (how to open a log
on the backend under test) and raising ``AssertionError`` when a guarantee is
broken. A backend's test module runs all of them, so memory, SQLite and the
server backends to come are held to one written-down contract
(the ``eventsourcing`` library's approach)::

    from unbundled.testing.contract import LogTarget, all_checks

    @pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__)
    def test_log_contract(check, tmp_path):
        check(LogTarget("sqlite", lambda clock: Log.open(tmp_path / "x.db", clock=clock), True))

This module holds topics, records, idempotent producers and the closed state;
:mod:`unbundled.testing.contract_groups` holds consumer groups, transactions,
retention and compaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .. import limits
from ..errors import (
    Closed,
    NotSupported,
    OffsetOutOfRange,
    OutOfOrderSequence,
    PartitionNotFound,
    ProducerFenced,
    RecordTooLarge,
    StaleGeneration,
    TopicExists,
    TopicNotFound,
    UsageError,
)
from ..log import Log, Message, Position, TopicPartition
from ._log_kit import (
    Check,
    LogTarget,
    durable_only,
    ends,
    kafka_partition,
    poll_until,
    raises,
    read_all,
    run_threads,
)
from .clock import SimClock
from .contract_effectively_once import CHECKS as EFFECTIVELY_ONCE_CHECKS
from .contract_groups import CHECKS as GROUP_CHECKS

__all__ = [
    "Check",
    "LogTarget",
    "all_checks",
    "durable_only",
    "poll_until",
    "raises",
    "read_all",
    "run_threads",
]


def all_checks(*, durable: bool = True, records_with_offsets: bool = True) -> list[Check]:
    """Every contract check; without ``durable``, only those a non-durable
    store (like memory) can pass; ``records_with_offsets`` chooses between
    the checks of one transaction holding records and offset commits and
    those of the weaker behaviour (see :class:`LogTarget`)."""
    checks = [*CHECKS, *GROUP_CHECKS, *EFFECTIVELY_ONCE_CHECKS]
    return [
        c
        for c in checks
        if (durable or not getattr(c, "durable_only", False))
        and getattr(c, "records_with_offsets", records_with_offsets) == records_with_offsets
    ]


# --- topics -------------------------------------------------------------------


def check_topics_are_explicit(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        err = raises(TopicNotFound, lambda: log.append("ghost", b"x"))
        assert err.details["topic"] == "ghost" and "ghost" in str(err)
        raises(TopicNotFound, lambda: log.read("ghost"))
        raises(TopicNotFound, lambda: log.describe_topic("ghost"))
        raises(TopicNotFound, lambda: log.delete_topic("ghost"))
        raises(TopicNotFound, lambda: log.consumer("ghost", group="g").poll(0.01))
        assert log.topics() == []
        config = log.create_topic("t", 3, retention_ms=60_000)
        assert config.partitions == 3 and config.retention_ms == 60_000
        assert log.describe_topic("t").config == config
        err2 = raises(TopicExists, lambda: log.create_topic("t", 3, retention_ms=60_000))
        assert err2.details["topic"] == "t"
        assert log.create_topic("t", 3, retention_ms=60_000, exist_ok=True) == config
        raises(TopicExists, lambda: log.create_topic("t", 4, exist_ok=True))
        raises(TopicExists, lambda: log.create_topic("t", 3, exist_ok=True))
        log.create_topic("a")
        assert log.topics() == ["a", "t"]
        log.append("t", b"x")
        log.delete_topic("t")
        assert log.topics() == ["a"]
        raises(TopicNotFound, lambda: log.append("t", b"x"))
        log.create_topic("t", 2)
        assert [p.end_offset for p in log.describe_topic("t").partitions] == [0, 0]


def check_partition_out_of_range(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 2)
        for bad in (2, 99, -1):
            err = raises(PartitionNotFound, lambda bad=bad: log.read("t", bad))  # type: ignore[misc]
            assert err.details == {"topic": "t", "partition": bad} and str(bad) in str(err)
            err = raises(
                PartitionNotFound,
                lambda bad=bad: log.append("t", b"x", partition=bad),  # type: ignore[misc]
            )
            assert err.details["partition"] == bad
        assert ends(log, "t") == {0: 0, 1: 0}
        raises(PartitionNotFound, lambda: log.scan("t", 5).__next__())


# --- records ------------------------------------------------------------------


def check_offsets_dense_and_increasing(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 3)
        seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for i in range(30):
            if i % 3 == 0:
                positions = log.append_batch("t", [b"%d" % i, b"%d" % (i + 1)])
            else:
                positions = [log.append("t", b"%d" % i, key=b"k%d" % (i % 7))]
            for pos in positions:
                seen[pos.partition].append(pos.offset)
        for partition, offsets in seen.items():
            assert offsets == list(range(len(offsets))), (partition, offsets)
            stored = [r.offset for r in log.read("t", partition)]
            assert stored == offsets
        assert ends(log, "t") == {p: len(o) for p, o in seen.items()}


def check_concurrent_appends_are_dense(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 2)
        got: list[Position] = []
        lock = threading.Lock()

        def writer(n: int) -> None:
            for i in range(25):
                pos = log.append("t", b"%d-%d" % (n, i), key=b"%d" % (i % 4))
                with lock:
                    got.append(pos)

        run_threads(writer, 8)
        assert len(set(got)) == 200
        for partition, end in ends(log, "t").items():
            offsets = sorted(p.offset for p in got if p.partition == partition)
            assert offsets == list(range(end))
        assert sorted(r.value or b"" for r in read_all(log, "t")) == sorted(
            b"%d-%d" % (n, i) for n in range(8) for i in range(25)
        )


def check_concurrent_mixed_writes(target: LogTarget) -> None:
    """Appends, idempotent retries, transactions and fenced transactions from
    many threads at once (so they share group commits): what succeeded is
    stored exactly once, what failed left nothing."""
    with target.open(SimClock()) as log:
        log.create_topic("t", 2)
        member = log.consumer("t", group="busy", member_id="owner")
        member.poll(0.01)  # the group has a member: member-less commits are fenced
        written: list[tuple[Position, bytes]] = []
        failed: list[bytes] = []
        lock = threading.Lock()
        refused = StaleGeneration if target.records_with_offsets else NotSupported

        def worker(n: int) -> None:
            producer = log.producer(f"p{n}")
            for i in range(15):
                value = b"%d-%d" % (n, i)
                try:
                    if i % 3 == 0:
                        positions = [log.append("t", value, key=b"%d" % i)]
                    elif i % 3 == 1:
                        positions = [producer.append("t", value, sequence=i)]
                        assert producer.append("t", value, sequence=i) == positions[0]
                    else:
                        with log.transaction() as tx:
                            tx.append("t", value)
                            if n % 2:
                                tx.commit_offsets(group="busy", offsets={TopicPartition("t", 0): 1})
                        positions = tx.positions
                except refused:  # fenced; or, without records_with_offsets, refused
                    with lock:
                        failed.append(value)
                    continue
                with lock:
                    written.extend((p, value) for p in positions)

        run_threads(worker, 6)
        stored = {(r.position, r.value) for r in read_all(log, "t")}
        assert stored == set(written) and len(written) == len(stored)
        assert len(failed) == 15, "every fenced transaction failed"
        assert not {v for _, v in stored} & set(failed)
        for partition, end in ends(log, "t").items():
            assert sorted(p.offset for p, _ in written if p.partition == partition) == list(
                range(end)
            )


def check_append_batch_is_atomic_and_ordered(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 4, record_bytes_max=100)
        for _ in range(3):
            values = [b"v%d" % i for i in range(10)]
            positions = log.append_batch("t", values)
            assert len({p.partition for p in positions}) == 1, "keyless batch in one partition"
            first = positions[0]
            assert [p.offset for p in positions] == list(range(first.offset, first.offset + 10))
            got = log.read("t", first.partition, first.offset, records_max=10)
            assert [r.value for r in got] == values
        before = ends(log, "t")
        raises(RecordTooLarge, lambda: log.append_batch("t", [b"ok", b"x" * 101, b"ok"]))
        bad: list[Any] = [Message(b"ok", key=b"k"), "not bytes"]
        raises(UsageError, lambda: log.append_batch("t", bad))
        raises(PartitionNotFound, lambda: log.append_batch("t", [b"a", Message(b"b", partition=9)]))
        assert ends(log, "t") == before, "a failed batch wrote something"
        assert log.append_batch("t", []) == []


def check_keys_choose_partitions_like_kafka(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 7)
        for i in range(40):
            key = b"customer-%d" % i
            first = log.append("t", b"a", key=key)
            second = log.append_batch("t", [Message(b"b", key=key)])[0]
            assert first.partition == second.partition == kafka_partition(key, 7)
        explicit = log.append("t", b"c", key=b"customer-1", partition=0)
        assert explicit.partition == 0, "an explicit partition wins over the key"


def check_headers_and_timestamps_round_trip(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t")
        clock.advance(1234)
        before = clock()
        a = log.append("t", b"\x00bin\xff", key=b"\x00k", headers={"h1": b"1", "h2": b""})
        b = log.append("t", b"", headers=(("dup", b"1"), ("dup", b"2")), timestamp=42)
        c = log.append_batch("t", [Message(b"m", timestamp=0, headers=(("x", b"\x00"),))])[0]
        after = clock()
        ra, rb, rc = log.read("t", 0, a.offset, records_max=3)
        assert (ra.key, ra.value, ra.headers) == (
            b"\x00k",
            b"\x00bin\xff",
            (("h1", b"1"), ("h2", b"")),
        )
        assert before == ra.timestamp == after, "the default timestamp is the log clock's now"
        assert (rb.value, rb.headers, rb.timestamp, rb.key) == (
            b"",
            (("dup", b"1"), ("dup", b"2")),
            42,
            None,
        )
        assert (rc.headers, rc.timestamp) == ((("x", b"\x00"),), 0)
        assert [ra.position, rb.position, rc.position] == [a, b, c]


def check_record_too_large(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", record_bytes_max=64)
        log.append("t", b"x" * 64)
        err = raises(RecordTooLarge, lambda: log.append("t", b"x" * 65))
        assert err.details["size"] == 65 and err.details["record_bytes_max"] == 64
        raises(RecordTooLarge, lambda: log.append("t", b"x" * 60, key=b"k" * 5))
        raises(RecordTooLarge, lambda: log.append("t", b"x" * 60, headers={"hh": b"123"}))
        raises(RecordTooLarge, lambda: log.producer("p").append("t", b"x" * 65))
        with log.transaction() as tx:
            raises(RecordTooLarge, lambda: tx.append("t", b"x" * 65))
        assert ends(log, "t") == {0: 1}, "a rejected record was written"


def check_wrong_types_are_usage_errors(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 2)
        log.create_topic("c", cleanup_policy="compact")
        bad: Any = "text"
        calls: list[Callable[[], object]] = [
            lambda: log.append("t", bad),
            lambda: log.append("t", b"v", key=bad),
            lambda: log.append("t", b"v", headers={"h": bad}),
            lambda: log.append("t", b"v", headers=bad),
            lambda: log.append("t", b"v", timestamp=-1),
            lambda: log.append("t", b"v", partition=bad),
            lambda: log.append("bad name", b"v"),
            lambda: log.append(1, b"v"),  # type: ignore[arg-type]
            lambda: log.append("t", None),
            lambda: log.append("c", b"no key"),
            lambda: log.append_batch("t", [b"ok", 3]),  # type: ignore[list-item]
            lambda: log.read("t", 0, -1),
            lambda: log.read("t", 0, bad),
            lambda: log.read("t", 0, 0, records_max=0),
            lambda: log.create_topic("x", 0),
            lambda: log.create_topic("x", bad),
            lambda: log.create_topic("bad name"),
            lambda: log.create_topic("x", cleanup_policy=bad),
            lambda: log.create_topic("x", retention_ms=0),
            lambda: log.producer(""),
            lambda: log.producer("p").append("t", b"v", sequence=-1),
            lambda: log.consumer("t", group="bad group"),
            lambda: log.consumer("t", group="g", lease_ms=1),
            lambda: log.consumer([]),
        ]
        for i, call in enumerate(calls):
            try:
                call()
            except UsageError:
                continue
            except Exception as exc:
                raise AssertionError(f"call {i}: expected UsageError, got {exc!r}") from exc
            raise AssertionError(f"call {i}: expected UsageError, nothing raised")
        assert ends(log, "t") == {0: 0, 1: 0} and log.topics() == ["c", "t"]


def check_read_bounds(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t")
        assert log.read("t") == []
        log.append_batch("t", [b"%d" % i for i in range(10)])
        assert [r.offset for r in log.read("t", 0, 0)] == list(range(10))
        assert [r.offset for r in log.read("t", 0, 7)] == [7, 8, 9]
        assert log.read("t", 0, 10) == [], "reading at the end is empty, not an error"
        err = raises(OffsetOutOfRange, lambda: log.read("t", 0, 11))
        assert err.details["offset"] == 11
        assert (err.details["start_offset"], err.details["end_offset"]) == (0, 10)
        assert [r.offset for r in log.read("t", 0, 2, records_max=3)] == [2, 3, 4]
        one = log.read("t", 0, 0, bytes_max=1)
        assert [r.offset for r in one] == [0], "at least one record, even over bytes_max"
        assert [r.offset for r in log.scan("t", 0, 4)] == list(range(4, 10))


def check_scan_follow_wakes_on_append(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t")
        log.append("t", b"first")
        stream = log.scan("t", follow=True, timeout_s=30.0)
        assert next(stream).value == b"first"
        timer = threading.Timer(0.05, lambda: log.append("t", b"second"))
        timer.start()
        try:
            record = next(stream)  # blocks until the other thread appends
        finally:
            timer.join()
        assert (record.offset, record.value) == (1, b"second")
        quiet = list(log.scan("t", 0, 2, follow=True, timeout_s=0.05))
        assert quiet == [], "follow with a timeout ends after that much quiet"


# --- idempotent producers -----------------------------------------------------


def check_producer_dedupes_retries(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 3)
        producer = log.producer("p1")
        first = producer.append("t", b"a", key=b"k", sequence=0)
        again = producer.append("t", b"a", key=b"k", sequence=0)
        assert again == first
        batch = producer.append_batch("t", [b"b", b"c"], sequence=1)
        assert producer.append_batch("t", [b"b", b"c"], sequence=1) == batch
        assert producer.append("t", b"d") != first, "the next default sequence is new"
        assert [r.value for r in read_all(log, "t")].count(b"a") == 1
        assert sum(p.records for p in log.describe_topic("t").partitions) == 4


def check_producer_rejects_old_sequences(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t")
        producer = log.producer("p1")
        producer.append("t", b"a", sequence=5)
        producer.append("t", b"b", sequence=9)  # sequences may skip
        err = raises(OutOfOrderSequence, lambda: producer.append("t", b"c", sequence=7))
        assert err.details["sequence"] == 7 and err.details["producer_id"] == "p1"
        raises(OutOfOrderSequence, lambda: producer.append("t", b"c", sequence=0))
        assert [r.value for r in log.read("t")] == [b"a", b"b"]


def check_producer_fencing(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t")
        old = log.producer("p1")
        written = old.append("t", b"a", sequence=0)
        new = log.producer("p1")
        assert new.epoch > old.epoch and new.last_sequence == 0
        err = raises(ProducerFenced, lambda: old.append("t", b"zombie"))
        assert err.details["producer_id"] == "p1"
        assert new.append("t", b"a", sequence=0) == written, "a retry via the new one dedupes"
        assert new.append("t", b"b").offset == 1
        assert [r.value for r in log.read("t")] == [b"a", b"b"]
        other = log.producer("p2")
        assert other.append("t", b"c", sequence=0).offset == 2, "ids are independent"


@durable_only
def check_producer_dedupes_after_reopen(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t")
        first = log.producer("p1").append("t", b"a", sequence=3)
    with target.open(clock) as log:
        producer = log.producer("p1")
        assert producer.last_sequence == 3
        assert producer.append("t", b"a", sequence=3) == first
        raises(OutOfOrderSequence, lambda: producer.append("t", b"x", sequence=2))
        assert [r.value for r in log.read("t")] == [b"a"]


def check_producer_last_sequence_tracks_writes(target: LogTarget) -> None:
    """``last_sequence`` is the highest sequence written under the id: what
    the log said at open, raised by every append or transaction that
    succeeded, untouched by one that failed."""
    with target.open(SimClock()) as log:
        log.create_topic("t")
        log.create_topic("gone")
        log.append("gone", b"x")  # the log caches its config...
        log.backend.delete_topic("gone")  # ...which goes stale: the write itself fails
        producer = log.producer("p1")
        assert producer.last_sequence == -1
        producer.append("t", b"a", sequence=5)
        assert producer.last_sequence == 5
        producer.append_batch("t", [b"b", b"c"])
        assert producer.last_sequence == 6
        producer.append("t", b"a", sequence=5)  # a retry answered from the window
        assert producer.last_sequence == 6
        raises(OutOfOrderSequence, lambda: producer.append("t", b"x", sequence=1))
        raises(TopicNotFound, lambda: producer.append_batch("gone", [b"x"], sequence=9))
        assert producer.last_sequence == 6
        with log.transaction(producer=producer) as tx:  # the next number: 10, 9 was taken
            tx.append("t", b"d")
        assert producer.last_sequence == 10 == log.producer("p1").last_sequence
        raises(ProducerFenced, lambda: producer.append("t", b"zombie", sequence=11))
        assert producer.last_sequence == 10


@durable_only
def check_producer_resumes_a_numbered_input(target: LogTarget) -> None:
    """The resume recipe of docs/how-to/exactly-once.md, for more lines than
    the producer's window: after a restart, re-sending from the start is
    refused, skipping up to ``last_sequence`` writes every line exactly once."""
    lines = [b"line-%d" % n for n in range(3 * limits.producer_window_requests_max)]

    def run(log: Log, stop: int) -> None:
        producer = log.producer("importer")
        for number, line in enumerate(lines[:stop]):
            if number <= producer.last_sequence:
                continue  # written before the restart
            producer.append("t", line, sequence=number)

    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t")
        run(log, 2 * limits.producer_window_requests_max + 5)  # then the process dies
    with target.open(clock) as log:
        naive = log.producer("importer")
        err = raises(OutOfOrderSequence, lambda: naive.append("t", lines[0], sequence=0))
        assert "last_sequence" in err.message, "the error says how to resume"
        run(log, len(lines))
        assert [r.value for r in read_all(log, "t")] == lines


# --- the closed state ---------------------------------------------------------


def check_closed_log_refuses(target: LogTarget) -> None:
    log = target.open(SimClock())
    log.create_topic("t")
    producer = log.producer("p")
    consumer = log.consumer("t", group="g")
    log.close()
    log.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: log.append("t", b"x"),
        lambda: log.append_batch("t", [b"x"]),
        lambda: log.read("t"),
        lambda: next(log.scan("t")),
        lambda: log.create_topic("u"),
        lambda: log.delete_topic("t"),
        log.topics,
        lambda: log.describe_topic("t"),
        lambda: log.producer("q"),
        lambda: producer.append("t", b"x"),
        log.transaction,
        lambda: log.consumer("t"),
        lambda: consumer.poll(0.01),
        log.groups,
        log.maintain,
    ]
    for i, call in enumerate(calls):
        try:
            raises(Closed, call)
        except AssertionError as exc:
            raise AssertionError(f"call {i} on a closed log: {exc}") from exc


CHECKS: list[Check] = [
    check_topics_are_explicit,
    check_partition_out_of_range,
    check_offsets_dense_and_increasing,
    check_concurrent_appends_are_dense,
    check_concurrent_mixed_writes,
    check_append_batch_is_atomic_and_ordered,
    check_keys_choose_partitions_like_kafka,
    check_headers_and_timestamps_round_trip,
    check_record_too_large,
    check_wrong_types_are_usage_errors,
    check_read_bounds,
    check_scan_follow_wakes_on_append,
    check_producer_dedupes_retries,
    check_producer_rejects_old_sequences,
    check_producer_fencing,
    check_producer_dedupes_after_reopen,
    check_producer_last_sequence_tracks_writes,
    check_producer_resumes_a_numbered_input,
    check_closed_log_refuses,
]
