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

from unbundled.errors import StaleGeneration
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

    @rule(member=st.sampled_from(NAMES[:4]), topics=st.sampled_from([("a",), ("a", "b"), ("b",)]))
    def join(self, member: str, topics: tuple[str, ...]) -> None:
        self.views[member] = join(self.state, member, topics, 100, self.now, self.partitions)

    @rule(member=st.sampled_from(NAMES[:4]))
    def heartbeat(self, member: str) -> None:
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
