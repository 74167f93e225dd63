"""Consumer-group coordination (``log._groups``): assignment laws and fencing.

``sticky_assign`` is checked by properties (every partition owned once by a
subscriber, balanced, deterministic, moving the minimum); the membership
state machine by examples and by a Hypothesis state machine in which members
act on the views they last received, as real consumers do.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from unbundled.errors import InstanceFenced, StaleGeneration, UsageError
from unbundled.log._groups import (
    GroupState,
    Member,
    check_commit,
    heartbeat,
    join,
    leave,
    rebalance,
    release,
    sticky_assign,
    view,
)
from unbundled.log._protocol import MemberView, OffsetCommit, TopicPartition

TOPICS = ("a", "b", "c")
NAMES = ("m0", "m1", "m2", "m3", "m4", "m5")

partition_counts = st.dictionaries(st.sampled_from(TOPICS), st.integers(1, 7), min_size=1)
subscriptions = st.dictionaries(
    st.sampled_from(NAMES),
    st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True).map(tuple),
    min_size=1,
    max_size=5,
)


def members_of(subs: dict[str, tuple[str, ...]]) -> dict[str, Member]:
    return {m: Member(m, topics, 1000, 0) for m, topics in subs.items()}


def check_assignment(
    result: dict[TopicPartition, str], members: dict[str, Member], partitions: dict[str, int]
) -> None:
    """Every partition of every subscribed topic has one subscribing owner;
    per topic, subscribers' shares differ by at most one."""
    for topic, count in partitions.items():
        subscribers = [m for m, member in members.items() if topic in member.topics]
        tps = {TopicPartition(topic, p) for p in range(count)}
        owned = {tp for tp in result if tp.topic == topic}
        if not subscribers:
            assert not owned
            continue
        assert owned == tps
        assert all(topic in members[result[tp]].topics for tp in tps)
        shares = Counter(result[tp] for tp in tps)
        loads = [shares.get(m, 0) for m in subscribers]
        assert max(loads) - min(loads) <= 1, loads
    assert {tp.topic for tp in result} <= set(partitions)


@given(subscriptions, partition_counts)
def test_every_partition_has_one_subscribed_owner(
    subs: dict[str, tuple[str, ...]], partitions: dict[str, int]
) -> None:
    members = members_of(subs)
    check_assignment(sticky_assign(members, partitions, {}), members, partitions)


@given(subscriptions, partition_counts, st.randoms(use_true_random=False))
def test_assignment_is_deterministic(
    subs: dict[str, tuple[str, ...]], partitions: dict[str, int], rnd: object
) -> None:
    members = members_of(subs)
    first = sticky_assign(members, partitions, {})
    # Same members listed in another order, same current owners: same answer.
    names = list(members)
    rnd.shuffle(names)  # type: ignore[attr-defined]
    shuffled = {m: members[m] for m in names}
    assert sticky_assign(shuffled, partitions, {}) == first
    current = dict(reversed(list(first.items())))
    assert sticky_assign(shuffled, partitions, current) == first, "a stable state stays"


def moved(
    before: dict[TopicPartition, str], after: dict[TopicPartition, str]
) -> set[TopicPartition]:
    return {tp for tp in after if tp in before and before[tp] != after[tp]}


@given(subscriptions, partition_counts, st.data())
def test_rebalance_after_a_leave_moves_only_its_partitions(
    subs: dict[str, tuple[str, ...]], partitions: dict[str, int], data: st.DataObject
) -> None:
    members = members_of(subs)
    before = sticky_assign(members, partitions, {})
    gone = data.draw(st.sampled_from(sorted(members)))
    rest = {m: v for m, v in members.items() if m != gone}
    after = sticky_assign(rest, partitions, before)
    check_assignment(after, rest, partitions)
    assert {tp for tp in moved(before, after)} == {
        tp for tp, owner in before.items() if owner == gone and tp in after
    }


@given(subscriptions, partition_counts, st.sampled_from(NAMES), st.data())
def test_rebalance_after_a_join_moves_the_minimum(
    subs: dict[str, tuple[str, ...]],
    partitions: dict[str, int],
    newcomer: str,
    data: st.DataObject,
) -> None:
    subs = {m: t for m, t in subs.items() if m != newcomer}
    members = members_of(subs)
    before = sticky_assign(members, partitions, {})
    topics = data.draw(st.lists(st.sampled_from(TOPICS), min_size=1, unique=True).map(tuple))
    grown = {**members, newcomer: Member(newcomer, topics, 1000, 0)}
    after = sticky_assign(grown, partitions, before)
    check_assignment(after, grown, partitions)
    changed = moved(before, after)
    assert all(after[tp] == newcomer for tp in changed), "only the newcomer gains"
    for topic, count in partitions.items():
        if topic not in topics:
            continue
        subscribers = sum(topic in m.topics for m in grown.values())
        took = sum(1 for tp in changed if tp.topic == topic)
        fresh = sum(1 for tp in after if tp.topic == topic and tp not in before)
        # The newcomer needs its floor share; it takes no more than that.
        assert took + fresh == count // subscribers, (topic, took, fresh)


# --- membership, generations and fencing --------------------------------------


def tp(partition: int, topic: str = "a") -> TopicPartition:
    return TopicPartition(topic, partition)


def commit(member: str | None, held: dict[TopicPartition, int]) -> OffsetCommit:
    return OffsetCommit("g", member, dict.fromkeys(held, 1), held)


def test_join_rebalance_and_release() -> None:
    state = GroupState("g")
    parts = {"a": 4}
    first = join(state, "m1", ("a",), 1000, 0, parts)
    assert (first.generation, set(first.ready)) == (1, {tp(0), tp(1), tp(2), tp(3)})
    second = join(state, "m2", ("a",), 1000, 10, parts)
    assert second.generation == 2 and len(second.assigned) == 2
    assert second.ready == frozenset(), "moved partitions wait for m1 to let go"
    moved_tps = set(second.assigned)
    assert all(state.assignments[t].prev_owner == "m1" for t in moved_tps)
    # m1, still on generation 1, may commit what it is handing over...
    check_commit(state, commit("m1", {t: 1 for t in moved_tps}))
    # ...and m2 may not yet: during a handover only one of them commits.
    with pytest.raises(StaleGeneration, match="has not released it"):
        check_commit(state, commit("m2", {t: 2 for t in moved_tps}))
    # ...and acknowledges generation 2: the partitions are released.
    version = state.version
    heartbeat(state, "m1", 2, 20, parts)
    assert state.version == version + 1
    assert view(state, "m2").ready == frozenset(moved_tps)
    with pytest.raises(StaleGeneration) as info:
        check_commit(state, commit("m1", {t: 1 for t in moved_tps}))
    assert info.value.details["member_id"] == "m1"
    check_commit(state, commit("m2", {t: 2 for t in moved_tps}))


def test_unchanged_owner_keeps_its_generation() -> None:
    state = GroupState("g")
    join(state, "m1", ("a",), 1000, 0, {"a": 2})
    join(state, "m2", ("a",), 1000, 0, {"a": 2})
    kept = {t: a.generation for t, a in state.assignments.items() if a.owner == "m1"}
    assert kept == {tp(0): 1}, "m1 kept partition 0 from generation 1"
    check_commit(state, commit("m1", kept))


def test_partitions_of_a_leaver_are_ready_at_once() -> None:
    state = GroupState("g")
    parts = {"a": 2}
    join(state, "m1", ("a",), 1000, 0, parts)
    join(state, "m2", ("a",), 1000, 0, parts)
    heartbeat(state, "m1", 2, 0, parts)
    leave(state, "m2", parts)
    assert view(state, "m1").ready == frozenset({tp(0), tp(1)})
    assert state.generation == 3


def test_expired_member_is_fenced_and_must_rejoin() -> None:
    state = GroupState("g")
    parts = {"a": 2}
    join(state, "m1", ("a",), 100, 0, parts)
    join(state, "m2", ("a",), 100, 0, parts)
    heartbeat(state, "m1", 2, 0, parts)
    held = view(state, "m2").assigned
    heartbeat(state, "m1", 2, 150, parts)  # m2's lease ended at 100
    assert set(state.members) == {"m1"}
    assert view(state, "m1").ready == frozenset({tp(0), tp(1)}), "a dead owner holds nothing"
    with pytest.raises(StaleGeneration):
        heartbeat(state, "m2", 2, 160, parts)
    with pytest.raises(StaleGeneration):
        check_commit(state, commit("m2", held))


def test_lease_ends_strictly_after_lease_ms() -> None:
    state = GroupState("g")
    parts = {"a": 2}
    join(state, "m1", ("a",), 100, 0, parts)
    join(state, "m2", ("a",), 1000, 0, parts)
    heartbeat(state, "m2", 2, 100, parts)
    assert "m1" in state.members, "at exactly lease_ms the member is still alive"
    heartbeat(state, "m2", 2, 101, parts)
    assert "m1" not in state.members


def test_late_heartbeat_that_nobody_noticed_keeps_everything() -> None:
    state = GroupState("g")
    join(state, "m1", ("a",), 100, 0, {"a": 2})
    late = heartbeat(state, "m1", 1, 5000, {"a": 2})
    assert set(late.ready) == {tp(0), tp(1)} and state.generation == 1


def test_memberless_commits_only_for_an_empty_group() -> None:
    state = GroupState("g")
    check_commit(state, commit(None, {tp(0): -1}))
    join(state, "m1", ("a",), 1000, 0, {"a": 1})
    with pytest.raises(StaleGeneration):
        check_commit(state, commit(None, {tp(0): -1}))
    with pytest.raises(StaleGeneration):
        check_commit(state, commit("m1", {tp(5): 1}))  # a partition nobody owns


def test_release_moves_version_only_when_something_changed() -> None:
    state = GroupState("g")
    join(state, "m1", ("a",), 1000, 0, {"a": 2})
    version = state.version
    release(state)
    assert state.version == version
    rebalance(state, {"a": 2})
    assert state.generation == 2 and state.version == version + 1


def test_deleted_topic_triggers_a_rebalance() -> None:
    state = GroupState("g")
    join(state, "m1", ("a", "b"), 1000, 0, {"a": 1, "b": 1})
    assert {t.topic for t in state.assignments} == {"a", "b"}
    beat = heartbeat(state, "m1", 1, 0, {"a": 1})  # topic b is gone
    assert set(beat.assigned) == {tp(0)} and state.generation == 2


# --- static membership (KIP-345) ---------------------------------------------------


def owned(state: GroupState, member: str) -> dict[TopicPartition, int]:
    return {t: a.generation for t, a in state.assignments.items() if a.owner == member}


def test_a_restarted_static_member_takes_its_partitions_back_at_once() -> None:
    state = GroupState("g")
    parts = {"a": 4}
    join(state, "w1.0", ("a",), 10_000, 0, parts, "w1")
    join(state, "m2", ("a",), 10_000, 0, parts)
    heartbeat(state, "w1.0", state.generation, 0, parts)  # hands two partitions over
    before, others = owned(state, "w1.0"), owned(state, "m2")
    generation = state.generation
    # w1 restarts (its old process died without leaving) long before its lease ends.
    fresh = join(state, "w1.1", ("a",), 10_000, 50, parts, "w1", replace=True)
    assert set(fresh.assigned) == set(before), "exactly the old incarnation's partitions"
    assert fresh.ready == frozenset(before), "fetchable at once, not after the lease"
    assert fresh.generation == generation + 1
    assert set(fresh.assigned.values()) == {generation + 1}
    assert owned(state, "m2") == others, "nobody else's assignment moved"
    assert set(state.members) == {"w1.1", "m2"}
    # The old incarnation is fenced like an expired member: commits, heartbeats...
    with pytest.raises(StaleGeneration):
        check_commit(state, commit("w1.0", before))
    with pytest.raises(StaleGeneration):
        heartbeat(state, "w1.0", generation, 60, parts)
    # ...and the rejoin that follows: it must not take the partitions back.
    with pytest.raises(InstanceFenced) as info:
        join(state, "w1.0", ("a",), 10_000, 60, parts, "w1")
    assert info.value.details["replaced_by"] == "w1.1"
    assert "w1.0" not in state.members and owned(state, "w1.1") == fresh.assigned
    check_commit(state, commit("w1.1", fresh.assigned))


def test_a_static_members_partitions_wait_for_it_until_its_lease_ends() -> None:
    state = GroupState("g")
    parts = {"a": 2}
    join(state, "w1.0", ("a",), 100, 0, parts, "w1")
    join(state, "m2", ("a",), 100, 0, parts)
    heartbeat(state, "w1.0", state.generation, 0, parts)
    kept = owned(state, "w1.0")
    heartbeat(state, "m2", state.generation, 100, parts)  # w1.0 went quiet at 0
    assert owned(state, "w1.0") == kept, "a static member keeps its partitions for its lease"
    heartbeat(state, "m2", state.generation, 101, parts)
    assert set(state.members) == {"m2"}, "then it expires like anybody"
    # Its instance id is free again: even a rejoin (no replacing) may use it.
    view_ = join(state, "w1.0", ("a",), 100, 102, parts, "w1")
    assert state.members["w1.0"].instance_id == "w1" and view_.assigned


def test_a_member_keeps_the_instance_id_it_joined_with() -> None:
    state = GroupState("g")
    join(state, "m1", ("a",), 1000, 0, {"a": 1}, "w1")
    with pytest.raises(UsageError, match="instance id 'w1', not 'w2'"):
        join(state, "m1", ("a",), 1000, 0, {"a": 1}, "w2")
    with pytest.raises(UsageError):
        join(state, "m1", ("a",), 1000, 0, {"a": 1})


def test_a_restart_with_other_topics_rebalances() -> None:
    state = GroupState("g")
    parts = {"a": 2, "b": 2}
    join(state, "w1.0", ("a",), 1000, 0, parts, "w1")
    join(state, "m2", ("a", "b"), 1000, 0, parts)
    fresh = join(state, "w1.1", ("b",), 1000, 0, parts, "w1", replace=True)
    assert {t.topic for t in fresh.assigned} == {"b"}
    check_assignment({t: a.owner for t, a in state.assignments.items()}, state.members, parts)


# --- members acting on their last view --------------------------------------------


class Membership(RuleBasedStateMachine):
    """Members join, heartbeat (acknowledging the view they last saw), leave
    and stop for a while. Two live members must never both be allowed to fetch
    one partition, and commits over a new owner are fenced."""

    def __init__(self) -> None:
        super().__init__()
        self.state = GroupState("g")
        self.now = 0
        self.views: dict[str, MemberView] = {}
        self.partitions = {"a": 3, "b": 2}
        # Static members: incarnations of each instance id, oldest first.
        self.incarnations: dict[str, list[str]] = {"w1": [], "w2": []}

    @rule(member=st.sampled_from(NAMES[:4]), topics=st.sampled_from([("a",), ("a", "b"), ("b",)]))
    def join(self, member: str, topics: tuple[str, ...]) -> None:
        self.views[member] = join(self.state, member, topics, 100, self.now, self.partitions)

    @rule(instance=st.sampled_from(["w1", "w2"]), topics=st.sampled_from([("a",), ("a", "b")]))
    def restart(self, instance: str, topics: tuple[str, ...]) -> None:
        """A new incarnation of a static member joins (its first join replaces)."""
        older = self.incarnations[instance]
        member = f"{instance}.{len(older)}"
        holder = next((m for m in self.state.members.values() if m.instance_id == instance), None)
        quiet = all(m.lease_until_ms >= self.now for m in self.state.members.values())
        others = {
            t: (a.owner, a.generation)
            for t, a in self.state.assignments.items()
            if holder is None or a.owner != holder.member_id
        }
        taken = set(owned(self.state, holder.member_id)) if holder else set()
        seen = join(self.state, member, topics, 100, self.now, self.partitions, instance, True)
        older.append(member)
        self.views[member] = seen
        if holder is not None and holder.topics == topics and quiet:
            # Nobody expired, same subscription: a pure replacement.
            assert set(seen.assigned) == taken
            assert {
                t: (a.owner, a.generation)
                for t, a in self.state.assignments.items()
                if a.owner != member
            } == others

    @rule(data=st.data(), instance=st.sampled_from(["w1", "w2"]))
    def rejoin(self, data: st.DataObject, instance: str) -> None:
        """An earlier incarnation, expired or replaced, tries to join again."""
        older = self.incarnations[instance]
        if not older:
            return
        member = data.draw(st.sampled_from(older))
        expiring = {m for m, v in self.state.members.items() if v.lease_until_ms < self.now}
        holder = next(
            (
                m
                for m, v in self.state.members.items()
                if v.instance_id == instance and m not in expiring - {member}
            ),
            None,
        )
        topics = self.state.members[member].topics if member in self.state.members else ("a",)
        try:
            self.views[member] = join(
                self.state, member, topics, 100, self.now, self.partitions, instance
            )
        except InstanceFenced:
            assert holder is not None and holder != member
            assert member not in self.state.members
        else:
            assert holder is None or holder == member

    @invariant()
    def one_member_per_instance(self) -> None:
        ids = [m.instance_id for m in self.state.members.values() if m.instance_id is not None]
        assert len(ids) == len(set(ids)), ids

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        statics = [m for older in self.incarnations.values() for m in older]
        member = data.draw(st.sampled_from([*NAMES[:4], *statics]))
        seen = self.views.get(member)
        acked = seen.generation if seen is not None else 0
        try:
            self.views[member] = heartbeat(self.state, member, acked, self.now, self.partitions)
        except StaleGeneration:
            assert member not in self.state.members
            self.views.pop(member, None)

    @rule(member=st.sampled_from(NAMES[:4]))
    def leave(self, member: str) -> None:
        leave(self.state, member, self.partitions)
        self.views.pop(member, None)

    @rule(ms=st.sampled_from([10, 60, 120]))
    def tick(self, ms: int) -> None:
        self.now += ms

    def _fetchable(self) -> dict[str, frozenset[TopicPartition]]:
        # Only members still in the group: an expired one is a zombie that
        # commit fencing (not fetch exclusion) deals with.
        return {m: v.ready for m, v in self.views.items() if m in self.state.members}

    @invariant()
    def no_partition_fetched_twice(self) -> None:
        seen: dict[TopicPartition, str] = {}
        for member, ready in self._fetchable().items():
            for t in ready:
                assert t not in seen, f"{t} fetchable by {seen[t]} and {member}"
                seen[t] = member

    @invariant()
    def nobody_else_commits_a_released_partition(self) -> None:
        """Once a partition is its owner's alone (no previous owner pending),
        any other member's commit, with whatever generation its last view
        gave it, is fenced: a zombie cannot overwrite the new owner's offsets."""
        for t, a in self.state.assignments.items():
            if a.prev_owner is not None:
                continue
            for other, seen in self.views.items():
                if other != a.owner and t in seen.assigned:
                    with pytest.raises(StaleGeneration):
                        check_commit(self.state, commit(other, {t: seen.assigned[t]}))

    @invariant()
    def assignment_is_balanced(self) -> None:
        owners = {t: a.owner for t, a in self.state.assignments.items()}
        check_assignment(owners, self.state.members, self.partitions)


TestMembership = Membership.TestCase
TestMembership.settings = settings(max_examples=3 * settings().max_examples, stateful_step_count=60)
