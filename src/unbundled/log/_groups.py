"""Consumer-group coordination as a pure state machine.

There is no coordinator process: the group's state lives in the backend and
every member applies these functions to it inside one backend transaction.

Rules (see docs/explanation/log.md, "Consumer groups"):

* Membership changes (join, leave, lease expiry, subscription change, a topic
  deleted) start a new *generation* and reassign partitions, stickily: a
  partition stays with its owner unless balance requires a move.
* Each assignment remembers the generation it was made in. A commit must name
  that generation: if the partition moved since, the commit is fenced
  (``StaleGeneration``), so a zombie cannot overwrite the new owner's offsets.
* A partition moved away from a live member stays *pending* until that member
  acknowledges the new generation (it has stopped and committed), or its lease
  expires. Only then may the new owner fetch it, so two live members never
  process one partition at the same time.
* Static membership (Kafka's KIP-345): a member may name a stable
  *instance id*. A new incarnation joining under a live member's instance id
  *replaces* it at once: it gets exactly that member's partitions, at a new
  generation, and nobody else's assignment changes. The old incarnation is no
  longer a member, so its commits are fenced as an expired member's are, and
  when it tries to join again it gets ``InstanceFenced``: only a consumer's
  first join may replace (``replace=True``), a rejoin may not. Member ids stay
  unique per incarnation; the instance id is what survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InstanceFenced, StaleGeneration, UsageError
from ._protocol import GroupInfo, GroupMemberInfo, MemberView, OffsetCommit, TopicPartition


@dataclass
class Member:
    member_id: str
    topics: tuple[str, ...]
    lease_ms: int
    lease_until_ms: int
    acked_generation: int = 0
    instance_id: str | None = None


@dataclass
class Assignment:
    owner: str
    generation: int
    prev_owner: str | None = None
    prev_generation: int | None = None


@dataclass
class GroupState:
    name: str
    generation: int = 0
    version: int = 0  # moves on every rebalance and every release
    members: dict[str, Member] = field(default_factory=dict)
    assignments: dict[TopicPartition, Assignment] = field(default_factory=dict)


def expire(state: GroupState, now: int, keep: str | None = None) -> bool:
    """Remove members whose lease ran out (except ``keep``); True if any."""
    dead = [m for m, member in state.members.items() if member.lease_until_ms < now and m != keep]
    for member_id in dead:
        del state.members[member_id]
    return bool(dead)


def sticky_assign(
    members: dict[str, Member],
    partitions: dict[str, int],
    current: dict[TopicPartition, str],
) -> dict[TopicPartition, str]:
    """Balance each topic's partitions over the members subscribed to it.

    Members holding more partitions now get the larger quotas, each keeps as
    many of its current partitions as its quota allows, and the rest go to
    the least loaded, so a rebalance moves as few partitions as possible.
    Deterministic: every member computes the same answer.
    """
    result: dict[TopicPartition, str] = {}
    for topic in sorted(partitions):
        subscribers = sorted(m for m, member in members.items() if topic in member.topics)
        if not subscribers:
            continue
        tps = [TopicPartition(topic, p) for p in range(partitions[topic])]
        held: dict[str, list[TopicPartition]] = {m: [] for m in subscribers}
        for tp in tps:
            owner = current.get(tp)
            if owner in held:
                held[owner].append(tp)
        order = sorted(subscribers, key=lambda m: (-len(held[m]), m))
        base, extra = divmod(len(tps), len(subscribers))
        quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
        pool: list[TopicPartition] = []
        taken: set[TopicPartition] = set()
        for m in subscribers:
            for tp in held[m][: quota[m]]:
                result[tp] = m
                taken.add(tp)
        pool = [tp for tp in tps if tp not in taken]
        load = {m: min(len(held[m]), quota[m]) for m in subscribers}
        for m in order:
            while load[m] < quota[m]:
                result[pool.pop(0)] = m
                load[m] += 1
    return result


def rebalance(state: GroupState, partitions: dict[str, int]) -> None:
    """Start a new generation and reassign; see the module docstring."""
    state.generation += 1
    state.version += 1
    current = {tp: a.owner for tp, a in state.assignments.items()}
    desired = sticky_assign(state.members, partitions, current)
    updated: dict[TopicPartition, Assignment] = {}
    for tp, owner in desired.items():
        old = state.assignments.get(tp)
        if old is not None and old.owner == owner:
            updated[tp] = old
            continue
        prev_owner, prev_generation = None, None
        if old is not None:
            # The member that may still be working on it is the pending
            # previous owner if there is one, else the current owner.
            if old.prev_owner is not None:
                prev_owner, prev_generation = old.prev_owner, old.prev_generation
            else:
                prev_owner, prev_generation = old.owner, old.generation
            if prev_owner == owner or prev_owner not in state.members:
                prev_owner, prev_generation = None, None
        updated[tp] = Assignment(owner, state.generation, prev_owner, prev_generation)
    state.assignments = updated


def release(state: GroupState) -> None:
    """Clear pending previous owners that acknowledged or are gone."""
    changed = False
    for a in state.assignments.values():
        if a.prev_owner is None:
            continue
        prev = state.members.get(a.prev_owner)
        if prev is None or prev.acked_generation >= a.generation:
            a.prev_owner, a.prev_generation = None, None
            changed = True
    if changed:
        state.version += 1


def _stale_assignments(state: GroupState, partitions: dict[str, int]) -> bool:
    for tp in state.assignments:
        if tp.topic not in partitions or tp.partition >= partitions[tp.topic]:
            return True
    wanted = {t for m in state.members.values() for t in m.topics if t in partitions}
    assigned = {tp.topic for tp in state.assignments}
    return wanted != assigned


def join(
    state: GroupState,
    member_id: str,
    topics: tuple[str, ...],
    lease_ms: int,
    now: int,
    partitions: dict[str, int],
    instance_id: str | None = None,
    replace: bool = False,
) -> MemberView:
    """Add (or refresh) a member; rebalance if membership changed.

    With ``instance_id``, a new member id whose instance id a live member
    holds replaces that member if ``replace`` (a consumer's first join), and
    raises ``InstanceFenced`` if not (a replaced incarnation joining again).
    """
    # Every check before the first change: a refused join changes nothing.
    old = state.members.get(member_id)
    if old is not None and old.instance_id != instance_id:
        raise UsageError(
            f"member {member_id!r} of group {state.name!r} joined with instance id "
            f"{old.instance_id!r}, not {instance_id!r}",
            group=state.name,
            member_id=member_id,
            instance_id=instance_id,
        )
    holder = _holder(state, instance_id, now) if old is None else None
    if holder is not None and not replace:
        raise InstanceFenced(
            f"member {member_id!r} of group {state.name!r} was replaced by "
            f"{holder.member_id!r}, which joined with the same instance id "
            f"{instance_id!r}: stop this consumer",
            group=state.name,
            member_id=member_id,
            instance_id=instance_id,
            replaced_by=holder.member_id,
        )
    changed = expire(state, now, keep=member_id)
    if holder is not None:
        _replace(state, holder, member_id)
        changed = changed or holder.topics != topics
    elif old is None or old.topics != topics:
        changed = True
    acked = old.acked_generation if old is not None else 0
    state.members[member_id] = Member(
        member_id, topics, lease_ms, now + lease_ms, acked, instance_id
    )
    if changed or _stale_assignments(state, partitions):
        rebalance(state, partitions)
    release(state)
    return view(state, member_id)


def _holder(state: GroupState, instance_id: str | None, now: int) -> Member | None:
    """The member that joined with ``instance_id``, if any and its lease has
    not run out (an expired one is removed by ``expire``, freeing the id)."""
    if instance_id is None:
        return None
    for member in state.members.values():
        if member.instance_id == instance_id and member.lease_until_ms >= now:
            return member
    return None


def _replace(state: GroupState, old: Member, member_id: str) -> None:
    """Hand ``old``'s partitions to its new incarnation ``member_id`` at once.

    A new generation, so the view of every member moves on; only the moved
    assignments carry it, so nobody else revokes anything. Partitions that
    ``old`` was still handing over to others are released by ``release``
    (``old`` is gone); partitions it was waiting for stay pending on their
    previous owner, as they were.
    """
    del state.members[old.member_id]
    state.generation += 1
    state.version += 1
    for tp, a in state.assignments.items():
        if a.owner == old.member_id:
            state.assignments[tp] = Assignment(
                member_id, state.generation, a.prev_owner, a.prev_generation
            )


def heartbeat(
    state: GroupState,
    member_id: str,
    acked_generation: int,
    now: int,
    partitions: dict[str, int],
) -> MemberView:
    """Renew a live member's lease and record its acknowledgement.

    Raises ``StaleGeneration`` if the member was expired (another member saw
    its lease run out and took its partitions): it must stop and join again.
    A member late with its heartbeat that nobody expired yet keeps everything,
    since nobody else can have taken over.
    """
    member = state.members.get(member_id)
    if member is None:
        raise StaleGeneration(
            f"member {member_id!r} of group {state.name!r} was expired (its lease ran out); "
            "its partitions were reassigned: join again",
            group=state.name,
            member_id=member_id,
        )
    member.lease_until_ms = now + member.lease_ms
    member.acked_generation = max(member.acked_generation, min(acked_generation, state.generation))
    if expire(state, now) or _stale_assignments(state, partitions):
        rebalance(state, partitions)
    release(state)
    return view(state, member_id)


def leave(state: GroupState, member_id: str, partitions: dict[str, int]) -> None:
    if state.members.pop(member_id, None) is not None:
        rebalance(state, partitions)
        release(state)


def view(state: GroupState, member_id: str) -> MemberView:
    member = state.members[member_id]
    assigned = {tp: a.generation for tp, a in state.assignments.items() if a.owner == member_id}
    ready = frozenset(
        tp for tp, a in state.assignments.items() if a.owner == member_id and a.prev_owner is None
    )
    return MemberView(
        state.name, member_id, state.generation, state.version, assigned, ready, member.lease_ms
    )


def describe(state: GroupState, committed: dict[TopicPartition, int]) -> GroupInfo:
    """The group as ``describe_group`` shows it: members by id, each with its partitions."""
    members = tuple(
        GroupMemberInfo(
            m.member_id,
            m.topics,
            m.lease_until_ms,
            tuple(sorted(tp for tp, a in state.assignments.items() if a.owner == m.member_id)),
            m.instance_id,
        )
        for m in sorted(state.members.values(), key=lambda m: m.member_id)
    )
    return GroupInfo(state.name, state.generation, members, committed)


def check_commit(state: GroupState, commit: OffsetCommit) -> None:
    """Raise ``StaleGeneration`` unless the committer still holds every partition.

    A member holds a partition if it owns it in the generation it names and
    the previous owner has let go, or if it is that pending previous owner
    (committing before it lets go). During a handover only the previous owner
    may commit, so the two can never overwrite each other. A commit without a
    member is allowed only while the group has no members.
    """
    if commit.member_id is None:
        if state.members:
            raise StaleGeneration(
                f"group {state.name!r} has active members; commit as one of them",
                group=state.name,
            )
        return
    for tp in commit.offsets:
        a = state.assignments.get(tp)
        held = commit.generations.get(tp)
        owns = a is not None and (
            (a.owner == commit.member_id and a.generation == held and a.prev_owner is None)
            or (a.prev_owner == commit.member_id and a.prev_generation == held)
        )
        if not owns and a is not None and a.owner == commit.member_id and a.prev_owner:
            raise StaleGeneration(
                f"member {commit.member_id!r} of group {state.name!r} cannot commit "
                f"{tp.topic}[{tp.partition}] yet: {a.prev_owner!r} has not released it",
                group=state.name,
                member_id=commit.member_id,
                topic=tp.topic,
                partition=tp.partition,
            )
        if not owns:
            owner = a.owner if a is not None else None
            raise StaleGeneration(
                f"member {commit.member_id!r} of group {state.name!r} no longer owns "
                f"{tp.topic}[{tp.partition}] (generation {held}); its owner is now "
                f"{owner!r}: commit rejected",
                group=state.name,
                member_id=commit.member_id,
                topic=tp.topic,
                partition=tp.partition,
            )
