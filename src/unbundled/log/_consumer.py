"""The consumer as a sans-I/O state machine (psycopg's approach).

Each operation is a generator that yields :class:`Op` requests (call this
backend method with these arguments) and receives their results. The sync
``Consumer`` runs them with plain calls, the ``AsyncConsumer`` with awaits, so
both share every decision: membership, revocation, positions, auto-commit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal, NamedTuple

from .. import limits
from .._bounds import check_int, check_seconds
from ..errors import (
    Closed,
    Error,
    InstanceFenced,
    OffsetOutOfRange,
    PartitionNotFound,
    StaleGeneration,
    TopicNotFound,
    UsageError,
)
from . import _core
from ._protocol import MemberView, OffsetCommit, Record, TopicPartition, WriteBatch

OffsetReset = Literal["earliest", "latest", "none"]


class Op(NamedTuple):
    """Call ``backend.<name>(*args)``; ``submit`` means submit-and-wait."""

    name: str
    args: tuple[Any, ...]


Steps = Generator[Op, Any, Any]

# The longest single wait for a change; poll waits longer (up to an infinite
# timeout_s) in slices of it.
_WAIT_SLICE_S = 3600.0


class ConsumerCore:
    """Positions, ownership and commits of one consumer; no I/O of its own."""

    def __init__(
        self,
        topics: Sequence[str],
        *,
        group: str | None,
        member_id: str,
        auto_commit: bool,
        auto_commit_interval_s: float,
        offset_reset: OffsetReset,
        lease_ms: int,
        partitions: Sequence[TopicPartition] | None = None,
        bytes_max: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str | None = None,
    ) -> None:
        if offset_reset not in ("earliest", "latest", "none"):
            raise UsageError(
                f"offset_reset must be 'earliest', 'latest' or 'none', got {offset_reset!r}",
                offset_reset=offset_reset,
            )
        check_int("lease_ms", lease_ms, limits.lease_ms_min, limits.lease_ms_max)
        check_seconds("auto_commit_interval_s", auto_commit_interval_s)
        if group is None and auto_commit and partitions is None:
            auto_commit = False  # nothing to commit to without a group
        self.topics = tuple(topics)
        self.group = group
        self.member_id = member_id
        self.instance_id = instance_id
        self.auto_commit = auto_commit
        self.auto_commit_interval_s = auto_commit_interval_s
        self.offset_reset = offset_reset
        self.lease_ms = lease_ms
        self.bytes_max = bytes_max
        self.fixed = tuple(partitions) if partitions is not None else None
        self.clock = clock
        self.view: MemberView | None = None
        self.held: dict[TopicPartition, int] = {}
        self.ready: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int | None] = {}
        self.acked = 0
        self.next_heartbeat = 0.0
        self.last_commit = 0.0
        self.turn = 0
        self.closed = False
        # Set once a newer incarnation of this static member replaced it: from
        # then on it may neither rejoin (it would take the partitions back)
        # nor commit; every call raises this.
        self.replaced: InstanceFenced | None = None

    # --- queries (no I/O) -----------------------------------------------------

    def assignment(self) -> set[TopicPartition]:
        """Partitions this consumer may fetch now."""
        return set(self.ready)

    def uncommitted(self) -> dict[TopicPartition, int]:
        return {
            tp: pos
            for tp, pos in self.positions.items()
            if tp in self.held and self.committed.get(tp) != pos
        }

    def offset_commit(self, offsets: dict[TopicPartition, int] | None = None) -> OffsetCommit:
        """The commit of ``offsets`` (default: everything consumed) as this member."""
        if self.group is None:
            raise UsageError("this consumer has no group: there is nowhere to commit offsets")
        chosen = self.uncommitted() if offsets is None else _core.check_offsets(offsets)
        member = self.member_id if self.fixed is None else None
        return OffsetCommit(
            self.group, member, chosen, {tp: self.held.get(tp, -1) for tp in chosen}
        )

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)
        self.last_commit = self.clock()

    def position(self, tp: TopicPartition) -> int:
        """The next offset to fetch from ``tp``; ``UsageError`` if not assigned."""
        self._check_assigned(tp)
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` from ``offset`` next; ``UsageError`` if not assigned."""
        self._check_assigned(tp)
        self.positions[tp] = _core.check_offset("offset", offset)

    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self.positions:
            raise UsageError(
                f"{tp.topic}[{tp.partition}] is not assigned to this consumer",
                topic=tp.topic,
                partition=tp.partition,
            )

    def _check_open(self) -> None:
        if self.closed:
            raise Closed("the consumer is closed")
        if self.replaced is not None:
            raise InstanceFenced(self.replaced.message, **self.replaced.details)

    # --- operations (generators of Ops) ---------------------------------------

    def poll(self, timeout_s: float, records_max: int) -> Steps:
        self._check_open()
        check_int("records_max", records_max, 1, limits.poll_records_max)
        timeout_s = check_seconds("timeout_s", timeout_s)
        deadline = self.clock() + timeout_s
        if self.auto_commit and self.clock() - self.last_commit >= self.auto_commit_interval_s:
            yield from self._commit_quietly(None)
        while True:
            if self.group is not None and self.fixed is None:
                yield from self._membership()
            elif not self.held:
                yield from self._assign_fixed()
            token = yield Op("change_token", ())
            records = yield from self._fetch(records_max)
            if records:
                return records
            remaining = deadline - self.clock()
            if remaining <= 0:
                return []
            if self.view is not None:
                remaining = min(remaining, max(0.0, self.next_heartbeat - self.clock()) + 0.001)
            # In slices: a backend's condition wait overflows on a huge timeout.
            yield Op("wait_for_change", (token, min(remaining, _WAIT_SLICE_S)))

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> Steps:
        """Commit ``offsets`` (default: all consumed); raises ``StaleGeneration``."""
        self._check_open()
        commit = self.offset_commit(offsets)
        if not commit.offsets:
            return
        yield Op("submit", (WriteBatch({}, (commit,)),))
        self.mark_committed(commit.offsets)

    def close(self, leave: bool | None = None) -> Steps:
        """Commit (with auto-commit) and, if ``leave``, leave the group.

        ``leave=None`` leaves for a dynamic member; a static member (one with
        an ``instance_id``) stays, so its next incarnation takes its
        partitions back without a rebalance (KIP-345); if none comes, its
        lease runs out and the others take them. A replaced member is no
        longer in the group: it commits nothing and has nothing to leave.
        """
        if self.closed:
            return
        if leave is None:
            leave = self.instance_id is None
        failed: Error | None = None
        try:
            if self.auto_commit and self.replaced is None:
                yield from self._commit_quietly(None)
        except Error as exc:
            # Leave even if the final commit failed: otherwise our partitions
            # sit idle until the lease runs out. Then report the failure.
            failed = exc
        try:
            if leave and self.replaced is None and self.group is not None and self.view is not None:
                yield Op("group_leave", (self.group, self.member_id))
        finally:
            self.closed = True
        if failed is not None:
            raise failed

    # --- internals ------------------------------------------------------------

    def _commit_quietly(self, tps: Sequence[TopicPartition] | None) -> Steps:
        """Auto-commit: a fenced commit only means the records go to the new
        owner again (at-least-once), so it is not an error here."""
        pending = self.uncommitted()
        if tps is not None:
            pending = {tp: o for tp, o in pending.items() if tp in tps}
        if not pending or self.group is None:
            return
        # A deleted (or shrunk) topic's offsets have nowhere to go; the next
        # heartbeat rebalances its partitions away. Raising here would fail
        # every poll, since each one starts with this commit.
        with contextlib.suppress(StaleGeneration, TopicNotFound, PartitionNotFound):
            yield from self.commit(pending)

    def _assign_fixed(self) -> Steps:
        if self.fixed is not None:
            tps = list(self.fixed)
        else:
            tps = []
            for topic in self.topics:
                config = yield Op("topic_config", (topic,))
                tps.extend(TopicPartition(topic, p) for p in range(config.partitions))
        self.held = {tp: -1 for tp in tps}
        self.ready = set(tps)
        yield from self._start_positions(tps)

    def _membership(self) -> Steps:
        assert self.group is not None
        if self.view is None:
            # The first join may replace an earlier incarnation of our
            # instance id (a restart); a rejoin later may not (see _beat).
            view = yield from self._join(replace=True)
            yield from self._apply(view)
            return
        due = self.clock() >= self.next_heartbeat
        if not due:
            version = yield Op("group_version", (self.group,))
            due = version != self.view.version
        if due:
            yield from self._heartbeat()

    def _heartbeat(self) -> Steps:
        view = yield from self._beat()
        yield from self._apply(view)

    def _join(self, replace: bool) -> Steps:
        assert self.group is not None
        args = (self.group, self.member_id, self.topics, self.lease_ms, self.instance_id, replace)
        try:
            return (yield Op("group_join", args))
        except InstanceFenced as exc:
            self.replaced = exc
            raise

    def _beat(self) -> Steps:
        """Heartbeat; if we were expired (our partitions handed out), drop
        everything and join again, starting from the committed offsets."""
        assert self.group is not None
        try:
            return (yield Op("group_heartbeat", (self.group, self.member_id, self.acked)))
        except StaleGeneration:
            self._drop(list(self.held))
            return (yield from self._join(replace=False))

    def _drop(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self.held.pop(tp, None)
            self.positions.pop(tp, None)
            self.committed.pop(tp, None)
            self.ready.discard(tp)

    def _apply(self, view: MemberView) -> Steps:
        for _ in range(4):  # a few rounds settle any rebalance
            self.next_heartbeat = self.clock() + view.lease_ms / 4000
            revoked = [tp for tp, gen in self.held.items() if view.assigned.get(tp) != gen]
            if revoked and self.auto_commit:
                yield from self._commit_quietly(revoked)
            self._drop(revoked)
            self.held = dict(view.assigned)
            fresh = [tp for tp in sorted(view.ready) if tp not in self.positions]
            self.ready = set(view.ready)
            self.view = view
            if fresh:
                yield from self._start_positions(fresh)
            if view.generation <= self.acked:
                return
            self.acked = view.generation
            if not revoked:
                return
            # Tell the group at once that we let go, so the new owners start.
            view = yield from self._beat()

    def _start_positions(self, tps: Sequence[TopicPartition]) -> Steps:
        committed: dict[TopicPartition, int] = {}
        if self.group is not None:
            committed = yield Op("committed", (self.group,))
        bounds = yield Op("offset_bounds", (list(tps),))
        for tp in tps:
            start, end = bounds[tp]
            offset = committed.get(tp)
            self.committed[tp] = offset
            if offset is not None and start <= offset <= end:
                self.positions[tp] = offset
            else:
                self.positions[tp] = self._reset(tp, start, end, offset)

    def _reset(self, tp: TopicPartition, start: int, end: int, offset: int | None) -> int:
        if self.offset_reset == "earliest":
            return start
        if self.offset_reset == "latest":
            return end
        raise OffsetOutOfRange(
            f"{tp.topic}[{tp.partition}]: no valid offset to start from (have {offset}, "
            f"range {start}..{end}) and offset_reset is 'none'",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            start_offset=start,
            end_offset=end,
        )

    def _fetch(self, records_max: int) -> Steps:
        tps = sorted(tp for tp in self.ready if tp in self.positions)
        if not tps:
            return []
        try:
            bounds = yield Op("offset_bounds", (tps,))
        except (TopicNotFound, PartitionNotFound):
            if self.view is None:
                raise  # no group to rebalance it away: the caller's topic is gone
            self.next_heartbeat = 0.0  # a topic was deleted: rebalance at once
            return []
        out: list[Record] = []
        # Positions move only when the records read are handed out: a read of
        # a later partition that fails (a timeout mid-poll) must not skip the
        # records already read from the earlier ones.
        moved: dict[TopicPartition, int] = {}
        count = len(tps)
        self.turn = (self.turn + 1) % count
        for i in range(count):
            tp = tps[(self.turn + i) % count]
            start, end = bounds[tp]
            position = self.positions[tp]
            if position < start or position > end:
                position = self.positions[tp] = self._reset(tp, start, end, position)
            if position >= end:
                continue
            try:
                records = yield Op(
                    "read",
                    (tp.topic, tp.partition, position, records_max - len(out), self.bytes_max),
                )
            except OffsetOutOfRange as exc:
                self.positions[tp] = self._reset(
                    tp, exc.details["start_offset"], exc.details["end_offset"], position
                )
                continue
            # An empty read below the end means compaction removed the rest.
            moved[tp] = records[-1].offset + 1 if records else end
            out.extend(records)
            if len(out) >= records_max:
                break
        self.positions.update(moved)
        return out


def run_sync(backend: Any, steps: Steps) -> Any:
    """Drive a generator of :class:`Op` with blocking calls."""
    from .._ground.waiters import SyncWaiter
    from ..errors import Error

    try:
        op = next(steps)
        while True:
            try:
                if op.name == "submit":
                    waiter = SyncWaiter()
                    backend.submit(op.args[0], waiter)
                    result = waiter.wait()
                else:
                    result = getattr(backend, op.name)(*op.args)
            except Error as exc:
                op = steps.throw(exc)
                continue
            op = steps.send(result)
    except StopIteration as stop:
        return stop.value
