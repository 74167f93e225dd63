"""The log's contract, part two: consumer groups, transactions, retention, compaction.

See :mod:`unbundled.testing.contract` for how to run it (its ``all_checks``
runs these too). Time-dependent checks
drive a :class:`~unbundled.testing.clock.SimClock`, so leases and retention
expire exactly when the check says, not after a sleep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ..errors import (
    InstanceFenced,
    NotFound,
    OffsetOutOfRange,
    PartitionNotFound,
    StaleGeneration,
    UsageError,
)
from ..log import Consumer, Log, Message, Record, TopicPartition
from ._log_kit import (
    Check,
    LogTarget,
    durable_only,
    poll_until,
    raises,
    read_all,
    records_with_offsets,
)
from .clock import SimClock

__all__ = ["CHECKS", "settle"]


def settle(
    consumers: Sequence[Consumer], partitions: set[TopicPartition], rounds: int = 60
) -> list[Record]:
    """Poll every consumer in turn until each fetches exactly what the group
    assigned it and together they cover ``partitions``; return the records
    polled meanwhile."""
    got: list[Record] = []
    for _ in range(rounds):
        for consumer in consumers:
            got.extend(consumer.poll(0.01))
        if _settled(consumers, partitions):
            return got
    owned = [consumer.assignment() for consumer in consumers]
    raise AssertionError(f"assignments did not settle on {sorted(partitions)}: {owned}")


def _settled(consumers: Sequence[Consumer], partitions: set[TopicPartition]) -> bool:
    group = consumers[0].group
    assert group is not None
    log: Any = consumers[0]._log  # the Log that opened them
    assigned = {m.member_id: set(m.partitions) for m in log.describe_group(group).members}
    owned = [consumer.assignment() for consumer in consumers]
    if any(assigned.get(c.member_id) != o for c, o in zip(consumers, owned, strict=True)):
        return False
    return sum(len(o) for o in owned) == len(partitions) and set().union(*owned) == partitions


def _tps(topic: str, partitions: int) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in range(partitions)}


def _fill(log: Log, topic: str, count: int) -> None:
    log.append_batch(topic, [Message(b"%d" % i, key=b"key-%d" % i) for i in range(count)])


def _where(records: Sequence[Record]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def _disjoint(consumers: Sequence[Consumer]) -> None:
    owned = [c.assignment() for c in consumers]
    for i, a in enumerate(owned):
        for b in owned[i + 1 :]:
            assert not a & b, f"two members own {sorted(a & b)}"


# --- consumer groups ----------------------------------------------------------


def check_group_members_split_partitions(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 4)
        _fill(log, "t", 40)
        a = log.consumer("t", group="g", member_id="a")
        b = log.consumer("t", group="g", member_id="b")
        got = settle([a, b], _tps("t", 4))
        for _ in range(5):
            got += a.poll(0.01) + b.poll(0.01)
        assert len(a.assignment()) == len(b.assignment()) == 2
        assert sorted(r.value or b"" for r in got) == sorted(b"%d" % i for i in range(40)), (
            "a clean hand-over loses and repeats nothing"
        )
        info = log.describe_group("g")
        assert [m.member_id for m in info.members] == ["a", "b"]
        assert {tp for m in info.members for tp in m.partitions} == _tps("t", 4)


def check_group_rebalances_on_join(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 6)
        a = log.consumer("t", group="g", member_id="a")
        b = log.consumer("t", group="g", member_id="b")
        settle([a, b], _tps("t", 6))
        before = a.assignment() | b.assignment()
        c = log.consumer("t", group="g", member_id="c")
        settle([a, b, c], _tps("t", 6))
        _disjoint([a, b, c])
        assert [len(x.assignment()) for x in (a, b, c)] == [2, 2, 2]
        assert before == _tps("t", 6)
        generation = log.describe_group("g").generation
        assert generation >= 3, "each join starts a new generation"


def check_group_close_hands_over(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 4)
        a = log.consumer("t", group="g", member_id="a")
        b = log.consumer("t", group="g", member_id="b")
        c = log.consumer("t", group="g", member_id="c")
        settle([a, b, c], _tps("t", 4))
        kept = a.assignment(), c.assignment()
        b.close()
        settle([a, c], _tps("t", 4))
        assert kept[0] <= a.assignment() and kept[1] <= c.assignment(), "sticky: nothing else moved"
        assert [m.member_id for m in log.describe_group("g").members] == ["a", "c"]


def check_group_lease_expiry_fences(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t", 2)
        _fill(log, "t", 10)
        # lease_ms=200: live members heartbeat every 50 ms of real time.
        live = log.consumer("t", group="g", member_id="live", lease_ms=200, auto_commit=False)
        dead = log.consumer("t", group="g", member_id="dead", lease_ms=200, auto_commit=False)
        settle([live, dead], _tps("t", 2))
        taken = dead.assignment()
        assert taken, "both members hold a partition"
        # Time passes; the dead member stops polling. The live one, late too
        # but not expired by anyone, renews its lease and expires the other.
        clock.advance(201)
        for _ in range(200):
            live.poll(0.01)
            if live.assignment() == _tps("t", 2):
                break
        assert live.assignment() == _tps("t", 2), "the expired member's partitions moved"
        assert [m.member_id for m in log.describe_group("g").members] == ["live"]
        tp = next(iter(taken))
        err = raises(StaleGeneration, lambda: dead.commit({tp: 1}))
        assert err.details["member_id"] == "dead"
        assert tp not in log.describe_group("g").committed


def check_at_least_once_redelivery(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t", 2)
        _fill(log, "t", 20)
        first = log.consumer("t", group="g", member_id="first", auto_commit=False, lease_ms=1000)
        records = poll_until(first, 20)
        done = {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records[:3]}
        first.commit(done)  # commit a prefix of one partition only
        clock.advance(1001)  # then die without committing the rest
        second = log.consumer("t", group="g", member_id="second", auto_commit=False)
        again = poll_until(second, 17)
        assert sorted(_where(again)) == sorted(_where(records[3:]))
        assert log.describe_group("g").committed == done
        second.close()  # without auto-commit, closing commits nothing
        third = log.consumer("t", group="g", member_id="third")
        assert len(poll_until(third, 17)) == 17
        third.poll(0.01)  # auto-commit: this poll commits what the previous returned
        third.close()
        assert log.describe_group("g").committed == {
            TopicPartition("t", p): end for p, end in log.end_offsets("t").items()
        }


def check_group_commit_and_lag(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", 2)
        raises(NotFound, lambda: log.describe_group("g"))
        _fill(log, "t", 10)
        with log.consumer("t", group="g", member_id="m", auto_commit=False) as c:
            poll_until(c, 10)
            tp = next(iter(c.assignment()))
            c.commit({tp: 1})
            assert log.describe_group("g").committed == {tp: 1}
            c.commit()
        ends = log.end_offsets("t")
        assert log.describe_group("g").committed == {
            TopicPartition("t", p): e for p, e in ends.items()
        }
        lag = log.lag("g")
        assert all(lag[TopicPartition("t", p)] == (e, e, 0) for p, e in ends.items())
        log.append("t", b"more", partition=0)
        assert log.lag("g")[TopicPartition("t", 0)][2] == 1
        assert log.groups() == ["g"]


def check_consumer_start_positions(target: LogTarget) -> None:
    """Where a consumer starts: the committed offset if still stored, else
    per ``offset_reset``; a consumer may also read fixed partitions."""
    with target.open(SimClock()) as log:
        log.create_topic("t", retention_bytes=30)
        log.append_batch("t", [b"%010d" % i for i in range(3)])
        latest = log.consumer("t", group="late", offset_reset="latest")
        assert latest.poll(0.01) == []
        log.append("t", b"%010d" % 3)
        assert [r.offset for r in poll_until(latest, 1)] == [3]
        strict = log.consumer("t", group="strict", offset_reset="none")
        raises(OffsetOutOfRange, lambda: strict.poll(0.01))
        tp = TopicPartition("t", 0)
        with log.transaction() as tx:
            tx.commit_offsets(group="old", offsets={tp: 0})
        assert log.maintain().removed == {"t": 1}  # offset 0 is gone
        early = log.consumer("t", group="old", auto_commit=False)
        assert [r.offset for r in poll_until(early, 3)] == [1, 2, 3], "reset to the start"
        log.create_topic("p", 3)
        for p in range(3):
            log.append("p", b"%d" % p, partition=p)
        fixed = log.consumer("p", partitions=[TopicPartition("p", 1)])
        assert [r.value for r in poll_until(fixed, 1)] == [b"1"]
        assert fixed.poll(0.01) == [] and fixed.assignment() == {TopicPartition("p", 1)}


def check_consumer_survives_topic_deletion(target: LogTarget) -> None:
    """Deleting one subscribed topic must not wedge the group's consumers:
    the others keep flowing, and close still leaves the group."""
    with target.open(SimClock()) as log:
        log.create_topic("gone", 2)
        log.create_topic("kept")
        _fill(log, "gone", 6)
        consumer = log.consumer(["gone", "kept"], group="g", member_id="m")
        assert len(poll_until(consumer, 6)) == 6  # polled, not yet committed
        log.delete_topic("gone")
        log.append("kept", b"still flowing")
        got = [r.value for r in poll_until(consumer, 1)]
        assert got == [b"still flowing"]
        assert consumer.assignment() == {TopicPartition("kept", 0)}
        consumer.close()
        assert log.describe_group("g").members == (), "close left the group"
        assert log.describe_group("g").committed == {TopicPartition("kept", 0): 1}


@durable_only
def check_committed_offsets_survive_reopen(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t", 2)
        _fill(log, "t", 10)
        with log.consumer("t", group="g", member_id="m", auto_commit=False) as c:
            poll_until(c, 10)
            c.commit()
        committed = log.describe_group("g").committed
        assert sum(committed.values()) == 10
    with target.open(clock) as log:
        assert log.describe_group("g").committed == committed
        log.append("t", b"new", key=b"k")
        with log.consumer("t", group="g", member_id="m2") as c:
            assert [r.value for r in poll_until(c, 1)] == [b"new"]


# --- transactions -------------------------------------------------------------


@records_with_offsets
def check_transaction_commits_atomically(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("a", 2)
        log.create_topic("b")
        tp = TopicPartition("b", 0)
        with log.transaction() as tx:
            tx.append("a", b"1", key=b"k")
            tx.append_batch("b", [b"2", b"3"])
            tx.commit_offsets(group="g", offsets={tp: 2})
            assert read_all(log, "a") == read_all(log, "b") == [], "visible before commit"
            assert log.groups() == []
        assert [p.topic for p in tx.positions] == ["a", "b", "b"]
        assert [r.value for r in read_all(log, "b")] == [b"2", b"3"]
        assert [r.value for r in read_all(log, "a")] == [b"1"]
        assert log.describe_group("g").committed == {tp: 2}


@records_with_offsets
def check_transaction_exception_leaves_nothing(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("a")
        try:
            with log.transaction() as tx:
                tx.append("a", b"1")
                tx.commit_offsets(group="g", offsets={TopicPartition("a", 0): 1})
                raise KeyError("boom")
        except KeyError:
            pass
        assert log.read("a") == [] and log.groups() == []
        # A commit that fails validation leaves nothing either.
        tx2 = log.transaction()
        tx2.append("a", b"2")
        tx2.commit_offsets(group="g", offsets={TopicPartition("a", 5): 1})
        raises(PartitionNotFound, tx2.commit)
        assert log.read("a") == [] and log.groups() == []
        raises(UsageError, lambda: tx2.append("a", b"3"))  # finished transactions refuse


@records_with_offsets
def check_stale_consumer_aborts_transaction(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("in", 2)
        log.create_topic("out")
        log.append_batch("in", [Message(b"%d" % i, key=b"%d" % i) for i in range(10)])
        zombie = log.consumer("in", group="g", member_id="zombie", lease_ms=1000)
        records = poll_until(zombie, 10)
        clock.advance(1001)  # the zombie's lease runs out...
        heir = log.consumer("in", group="g", member_id="heir", lease_ms=1000)
        redelivered = heir.poll(0.01)  # ...and joining expires it: the heir owns all
        assert heir.assignment() == {TopicPartition("in", 0), TopicPartition("in", 1)}
        tx = log.transaction()
        for record in records:
            tx.append("out", record.value)
        tx.commit_offsets(zombie)
        err = raises(StaleGeneration, tx.commit)
        assert err.details["member_id"] == "zombie"
        assert log.read("out") == [], "a fenced transaction wrote records"
        assert log.describe_group("g").committed == {}
        redelivered += poll_until(heir, 10 - len(redelivered))
        assert len(redelivered) == 10, "the heir gets every record again"


@records_with_offsets
def check_exactly_once_loop_keeps_polling_after_stale_generation(target: LogTarget) -> None:
    """The how-to's loop (docs/how-to/exactly-once.md): a member whose
    partitions moved while it worked gets ``StaleGeneration`` from its
    transaction, which wrote nothing; it goes on polling with the same
    consumer, rejoins, gets its share again from the committed offsets, and
    every input is output exactly once."""
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("in", 2)
        log.create_topic("out")
        log.append_batch("in", [Message(b"%d" % i, key=b"%d" % i) for i in range(40)])

        def process(worker: Consumer, records: Sequence[Record]) -> None:
            with log.transaction() as tx:
                for record in records:
                    tx.append("out", record.value)
                tx.commit_offsets(worker)

        def step(worker: Consumer) -> None:  # one turn of the loop
            records = worker.poll(0.01, records_max=7)
            if records:
                with contextlib.suppress(StaleGeneration):
                    process(worker, records)

        slow = log.consumer("in", group="g", member_id="slow", auto_commit=False, lease_ms=1000)
        late = slow.poll(0.01, records_max=7)
        assert late and slow.assignment() == _tps("in", 2)
        clock.advance(1001)  # slow pauses past its lease; a new member expires it
        fast = log.consumer("in", group="g", member_id="fast", auto_commit=False, lease_ms=1000)
        step(fast)
        before = (read_all(log, "out"), log.describe_group("g").committed)
        raises(StaleGeneration, lambda: process(slow, late))
        assert (read_all(log, "out"), log.describe_group("g").committed) == before
        for _ in range(200):
            step(slow)  # the same consumer: it rejoins and takes its share back
            step(fast)
            if all(c is not None and left == 0 for c, _, left in log.lag("g").values()):
                break
        outputs = sorted(int(r.value or b"") for r in read_all(log, "out"))
        assert outputs == list(range(40)), "every input exactly once"
        settle([slow, fast], _tps("in", 2))
        assert len(slow.assignment()) == len(fast.assignment()) == 1, "the slow one is back"


# --- static membership (KIP-345) ----------------------------------------------


def check_static_member_restart_takes_partitions_back(target: LogTarget) -> None:
    """A consumer opened with the instance id of one that died (without
    leaving) gets exactly its partitions at once, before its lease ends; the
    other members keep theirs; the dead one's late commits are fenced and it
    cannot rejoin (``InstanceFenced``)."""
    with target.open(SimClock()) as log:
        log.create_topic("t", 4)
        old = log.consumer("t", group="g", instance_id="w1", auto_commit=False)
        other = log.consumer("t", group="g", member_id="other", auto_commit=False)
        settle([old, other], _tps("t", 4))
        mine, theirs = old.assignment(), other.assignment()
        _fill(log, "t", 40)
        late = poll_until(old, 1)  # consumed, then its process froze
        new = log.consumer("t", group="g", instance_id="w1", auto_commit=False)
        assert new.member_id != old.member_id, "each incarnation has its own member id"
        got = poll_until(new, 1)  # the clock did not move: no lease ran out
        assert new.assignment() == mine and {r.partition for r in got} <= {
            tp.partition for tp in mine
        }
        members = {m.member_id: m for m in log.describe_group("g").members}
        assert set(members) == {new.member_id, "other"}
        assert members[new.member_id].instance_id == "w1" and members["other"].instance_id is None
        assert set(members[new.member_id].partitions) == mine
        other.poll(0.01)
        assert other.assignment() == theirs, "a restart moves nobody else's partitions"
        # The old incarnation wakes up: its transaction (or, where records
        # and offsets cannot share one, its commit) is fenced and wrote nothing...
        stale = {TopicPartition(r.topic, r.partition): 1 for r in late}
        if target.records_with_offsets:
            tx = log.transaction()
            tx.append("t", b"zombie", partition=0)
            tx.commit_offsets(old, offsets=stale)
            raises(StaleGeneration, tx.commit)
        else:
            raises(StaleGeneration, lambda: old.commit(stale))
        assert log.describe_group("g").committed == {}
        assert b"zombie" not in {r.value for r in read_all(log, "t")}
        # ...and its next poll tells it to stop, for good.
        err = raises(InstanceFenced, lambda: old.poll(0.01))
        assert err.details["replaced_by"] == new.member_id
        raises(InstanceFenced, lambda: old.poll(0.01))
        raises(InstanceFenced, old.commit)
        old.close()  # quietly: it has nothing to commit or leave
        assert new.assignment() == mine
        assert {m.member_id for m in log.describe_group("g").members} == {new.member_id, "other"}


def check_static_member_close_keeps_its_partitions(target: LogTarget) -> None:
    """Closing a static member does not leave the group (no rebalance for a
    restart, as in KIP-345); ``close(leave=True)`` does, for good."""
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t", 2)
        first = log.consumer("t", group="g", instance_id="w1", lease_ms=1000)
        other = log.consumer("t", group="g", member_id="other", lease_ms=1000)
        settle([first, other], _tps("t", 2))
        mine = first.assignment()
        first.close()
        other.poll(0.01)
        assert other.assignment() != _tps("t", 2), "the closed static member keeps its share"
        again = log.consumer("t", group="g", instance_id="w1", lease_ms=1000)
        settle([again, other], _tps("t", 2))
        assert again.assignment() == mine
        again.close(leave=True)
        settle([other], _tps("t", 2))
        assert [m.member_id for m in log.describe_group("g").members] == ["other"]
        # A static member that is closed and never comes back expires with its lease.
        gone = log.consumer("t", group="g", instance_id="w2", lease_ms=1000)
        settle([gone, other], _tps("t", 2))
        gone.close()
        clock.advance(1001)
        settle([other], _tps("t", 2))


def check_static_member_options_are_checked(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t")
        for call in (
            lambda: log.consumer("t", group="g", instance_id="w1", member_id="m1"),
            lambda: log.consumer("t", instance_id="w1"),
            lambda: log.consumer("t", group="g", instance_id=""),
            lambda: log.consumer("t", group="g", instance_id="a b"),
            lambda: log.consumer("t", group="g", instance_id="x" * 256),
            lambda: log.consumer(
                "t", group="g", instance_id="w1", partitions=[TopicPartition("t", 0)]
            ),
        ):
            err = raises(UsageError, call)
            assert "instance_id" in err.details, err
        assert log.groups() == [], "nothing joined"


# --- retention and compaction -------------------------------------------------


def check_retention_by_time(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("t", retention_ms=1000)
        log.create_topic("keep")
        log.append_batch("t", [Message(b"old%d" % i, timestamp=clock()) for i in range(3)])
        log.append("keep", b"x", timestamp=clock())
        clock.advance(600)
        log.append_batch("t", [Message(b"new%d" % i, timestamp=clock()) for i in range(2)])
        clock.advance(400)
        assert log.maintain().removed == {}, "a record exactly retention_ms old stays"
        clock.advance(1)
        assert log.maintain().removed == {"t": 3}
        part = log.describe_topic("t").partitions[0]
        assert (part.start_offset, part.end_offset, part.records) == (3, 5, 2)
        err = raises(OffsetOutOfRange, lambda: log.read("t", 0, 0))
        assert err.details["start_offset"] == 3
        assert [r.value for r in log.read("t", 0, 3)] == [b"new0", b"new1"]
        assert log.append("t", b"next", timestamp=clock()).offset == 5, "offsets never reused"
        assert len(log.read("keep")) == 1, "no retention configured, nothing removed"
        clock.advance(2000)
        assert log.maintain().removed == {"t": 3}
        assert log.read("t", 0, 6) == [] and log.describe_topic("t").partitions[0].records == 0


def check_retention_by_bytes(target: LogTarget) -> None:
    with target.open(SimClock()) as log:
        log.create_topic("t", retention_bytes=30)
        log.append_batch("t", [b"%010d" % i for i in range(3)])
        assert log.maintain().removed == {}, "exactly retention_bytes stays"
        log.append_batch("t", [b"%010d" % i for i in range(3, 5)])  # 50 bytes
        assert log.maintain().removed == {"t": 2}
        part = log.describe_topic("t").partitions[0]
        assert (part.start_offset, part.records, part.bytes) == (2, 3, 30)
        assert [r.offset for r in log.read("t", 0, 2)] == [2, 3, 4]
        assert log.maintain().removed == {}


def check_compaction_keeps_latest_per_key(target: LogTarget) -> None:
    clock = SimClock()
    with target.open(clock) as log:
        log.create_topic("c", cleanup_policy="compact", tombstone_retention_ms=1000)
        now = clock()
        for key, value in [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1"), (b"b", None)]:
            log.append("c", value, key=key, timestamp=now)
        assert log.maintain().removed == {"c": 2}
        kept = [(r.offset, r.key, r.value) for r in log.read("c")]
        assert kept == [(2, b"a", b"2"), (3, b"c", b"1"), (4, b"b", None)], "tombstone kept"
        assert [r.offset for r in log.read("c", 0, 1)] == [2, 3, 4], "reads skip the gaps"
        clock.advance(1000)
        assert log.maintain().removed == {}, "a tombstone exactly that old stays"
        clock.advance(1)
        assert log.maintain().removed == {"c": 1}, "an older tombstone goes"
        assert [(r.key, r.value) for r in log.read("c")] == [(b"a", b"2"), (b"c", b"1")]
        part = log.describe_topic("c").partitions[0]
        assert (part.records, part.bytes, part.end_offset) == (2, 4, 5)
        assert log.append("c", b"3", key=b"a").offset == 5
        assert log.maintain().removed == {"c": 1}
        assert [(r.key, r.value) for r in log.read("c")] == [(b"c", b"1"), (b"a", b"3")]


CHECKS: list[Check] = [
    check_group_members_split_partitions,
    check_group_rebalances_on_join,
    check_group_close_hands_over,
    check_group_lease_expiry_fences,
    check_at_least_once_redelivery,
    check_group_commit_and_lag,
    check_transaction_commits_atomically,
    check_transaction_exception_leaves_nothing,
    check_stale_consumer_aborts_transaction,
    check_exactly_once_loop_keeps_polling_after_stale_generation,
    check_static_member_restart_takes_partitions_back,
    check_static_member_close_keeps_its_partitions,
    check_static_member_options_are_checked,
    check_consumer_start_positions,
    check_consumer_survives_topic_deletion,
    check_committed_offsets_survive_reopen,
    check_retention_by_time,
    check_retention_by_bytes,
    check_compaction_keeps_latest_per_key,
]
