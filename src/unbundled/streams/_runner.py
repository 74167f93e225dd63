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
from ..errors import CorruptionError, TopicExists, UsageError
from ..log._protocol import Headers, Message, Record, TopicPartition
from ._flow import Flow, Node
from ._ops import LATE_SINK
from ._task import DEAD_SINK, Manifest, Task

_json = msgspec.json.Encoder()


class RunReport(msgspec.Struct):
    """What one :func:`run` did."""

    records_in: int = 0
    records_out: int = 0
    epochs: int = 0
    late: int = 0
    dead: int = 0
    seconds: float = 0.0
    partitions: list[int] = msgspec.field(default_factory=list)


def group_name(flow: Flow) -> str:
    return f"streams.{flow.name}"


def manifest_key(flow_name: str, partition: int) -> str:
    return f"streams/{flow_name}/{partition}/m"


def bucket_key(flow_name: str, partition: int, node_id: int, bucket: int) -> str:
    return f"streams/{flow_name}/{partition}/{node_id}/{bucket}"


def late_topic(flow: Flow) -> str:
    return f"{flow.name}.late"


def dead_topic(flow: Flow) -> str:
    return f"{flow.name}.dead"


def encode_key(key: Any) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


def _encode(codec: Any, value: Any) -> bytes | None:
    if codec == "json":
        return _json.encode(value)
    if codec == "raw":
        if value is not None and not isinstance(value, bytes):
            raise UsageError(f'encode="raw" needs bytes values, got {value!r}', value=value)
        return value
    out = codec(value)
    if not isinstance(out, bytes):
        raise UsageError(f"an encode function must return bytes, got {out!r}", value=out)
    return out


def restore(db: Any, flow: Flow, partition: int) -> Task | None:
    """The task of ``partition`` as its last epoch stored it (None: no state yet)."""
    task = Task(flow, partition)
    got = db.kv.read(manifest_key(flow.name, partition))
    if got is None:
        return None
    where = f"{flow.name}/{partition}"
    manifest = Task.read_manifest(got.value, where)
    blobs = {}
    for node_id, bucket in manifest.stored:
        blob = db.kv.read(bucket_key(flow.name, partition, node_id, bucket))
        if blob is None:
            raise CorruptionError(
                f"stream state {where}: bucket {node_id}/{bucket} named by the manifest is missing"
            )
        blobs[(node_id, bucket)] = blob.value
    task.load(manifest, blobs, where)
    return task


def read_manifest(db: Any, flow_name: str, partition: int) -> Manifest | None:
    got = db.kv.read(manifest_key(flow_name, partition))
    return None if got is None else Task.read_manifest(got.value, f"{flow_name}/{partition}")


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
        self.topic = flow.source_topic
        self.epoch_records = epoch_records
        self.epoch_event_ms = epoch_event_ms
        self.epoch_interval_s = epoch_interval_s
        self.poll_records = poll_records
        info = db.log.describe_topic(self.topic)
        self.partitions = len(info.partitions)
        self.consumer = db.log.consumer(
            self.topic,
            group=group_name(flow),
            auto_commit=False,
            instance_id=instance_id,
            lease_ms=lease_ms,
        )
        self.tasks: dict[int, Task] = {}
        self.sinks: dict[int, Node] = {n.id: n for n in flow.sinks()}
        self.out_parts: dict[str, int] = {}
        self.report = RunReport()
        self.pending = 0  # input records since the last commit
        self.last_commit = time.monotonic()
        self.wm_at_commit: dict[int, int] = {}
        self.on_epoch: Callable[[RunReport, dict[int, Task]], None] | None = None

    # --- topics ----------------------------------------------------------------

    def _topic_partitions(self, topic: str) -> int:
        if topic not in self.out_parts:
            with contextlib.suppress(TopicExists):
                self.db.log.create_topic(topic, self.partitions)
            self.out_parts[topic] = len(self.db.log.describe_topic(topic).partitions)
        return self.out_parts[topic]

    # --- the loop --------------------------------------------------------------

    def sync_assignment(self, polled: dict[int, list[Record]]) -> None:
        """Tasks for exactly the assigned partitions. When the assignment
        changed, every task is restored from its last epoch (uncommitted work
        is dropped, to be redone) and the consumer sought to where it
        stopped; records just polled from elsewhere are dropped from ``polled``."""
        assigned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        if assigned == set(self.tasks):
            return
        self.tasks = {}
        for p in sorted(assigned):
            tp = TopicPartition(self.topic, p)
            recs = polled.get(p, [])
            task = restore(self.db, self.flow, p)
            if task is None:  # no epoch yet: from where the group's offset says
                task = Task(self.flow, p)
                task.offset = recs[0].offset if recs else self.consumer.position(tp)
            if recs and recs[0].offset != task.offset:
                polled.pop(p)
                self.consumer.seek(tp, task.offset)
            elif not recs:
                self.consumer.seek(tp, task.offset)
            self.tasks[p] = task
            self.wm_at_commit[p] = task.wm
        for p in [p for p in polled if p not in assigned]:
            polled.pop(p)
        self.pending = 0
        self.report.partitions = sorted(assigned)

    def step(self, timeout_s: float) -> int:
        """One poll and what it brings; commits an epoch when one is due.
        Returns the records processed."""
        records: list[Record] = self.consumer.poll(timeout_s, records_max=self.poll_records)
        by_part: dict[int, list[Record]] = {}
        for rec in records:
            by_part.setdefault(rec.partition, []).append(rec)
        self.sync_assignment(by_part)
        taken = 0
        for p, recs in by_part.items():
            task = self.tasks.get(p)
            if task is not None:
                taken += task.feed(recs)
        self.pending += taken
        if self.epoch_due(idle=not records):
            self.commit()
        return taken

    def epoch_due(self, *, idle: bool) -> bool:
        if not self.pending and not any(t.ctx.dirty or t.ctx.outputs for t in self.tasks.values()):
            return False
        if idle or self.pending >= self.epoch_records:
            return True
        if time.monotonic() - self.last_commit >= self.epoch_interval_s:
            return True
        if self.epoch_event_ms is not None:
            for p, task in self.tasks.items():
                if task.wm - self.wm_at_commit.get(p, task.wm) >= self.epoch_event_ms:
                    return True
        return False

    def commit(self) -> None:
        """One epoch: every task's outputs, state and offsets in one transaction."""
        tx = self.db.transaction()
        callbacks: list[tuple[Any, Any, Any, int]] = []
        offsets: dict[TopicPartition, int] = {}
        written = 0
        for p, task in self.tasks.items():
            written += self._outputs(tx, task, callbacks)
            manifest, changed = task.dump()
            for (node_id, bucket), blob in changed.items():
                key = bucket_key(self.flow.name, p, node_id, bucket)
                if blob is None:
                    tx.kv.delete(key)
                else:
                    tx.kv.write(key, blob)
            tx.kv.write(manifest_key(self.flow.name, p), manifest)
            offsets[TopicPartition(self.topic, p)] = task.offset
        tx.commit_offsets(self.consumer, offsets=offsets)
        tx.commit()
        for fn, key, value, ts in callbacks:
            fn(key, value, ts)
        self.report.epochs += 1
        self.report.records_in += self.pending
        self.report.records_out += written
        self.report.late = sum(t.ctx.late_count for t in self.tasks.values())
        self.report.dead = sum(t.dead for t in self.tasks.values())
        self.pending = 0
        self.last_commit = time.monotonic()
        self.wm_at_commit = {p: t.wm for p, t in self.tasks.items()}
        if self.on_epoch is not None:
            self.on_epoch(self.report, self.tasks)

    def _outputs(self, tx: Any, task: Task, callbacks: list[Any]) -> int:
        batches: dict[str, list[Message]] = {}
        tables: dict[str, list[tuple[Any, Any, int]]] = {}
        for sink_id, key, value, ts in task.ctx.outputs:
            if sink_id == LATE_SINK:
                topic, codec, headers = late_topic(self.flow), self._late_codec(), LATE_HEADERS
            elif sink_id == DEAD_SINK:
                raw, headers = value
                msg = self._message(dead_topic(self.flow), task, key, raw, headers, ts)
                batches.setdefault(dead_topic(self.flow), []).append(msg)
                continue
            else:
                node = self.sinks[sink_id]
                kind = node.args["to"]
                if kind == "callback":
                    callbacks.append((node.args["fn"], key, value, ts))
                    continue
                if kind == "table":
                    tables.setdefault(node.args["table"], []).append((key, value, ts))
                    continue
                topic, codec, headers = node.args["topic"], node.args["encode"], ()
            raw = _encode(codec, value)
            batches.setdefault(topic, []).append(
                self._message(topic, task, encode_key(key), raw, headers, ts)
            )
        task.ctx.outputs.clear()
        for topic, msgs in batches.items():
            tx.append_batch(topic, msgs)
        for table, rows in tables.items():
            from ._table import upsert

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

    def _late_codec(self) -> Any:
        src = next(n for n in self.flow.nodes if n.kind == "source")
        return "raw" if src.args["decode"] == "raw" else "json"

    def close(self) -> None:
        self.consumer.close()


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
    on_epoch: Callable[[RunReport, dict[int, Task]], None] | None = None,
) -> RunReport:
    """Run ``flow`` on database ``db`` (``unbundled.open(...)``) as one worker
    of its consumer group, until ``stop`` is set -- or, with ``until_end``,
    until this worker's partitions are read up to where they ended when it
    started. Each epoch commits outputs, state and input offsets in one
    transaction (see the module docstring). ``instance_id`` makes the worker
    a static member: its restart takes its partitions back at once.

    Raises ``OperatorFailed`` when a function of the flow raises (nothing of
    that epoch commits), ``StaleGeneration``/``InstanceFenced`` when another
    worker took this one's place, and the backend's errors.
    """
    _check_run(epoch_records, epoch_event_ms, epoch_interval_s, poll_records)
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
    ends = db.log.end_offsets(runner.topic) if until_end else {}
    try:
        while stop is None or not stop.is_set():
            runner.step(0.2)
            if (
                until_end
                and runner.tasks
                and all(t.offset >= ends.get(p, 0) for p, t in runner.tasks.items())
            ):
                if runner.pending or any(
                    t.ctx.outputs or t.ctx.dirty for t in runner.tasks.values()
                ):
                    runner.commit()
                break
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


def heartbeat(log: Any, topic: str, now_ms: int | None = None) -> None:
    """Write a heartbeat record of event time ``now_ms`` (default: the
    wall clock) into every partition of ``topic``: each partition's
    watermark moves as if an event of that time had arrived, so windows of
    idle partitions close. Being in the log, it replays identically."""
    from ._task import TIME_HEADER, _check_ts

    ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        _check_ts(ms)
    except ValueError as exc:
        raise UsageError(str(exc), value=now_ms) from None
    n = len(log.describe_topic(topic).partitions)
    header: Headers = ((TIME_HEADER, str(ms).encode()),)
    log.append_batch(topic, [Message(b"", None, header, ms, p) for p in range(n)])
