"""Running a flow over the log, exactly once: epochs.

A worker is a member of the consumer group ``streams.<flow name>``; each of
its source partitions is one task. An epoch ends after ``epoch_records``
input records, after the watermark moved ``epoch_event_ms``, after
``epoch_interval_s`` of wall time, or when the input is idle; then one
transaction stores, for every task, the output records, the touched state
buckets and the manifest (the next input offset, the watermark), and
commits the input offsets -- fenced by the group generation, so a worker
that lost a partition cannot commit over its new owner. A crash anywhere,
even inside that commit, leaves the last committed epoch, from which a
restart replays the same records into the same state: the outputs are
neither lost nor repeated. Epochs never change what is computed, only when
it becomes visible.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from .. import limits
from ..errors import OffsetOutOfRange, StaleGeneration, TopicExists, UsageError
from ..log._protocol import Headers, Message, Record, TopicPartition
from ._flow import Flow, Node
from ._merge import repartition_messages
from ._ops import LATE_SINK, Ctx, Op, encode_key
from ._store import (
    bucket_key,
    dead_topic,
    group_name,
    heartbeat,
    late_topic,
    late_value,
    manifest_key,
    restore,
)
from ._table import upsert
from ._task import DEAD_SINK, Task


class RunReport(msgspec.Struct):
    """What one :func:`run` did: records read from the source (and a joined
    topic) and written (to every topic and table, repartition topics
    included), epochs committed, late and dead records so far."""

    records_in: int = 0
    records_out: int = 0
    epochs: int = 0
    late: int = 0
    dead: int = 0
    seconds: float = 0.0
    partitions: list[int] = msgspec.field(default_factory=list)


Key = tuple[int, int]  # (segment, partition)


class Runner:
    """One worker of a flow (see the module docstring)."""

    def __init__(
        self,
        db: Any,
        flow: Flow,
        *,
        instance_id: str | None,
        epoch_records: int,
        epoch_event_ms: int | None,
        epoch_interval_s: float,
        poll_records: int,
        lease_ms: int,
    ) -> None:
        self.db = db
        self.flow = flow
        self.epoch_records = epoch_records
        self.epoch_event_ms = epoch_event_ms
        self.epoch_interval_s = epoch_interval_s
        self.poll_records = poll_records
        self.partitions = len(db.log.describe_topic(flow.source_topic).partitions)
        self.out_parts: dict[str, int] = {}
        self.topics = {g: flow.segment_topic(g) for g in flow.segments()}
        for g, topic in self.topics.items():
            if g and self._topic_partitions(topic) != self.partitions:
                raise UsageError(
                    f"repartition topic {topic!r} has {self.out_parts[topic]} partitions, "
                    f"the source {self.partitions}: reset the flow or delete the topic",
                    topic=topic,
                )
        self.consumers = {
            g: db.log.consumer(
                topic,
                group=group_name(flow, g),
                auto_commit=False,
                instance_id=instance_id,
                lease_ms=lease_ms,
            )
            for g, topic in self.topics.items()
        }
        # Each join's node id, the topic it reads, and its segment.
        self.joins = [(n.id, str(n.args["topic"]), n.segment) for n in flow.joins]
        self.join_segments = flow.join_segments
        for _, table, _ in self.joins:
            table_parts = len(db.log.describe_topic(table).partitions)
            if table_parts != self.partitions:
                raise UsageError(
                    f"table topic {table!r} has {table_parts} partitions, the source "
                    f"{flow.source_topic!r} {self.partitions}: they must be co-partitioned",
                    topic=table,
                )
        self.tasks: dict[Key, Task] = {}
        self.sinks: dict[int, Node] = {n.id: n for n in flow.sinks()}
        for node in self.sinks.values():  # there from the start, for their readers
            if node.args["to"] == "topic":
                self._topic_partitions(node.args["topic"])
        self.report = RunReport()
        self.pending = 0  # records taken since the last commit, every segment's
        self.pending_in = 0  # of them, the source's and the joined topic's
        self.last_commit = time.monotonic()
        self.wm_at_commit: dict[Key, int] = {}
        self.on_epoch: Callable[[RunReport, dict[Key, Task]], None] | None = None

    def _topic_partitions(self, topic: str) -> int:
        if topic not in self.out_parts:
            with contextlib.suppress(TopicExists):
                self.db.log.create_topic(topic, self.partitions)
            self.out_parts[topic] = len(self.db.log.describe_topic(topic).partitions)
        return self.out_parts[topic]

    # --- the loop --------------------------------------------------------------

    def sync_assignment(self, g: int, polled: dict[int, list[Record]]) -> None:
        """Tasks for exactly segment ``g``'s assigned partitions. When the
        assignment changed, every task of the segment is restored from its
        last epoch (uncommitted work is dropped, to be redone) and the
        consumer sought to where it stopped; records polled from elsewhere
        are dropped from ``polled``."""
        consumer, topic = self.consumers[g], self.topics[g]
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        if assigned == {p for (sg, p) in self.tasks if sg == g}:
            return
        for key in [k for k in self.tasks if k[0] == g]:
            del self.tasks[key]
        starts: dict[int, int] = {}
        for p in sorted(assigned):
            tp = TopicPartition(topic, p)
            recs = polled.get(p, [])
            task = restore(self.db, self.flow, p, g, self.partitions)
            if task is None:  # no epoch yet: from where the group's offset says
                task = Task(self.flow, p, g, self.partitions)
                starts = starts or self._starts(g)
                task.offset = starts[p]
            if not recs or recs[0].offset != task.offset:
                polled.pop(p, None)
                consumer.seek(tp, task.offset)
            self.tasks[(g, p)] = task
            self.wm_at_commit[(g, p)] = task.wm
        for p in [p for p in polled if p not in assigned]:
            polled.pop(p)
        self.report.partitions = sorted(p for (sg, p) in self.tasks if sg == 0)

    def _starts(self, g: int) -> dict[int, int]:
        """Where each partition of segment ``g`` without an epoch starts: the
        group's committed offset, else the partition's start (the consumers'
        "earliest"). Not the consumer's position: a partition it kept through
        a rebalance is read on from where the dropped task had got to, and
        the records before would never be processed."""
        topic = self.topics[g]
        committed = self.db.log.describe_group(group_name(self.flow, g)).committed
        starts = {}
        for info in self.db.log.describe_topic(topic).partitions:
            at = committed.get(TopicPartition(topic, info.partition))
            if at is None or not info.start_offset <= at <= info.end_offset:
                at = info.start_offset
            starts[info.partition] = at
        return starts

    def step(self, timeout_s: float) -> int:
        """One poll of each segment and what it brings; commits an epoch
        when one is due. Returns the records processed."""
        taken, polled = 0, 0
        # Without waiting first: a segment with nothing yet must not hold up the others.
        for wait in (0.0, timeout_s / len(self.consumers)):
            for g, consumer in self.consumers.items():
                records: list[Record] = consumer.poll(wait, records_max=self.poll_records)
                polled += len(records)
                taken += self._take(g, records)
            if polled or taken:
                break
        self.pending += taken
        if self.epoch_due(idle=not polled):
            self.commit()
        return taken

    def _take(self, g: int, records: list[Record]) -> int:
        """Feed segment ``g``'s polled records (and the joined table's) to its tasks."""
        taken = 0
        by_part: dict[int, list[Record]] = {}
        for rec in records:
            by_part.setdefault(rec.partition, []).append(rec)
        self.sync_assignment(g, by_part)
        for node_id, table, segment in self.joins:
            if segment != g:
                continue
            for (sg, p), task in self.tasks.items():
                if sg == g:
                    got = task.feed_table(self._table_records(p, task, node_id, table), node_id)
                    taken += got
                    self.pending_in += got
        for p, recs in by_part.items():
            fed = self.tasks.get((g, p))
            if fed is not None:
                got = fed.feed(recs)
                taken += got
                if g == 0:
                    self.pending_in += got
        return taken

    def _table_records(self, p: int, task: Task, node_id: int, table: str) -> list[Record]:
        offsets, read = task.table_offsets, self.db.log.read
        try:
            return read(table, p, offsets[node_id], records_max=self.poll_records)  # type: ignore[no-any-return]
        except OffsetOutOfRange:  # compacted or expired below: from what is stored
            offsets[node_id] = self.db.log.describe_topic(table).partitions[p].start_offset
            return read(table, p, offsets[node_id], records_max=self.poll_records)  # type: ignore[no-any-return]

    def has_work(self) -> bool:
        """Whether anything is processed but not committed yet."""
        return bool(self.pending) or any(t.ctx.dirty or t.ctx.outputs for t in self.tasks.values())

    def epoch_due(self, *, idle: bool) -> bool:
        if not self.has_work():
            return False
        if idle or self.pending >= self.epoch_records:
            return True
        if time.monotonic() - self.last_commit >= self.epoch_interval_s:
            return True
        if self.epoch_event_ms is not None:
            for key, task in self.tasks.items():
                if task.wm - self.wm_at_commit.get(key, task.wm) >= self.epoch_event_ms:
                    return True
        return False

    def commit(self) -> None:
        """One epoch: every task's outputs, state and offsets in one transaction."""
        tx = self.db.transaction()
        callbacks: list[tuple[Any, Any, Any, int]] = []
        offsets: dict[int, dict[TopicPartition, int]] = {g: {} for g in self.consumers}
        written = 0
        name = self.flow.name
        for (g, p), task in self.tasks.items():
            written += self._outputs(tx, task, callbacks)
            manifest, changed = task.dump()
            for (node_id, bucket), blob in changed.items():
                key = bucket_key(name, p, node_id, bucket, g)
                if blob is None:
                    tx.kv.delete(key)
                else:
                    tx.kv.write(key, blob)
            tx.kv.write(manifest_key(name, p, g), manifest)
            offsets[g][TopicPartition(self.topics[g], p)] = task.offset
        for g, consumer in self.consumers.items():
            if offsets[g]:
                tx.commit_offsets(consumer, offsets=offsets[g])
        if self.before_commit is not None:
            self.before_commit()
        try:
            tx.commit()
        except StaleGeneration:
            # Fenced: a partition moved while this worker was busy (its lease
            # ran out: a pause, a slow disk), and nothing of the epoch was
            # written. Drop the uncommitted work: the next poll rejoins, and
            # every task then restarts from its last committed epoch.
            self.tasks = {}
            self.pending = self.pending_in = 0
            return
        for node, key, value, ts in callbacks:
            # A callback that raises stops the run as any function of the flow
            # does (its epoch is committed: the calls are at least once).
            Op(node, Ctx()).call(node.args["fn"], key, value, ts)
        tasks = self.tasks.values()
        self.report.epochs += 1
        self.report.records_in += self.pending_in
        self.report.records_out += written
        self.report.late = sum(t.ctx.late_count for t in tasks)
        self.report.dead = sum(t.dead for t in tasks)
        self.pending = self.pending_in = 0
        self.last_commit = time.monotonic()
        self.wm_at_commit = {key: t.wm for key, t in self.tasks.items()}
        if self.on_epoch is not None:
            self.on_epoch(self.report, self.tasks)

    before_commit: Callable[[], None] | None = None  # a test hook: inside the commit

    def _outputs(self, tx: Any, task: Task, callbacks: list[Any]) -> int:
        batches: dict[str, list[Message]] = {}
        tables: dict[str, list[tuple[Any, Any, int]]] = {}
        for sink_id, key, value, ts in task.ctx.outputs:
            if sink_id == LATE_SINK:
                topic, headers = late_topic(self.flow), LATE_HEADERS
                raw = late_value(self._source_decode(), value)
            elif sink_id == DEAD_SINK:
                raw, headers = value
                msg = self._message(dead_topic(self.flow), task, key, raw, headers, ts)
                batches.setdefault(dead_topic(self.flow), []).append(msg)
                continue
            elif sink_id in self.topics:  # a repartitioning key_by
                topic = self.topics[sink_id]
                label = self.flow.nodes[sink_id].label
                msgs = repartition_messages(
                    label,
                    task.partition,
                    key,
                    value,
                    ts,
                    self.partitions,
                    log_keyed=sink_id in self.join_segments,
                )
                batches.setdefault(topic, []).extend(msgs)
                continue
            else:
                node = self.sinks[sink_id]
                kind = node.args["to"]
                if kind == "callback":
                    callbacks.append((node, key, value, ts))
                    continue
                if kind == "table":
                    tables.setdefault(node.args["table"], []).append((key, value, ts))
                    continue
                topic, raw, headers = node.args["topic"], value, ()  # encoded by the sink
            batches.setdefault(topic, []).append(
                self._message(topic, task, encode_key(key), raw, headers, ts)
            )
        task.ctx.outputs.clear()
        for topic, msgs in batches.items():
            tx.append_batch(topic, msgs)
        for table, rows in tables.items():
            tx.sql(upsert(table, rows))
        return sum(len(m) for m in batches.values()) + sum(len(r) for r in tables.values())

    def _message(
        self,
        topic: str,
        task: Task,
        key: bytes | None,
        raw: bytes | None,
        headers: Headers,
        ts: int,
    ) -> Message:
        same = self._topic_partitions(topic) == self.partitions
        return Message(raw, key, headers, max(0, ts), task.partition if same else None)

    def _source_decode(self) -> Any:
        return next(n for n in self.flow.nodes if n.kind == "source").args["decode"]

    def done(self, ends: dict[Key, int]) -> bool:
        """Whether every task of this worker has read its topic up to ``ends``
        (the source's ends when the run began; the repartition topics' now)."""
        if not any(g == 0 for g, _p in self.tasks):
            return False
        now: dict[int, dict[int, int]] = {}  # a repartition topic's ends, read once per call
        for (g, p), task in self.tasks.items():
            if g == 0:
                end = ends.get((g, p), 0)
            else:
                if g not in now:
                    now[g] = self.db.log.end_offsets(self.topics[g])
                end = now[g][p]
            if task.offset < end:
                return False
        return True

    def heartbeat(self) -> None:
        """A heartbeat of the wall clock into this worker's source partitions
        (and the joined topic's)."""
        mine = sorted(p for g, p in self.tasks if g == 0)
        now = int(time.time() * 1000)
        if mine:
            heartbeat(self.db.log, self.flow.source_topic, now, partitions=mine)
        for table, segment in sorted({(table, segment) for _, table, segment in self.joins}):
            joined = sorted(p for g, p in self.tasks if g == segment)
            if joined:
                heartbeat(self.db.log, table, now, partitions=joined)

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()


LATE_HEADERS: Headers = (("unbundled.late", b"1"),)


def run(
    db: Any,
    flow: Flow,
    *,
    instance_id: str | None = None,
    until_end: bool = False,
    epoch_records: int = 10_000,
    epoch_event_ms: int | None = None,
    epoch_interval_s: float = 1.0,
    poll_records: int = 5000,
    lease_ms: int = 10_000,
    stop: threading.Event | None = None,
    on_epoch: Callable[[RunReport, dict[Key, Task]], None] | None = None,
    heartbeat_s: float | None = None,
) -> RunReport:
    """Run ``flow`` on database ``db`` (``unbundled.open(...)``) as one worker
    of its consumer group, until ``stop`` is set -- or, with ``until_end``,
    until this worker's partitions are read up to where they ended when it
    started. Each epoch commits outputs, state and input offsets in one
    transaction (see the module docstring). ``instance_id`` makes the worker
    a static member: its restart takes its partitions back at once.

    ``heartbeat_s``: every that many seconds, append a heartbeat of the wall
    clock's time to this worker's source partitions (and the joined topic's),
    so windows of idle partitions close. The heartbeat is a record in the
    log, so a replay sees it where it was: the output stays a function of
    the log. Use it only where event time follows the wall clock.

    Raises ``OperatorFailed`` when a function of the flow raises (nothing of
    that epoch commits), ``InstanceFenced`` when another worker took this
    one's instance id, and the backend's errors. A fenced epoch commit (a
    partition moved meanwhile) is no error: its work is dropped and redone
    from the last epoch by whoever owns the partition.
    """
    _check_run(epoch_records, epoch_event_ms, epoch_interval_s, poll_records)
    if heartbeat_s is not None and (
        not isinstance(heartbeat_s, int | float)
        or isinstance(heartbeat_s, bool)
        or not 0.01 <= heartbeat_s <= limits.wait_s_max
    ):
        raise UsageError(
            f"heartbeat_s must be 0.01..{limits.wait_s_max} or None, got {heartbeat_s!r}",
            value=heartbeat_s,
        )
    flow.source_topic  # noqa: B018 (UsageError for a flow without a source)
    runner = Runner(
        db,
        flow,
        instance_id=instance_id,
        epoch_records=epoch_records,
        epoch_event_ms=epoch_event_ms,
        epoch_interval_s=epoch_interval_s,
        poll_records=poll_records,
        lease_ms=lease_ms,
    )
    runner.on_epoch = on_epoch
    started = time.monotonic()
    source_ends = db.log.end_offsets(flow.source_topic) if until_end else {}
    ends = {(0, p): end for p, end in source_ends.items()}
    try:
        beat = time.monotonic()
        while stop is None or not stop.is_set():
            if heartbeat_s is not None and time.monotonic() - beat >= heartbeat_s:
                runner.heartbeat()
                beat = time.monotonic()
            runner.step(0.2 if heartbeat_s is None else min(0.2, heartbeat_s))
            if until_end and runner.done(ends):
                if runner.has_work():
                    runner.commit()
                if runner.done(ends):  # nothing new downstream still to read
                    break
        else:  # stopped: what is done so far is kept, not redone by the next run
            if runner.has_work():
                runner.commit()
    finally:
        runner.report.seconds = time.monotonic() - started
        runner.close()
    return runner.report


def _check_run(
    epoch_records: int, epoch_event_ms: int | None, epoch_interval_s: float, poll_records: int
) -> None:
    # bool is an int to Python; True is no count of records (as in Flow's checks).
    settings = {
        "epoch_records": (epoch_records, 1, limits.stream_epoch_records_max),
        "epoch_event_ms": (epoch_event_ms, 1, limits.stream_window_ms_max),
        "poll_records": (poll_records, 1, limits.poll_records_max),
    }
    for name, (value, low, high) in settings.items():
        if name == "epoch_event_ms" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise UsageError(f"{name} must be an int in {low}..{high}, got {value!r}", value=value)
    if (
        not isinstance(epoch_interval_s, int | float)
        or isinstance(epoch_interval_s, bool)
        or not 0.001 <= epoch_interval_s <= limits.wait_s_max
    ):
        raise UsageError(
            f"epoch_interval_s must be 0.001..{limits.wait_s_max}, got {epoch_interval_s!r}",
            value=epoch_interval_s,
        )
    if not isinstance(poll_records, int) or not 1 <= poll_records <= limits.poll_records_max:
        raise UsageError(f"poll_records must be 1..{limits.poll_records_max}, got {poll_records!r}")
