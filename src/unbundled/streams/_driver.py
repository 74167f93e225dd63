"""A test driver (Kafka Streams' ``TopologyTestDriver``): run a flow over
records you hand it, in memory -- no files, no servers -- and look at its
outputs, late events and state.

It runs the very tasks :func:`unbundled.streams.run` runs; ``restart()``
stores every task's state the way an epoch commit does and builds new tasks
from it, so a test can check that a crash between any two records changes
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

from ..errors import UsageError
from ..log._protocol import Record
from ._flow import Flow, Node
from ._merge import repartition_messages
from ._ops import LATE_SINK, TIME_HEADER, Ctx, Op, row_encoder, sink_encoder
from ._task import DEAD_SINK, Task, _check_ts


class Output(NamedTuple):
    """One item a sink received: its key, value and event time."""

    key: Any
    value: Any
    ts: int


class TestDriver:
    """Run ``flow`` over records given by :meth:`send` and :meth:`advance`.

    ``partitions``: how many source partitions (tasks) to simulate; each
    record names its partition (default 0).
    """

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, flow: Flow, *, partitions: int = 1) -> None:
        if (
            not isinstance(partitions, int)
            or isinstance(partitions, bool)
            or not 1 <= partitions <= 1024
        ):
            raise UsageError(f"partitions must be 1..1024, got {partitions!r}", value=partitions)
        flow.source_topic  # noqa: B018 (raises UsageError for a flow without a source)
        self.flow = flow
        self.topic = flow.source_topic
        # Topic outputs kept as values (output() shows them), checked as the runner encodes.
        self.tasks = [Task(flow, p, encode_sinks=False) for p in range(partitions)]
        # Downstream segments (after a repartitioning key_by): their tasks, by segment.
        self.down = {
            g: [Task(flow, q, g, partitions, encode_sinks=False) for q in range(partitions)]
            for g in flow.segments()[1:]
        }
        self._down_next = {g: [0] * partitions for g in self.down}
        self._next = [0] * partitions
        self._table_next: dict[int, list[int]] = {}  # by join node: next offsets
        self._sinks = {n.id: n for n in flow.sinks()}
        # What the runner's sinks refuse as they encode, refused here too.
        encoders = {"topic": sink_encoder, "table": row_encoder}
        self._encoders = {
            n.id: encoders[n.args["to"]](Op(n, Ctx()))
            for n in flow.sinks()
            if n.args["to"] in encoders
        }
        self._out: dict[str, list[Output]] = {}
        self.callbacks: list[Output] = []
        self.late: list[Output] = []
        self.dead: list[Output] = []
        self.tables: dict[str, dict[Any, Any]] = {}

    # --- input -----------------------------------------------------------------

    def send(
        self,
        value: Any,
        *,
        key: str | bytes | None = None,
        ts: int = 0,
        partition: int = 0,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        """One record: ``value`` is encoded as the source decodes it (JSON for
        ``decode="json"``; bytes otherwise), ``ts`` is its timestamp (ms)."""
        task = self._task(partition)
        try:
            _check_ts(ts)
        except ValueError as exc:
            raise UsageError(str(exc), value=ts) from None
        decode = task.decode
        raw = msgspec.json.encode(value) if decode == "json" else value
        if raw is not None and not isinstance(raw, bytes):
            raise UsageError(f"a record of a non-JSON source is bytes, got {raw!r}", value=raw)
        bkey = key.encode() if isinstance(key, str) else key
        self._feed(task, raw, bkey, ts, headers)

    def send_many(self, items: Iterable[tuple[Any, Any, int]], *, partition: int = 0) -> None:
        """``(key, value, ts)`` triples, in order."""
        for key, value, ts in items:
            self.send(value, key=key, ts=ts, partition=partition)

    def advance(self, ts: int, *, partition: int | None = None) -> None:
        """A heartbeat of event time ``ts`` on ``partition`` (all if None), as
        :func:`unbundled.streams.heartbeat` writes into the log."""
        try:
            _check_ts(ts)
        except ValueError as exc:
            raise UsageError(str(exc), value=ts) from None
        targets = self.tasks if partition is None else [self._task(partition)]
        for task in targets:
            self._feed(task, b"", None, ts, ((TIME_HEADER, str(ts).encode()),))

    def send_table(
        self,
        row: Any,
        *,
        key: str | bytes,
        ts: int = 0,
        partition: int = 0,
        topic: str | None = None,
    ) -> None:
        """One record of a joined topic (``row=None`` deletes the key's row):
        of ``topic``, which a flow with several joins must name."""
        self._task(partition)  # the partition checked
        joins = self._joins(topic)
        try:
            _check_ts(ts)
        except ValueError as exc:
            raise UsageError(str(exc), value=ts) from None
        bkey = key.encode() if isinstance(key, str) else key
        for node in joins:
            decode = node.args["decode"]
            raw = None if row is None else (msgspec.json.encode(row) if decode == "json" else row)
            self._feed_table(node, partition, raw, bkey, ts, ())

    def advance_table(
        self, ts: int, *, partition: int | None = None, topic: str | None = None
    ) -> None:
        """A heartbeat of event time ``ts`` on a joined topic (``topic``;
        None: every joined topic)."""
        parts = range(len(self.tasks)) if partition is None else [self._task(partition).partition]
        nodes = self.flow.joins if topic is None else self._joins(topic)
        for node in nodes:
            for p in parts:
                self._feed_table(node, p, b"", None, ts, ((TIME_HEADER, str(ts).encode()),))

    def _joins(self, topic: str | None) -> list[Node]:
        joins = self.flow.joins
        if not joins:
            raise UsageError("send_table needs a flow with join_table or join_window")
        if topic is None:
            if len({n.args["topic"] for n in joins}) > 1:
                raise UsageError("the flow joins several topics: name one (topic=...)")
            return joins
        named = [n for n in joins if n.args["topic"] == topic]
        if not named:
            raise UsageError(f"the flow joins no topic {topic!r}", value=topic)
        return named

    def _feed_table(
        self, node: Node, p: int, raw: bytes | None, key: bytes | None, ts: int, headers: Any
    ) -> None:
        """A record of join ``node``'s topic, to the task of its segment."""
        task = self.down[node.segment][p] if node.segment else self.tasks[p]
        nexts = self._table_next.setdefault(node.id, [0] * len(self.tasks))
        rec = Record(str(node.args["topic"]), p, nexts[p], key, raw, headers, ts)
        nexts[p] += 1
        task.feed_table([rec], node.id)
        self._collect(task)

    def _task(self, partition: int) -> Task:
        if (
            not isinstance(partition, int)
            or isinstance(partition, bool)  # True is 1 to Python, not a partition
            or not 0 <= partition < len(self.tasks)
        ):
            raise UsageError(f"partition must be 0..{len(self.tasks) - 1}, got {partition!r}")
        return self.tasks[partition]

    def _feed(
        self, task: Task, raw: bytes | None, key: bytes | None, ts: int, headers: Any
    ) -> None:
        p = task.partition
        rec = Record(self.topic, p, self._next[p], key, raw, tuple(headers), ts)
        self._next[p] += 1
        task.feed([rec])
        self._collect(task)

    def _collect(self, task: Task) -> None:
        outputs = list(task.ctx.outputs)
        task.ctx.outputs.clear()
        for sink_id, key, value, ts in outputs:
            if sink_id in self.down:
                self._repartition(task, sink_id, key, value, ts)
                continue
            out = Output(key, value, ts)
            if sink_id == LATE_SINK:
                self.late.append(out)
                continue
            if sink_id == DEAD_SINK:
                self.dead.append(out)
                continue
            node = self._sinks[sink_id]
            kind = node.args["to"]
            if kind == "topic":
                self._encoders[sink_id](value)
                self._out.setdefault(node.args["topic"], []).append(out)
            elif kind == "callback":
                node.args["fn"](key, value, ts)
                self.callbacks.append(out)
            else:
                self._encoders[sink_id](value)
                table = self.tables.setdefault(node.args["table"], {})
                table[table_key(key, value)] = value

    def _repartition(self, task: Task, segment: int, key: Any, value: Any, ts: int) -> None:
        n = len(self.tasks)
        label = self.flow.nodes[segment].label
        log_keyed = segment in self.flow.join_segments
        for msg in repartition_messages(label, task.partition, key, value, ts, n, log_keyed):
            q = msg.partition or 0
            offsets = self._down_next[segment]
            rec = Record(
                self.flow.segment_topic(segment),
                q,
                offsets[q],
                msg.key,
                msg.value,
                msg.headers,
                msg.timestamp or 0,
            )
            offsets[q] += 1
            down = self.down[segment][q]
            down.feed([rec])
            self._collect(down)

    # --- inspection ------------------------------------------------------------

    def output(self, topic: str) -> list[Output]:
        """What the flow sent to ``topic``, in order (values before encoding)."""
        return list(self._out.get(topic, []))

    def watermark(self, partition: int = 0) -> int:
        """The watermark of ``partition`` (event-time ms; very negative before any event)."""
        return self._task(partition).wm

    def state(self, partition: int = 0) -> dict[str, dict[Any, Any]]:
        """Each stateful operator's state per key, by operator label."""
        out = {}
        for op in self._task(partition).stateful:
            merged: dict[Any, Any] = {}
            for bucket in op.buckets:
                merged.update(bucket)
            out[op.node.label] = merged
        return out

    def restart(self) -> None:
        """Store every task's state as an epoch commit would, and go on with
        tasks rebuilt from it (what a crash and restart do)."""
        self.tasks = self._rebuilt(self.tasks)
        self.down = {g: self._rebuilt(tasks) for g, tasks in self.down.items()}

    def _rebuilt(self, tasks: list[Task]) -> list[Task]:
        fresh = []
        for task in tasks:
            manifest, changed = task.dump()
            stored = getattr(task, "_stored_blobs", {})
            for where, blob in changed.items():
                if blob is None:
                    stored.pop(where, None)
                else:
                    stored[where] = blob
            new = Task(self.flow, task.partition, task.segment, len(self.tasks), encode_sinks=False)
            new.load(Task.read_manifest(manifest, "driver"), dict(stored), "driver")
            new._stored_blobs = stored  # type: ignore[attr-defined]
            fresh.append(new)
        return fresh


def table_key(key: Any, value: Any) -> Any:
    """The row a table sink writes: one per key, or per key and window."""
    from ._windows import WindowResult

    if isinstance(value, WindowResult):
        return (key, value.start, value.end)
    return key
