"""One task: the whole flow over one source partition, sans I/O.

The task reads its partition's records in offset order. A record's event
time moves the partition's watermark to (newest event time seen) -
``out_of_orderness_ms``; a heartbeat record (header ``unbundled.time``)
moves it as an event of that time would, without being an event. Nothing
else moves it -- no clock -- so the task's outputs, state and late events
are a function of the records alone.

Its state is stored as a manifest (offset, watermark, counters, which
buckets hold state) and one entry per non-empty (operator, bucket); an
epoch rewrites the buckets it touched.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import msgspec

from .. import limits
from ..errors import CorruptionError, LimitExceeded
from ..log._protocol import Headers, Record
from ._build import build
from ._flow import Flow
from ._join import JoinOp, WindowJoinOp
from ._merge import SRC_HEADER, MergeOp, RepartitionOp
from ._ops import (
    BUCKET_SPLIT_BYTES,
    BUCKETS,
    BUCKETS_MAX,
    NO_TIME,
    TIME_HEADER,
    Ctx,
    OperatorFailed,
    StatefulOp,
)

DEAD_SINK = -2  # records that cannot be decoded or timed: the topic <flow name>.dead
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_json = msgspec.json.Decoder()


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A task's stored progress: everything but the operators' buckets."""

    flow: str  # the flow's fingerprint: a changed flow cannot resume old state
    offset: int  # the next source offset to read
    max_ts: int
    wm: int
    records: int
    late: int
    dead: int
    stored: list[tuple[int, int]]  # (operator node id, bucket) with state
    table_offset: int = 0  # the next offset of the first join's topic's partition
    table_times: tuple[int, int, int] = (NO_TIME, NO_TIME, NO_TIME)  # max, wm, out wm
    # The other joins of the task, by node id: (next offset, max, wm, out wm).
    joins: dict[int, tuple[int, int, int, int]] = msgspec.field(default_factory=dict)
    keys: int = 0  # keys with state, over every stateful operator (for status)
    timers: int = 0  # timers pending (derived from the state; for status)
    # Operators (node id) whose state grew past BUCKETS buckets, and their count.
    layout: dict[int, int] = msgspec.field(default_factory=dict)


def fingerprint(flow: Flow) -> str:
    """What identifies a flow's state layout: its operators and their settings."""
    return hashlib.sha256("\n".join(flow.describe()).encode()).hexdigest()[:16]


def record_key(key: bytes | None) -> Any:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return key


class Task:
    """The flow's operators for source partition ``partition``."""

    def __init__(
        self,
        flow: Flow,
        partition: int,
        segment: int = 0,
        sources: int = 1,
        *,
        encode_sinks: bool = True,
    ) -> None:
        self.flow = flow
        self.partition = partition
        self.segment = segment
        self.ctx = Ctx(encode_sinks=encode_sinks)
        self.source, self.stateful = build(flow, self.ctx, segment, sources)
        self.merge = self.source if isinstance(self.source, MergeOp) else None
        self.by_id: dict[int, StatefulOp] = {op.node.id: op for op in self.stateful}
        src = next(n for n in flow.nodes if n.kind == "source")
        self.decode = src.args["decode"]
        self.ts_fn = src.args["ts"]
        self.ooo = flow.out_of_orderness_ms
        self.fingerprint = fingerprint(flow)
        self.offset = 0
        self.max_ts = NO_TIME
        self.wm = NO_TIME
        self.records = 0
        self.dead = 0
        self.stored: set[tuple[int, int]] = set()
        self._keys: dict[bytes, Any] = {}  # record key -> its str (decoding is the hot path)
        # The joins of this task's segment, by node id, and where each reads
        # its topic's partition next.
        self.joins: dict[int, JoinOp | WindowJoinOp] = {
            op.node.id: op for op in self.stateful if isinstance(op, JoinOp | WindowJoinOp)
        }
        self.table_offsets = dict.fromkeys(self.joins, 0)

    # --- processing ------------------------------------------------------------

    def feed(self, records: Iterable[Record]) -> int:
        """Process ``records`` of this partition (those before the task's
        offset are skipped: already in the state). Returns how many it took."""
        if self.merge is not None:
            return self._feed_merge(self.merge, records)
        taken = 0
        decode = _decoder(self.decode)
        ts_fn = self.ts_fn
        keys = self._keys
        kids = self.source.children
        push = kids[0].push if len(kids) == 1 else self.source.push
        ooo = self.ooo
        offset = self.offset  # kept in locals in the loop, written back as it goes on
        for rec in records:
            at = rec.offset
            if at < offset:
                continue
            offset = self.offset = at + 1
            taken += 1
            time = None
            try:
                if rec.headers:
                    time = _heartbeat(rec.headers)
                if time is None:
                    raw = rec.value
                    value = None if raw is None else decode(raw)
                    ts = rec.timestamp if ts_fn is None else _check_ts(ts_fn(value))
            except Exception as exc:  # a poison record: kept, with why, never dropped
                self._dead(rec, f"{type(exc).__name__}: {exc}")
                continue
            # Outside the try: an operator failing while a heartbeat fires its
            # timers is OperatorFailed (the epoch fails), not a dead heartbeat.
            if time is not None:
                self.observe(time)
                continue
            key = rec.key
            if key is not None:
                got = keys.get(key)
                if got is None:
                    if len(keys) >= 100_000:
                        keys.clear()
                    got = keys[key] = record_key(key)
                key = got
            push(key, value, ts)
            if ts > self.max_ts:  # observe(ts), inlined: the hot path
                self.max_ts = ts
                if ts - ooo > self.wm:
                    self.wm = ts - ooo
                    self.source.advance(ts - ooo)
        self.records += taken
        return taken

    def _feed_merge(self, merge: MergeOp, records: Iterable[Record]) -> int:
        """A downstream segment: records of a repartition topic, merged."""
        taken = 0
        for rec in records:
            if rec.offset < self.offset:
                continue
            self.offset = rec.offset + 1
            taken += 1
            src, time = None, None
            for name, raw in rec.headers:
                if name == SRC_HEADER:
                    src = int(raw)
                elif name == TIME_HEADER:
                    time = int(raw)
            if src is None or not 0 <= src < merge.sources:
                raise CorruptionError(
                    f"repartition record {rec.topic}/{rec.partition}/{rec.offset} "
                    f"names no upstream partition (of {merge.sources})"
                )
            if time is not None:
                merge.arrive(src, None, None, time, True)
                continue
            try:
                key, value = _dec.decode(rec.value or b"")
            except (msgspec.DecodeError, ValueError, TypeError) as exc:
                raise CorruptionError(
                    f"repartition record {rec.topic}/{rec.partition}/{rec.offset}: {exc}"
                ) from exc
            merge.arrive(src, key, value, rec.timestamp, False)
        merge.release()
        self.records += taken
        self.wm = merge.wm
        return taken

    def feed_table(self, records: Iterable[Record], node_id: int) -> int:
        """Process records of the topic join ``node_id`` reads, of this task's partition."""
        join = self.joins.get(node_id)
        if join is None:
            return 0
        decode = _decoder(join.node.args["decode"])
        offsets, at = self.table_offsets, join.node.id
        taken = 0
        for rec in records:
            if rec.offset < offsets[at]:
                continue
            offsets[at] = rec.offset + 1
            taken += 1
            time = None
            try:
                if rec.headers:
                    time = _heartbeat(rec.headers)
                if time is None:
                    row = None if rec.value is None else decode(rec.value)
            except Exception as exc:
                self._dead(rec, f"{type(exc).__name__}: {exc}")
                continue
            if time is not None:  # outside the try, as in feed()
                join.table_time(time)
                continue
            join.table(record_key(rec.key), row, rec.timestamp)
        return taken

    def _dead(self, rec: Record, why: str) -> None:
        self.dead += 1
        headers: Headers = (
            *rec.headers,
            ("unbundled.error", why.encode()[:1000]),
            ("unbundled.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
        )
        self.ctx.outputs.append((DEAD_SINK, rec.key, (rec.value, headers), rec.timestamp))

    def observe(self, ts: int) -> None:
        """Event time ``ts`` was seen: the watermark follows it."""
        if ts > self.max_ts:
            self.max_ts = ts
            wm = ts - self.ooo
            if wm > self.wm:
                self.wm = wm
                self.source.advance(wm)

    # --- state -----------------------------------------------------------------

    def _dump_buckets(self) -> dict[tuple[int, int], bytes | None] | None:
        """The touched buckets encoded, or None after an operator grew (encode again)."""
        changed: dict[tuple[int, int], bytes | None] = {}
        for node_id, bucket in sorted(self.ctx.dirty):
            op = self.by_id[node_id]
            entries = op.dump(bucket) if bucket < op.nbuckets else []  # gone when it shrank
            if not entries:
                if bucket < op.nbuckets:
                    op.sizes[bucket] = 0
                if (node_id, bucket) in self.stored:  # a bucket never stored needs no delete
                    changed[(node_id, bucket)] = None
                continue
            try:
                blob = _enc.encode(entries)
            except (TypeError, ValueError, OverflowError) as exc:
                raise OperatorFailed(
                    f"{op.node.label}: its state cannot be stored ({exc}); "
                    "state and accumulators must be msgpack-encodable",
                    node=op.node.label,
                ) from exc
            if not op.plain_state and not survives(entries, _dec.decode(blob)):
                raise OperatorFailed(
                    f"{op.node.label}: its state would come back changed after a restart "
                    "(a tuple or set comes back a list, a Struct a dict): keep state and "
                    "accumulators to None, bool, int, float, str, bytes, lists and dicts",
                    node=op.node.label,
                )
            if len(blob) > BUCKET_SPLIT_BYTES and op.nbuckets < BUCKETS_MAX and len(entries) > 1:
                op.resize(op.nbuckets * 2)
                return None
            if len(blob) > limits.kv_value_bytes_max:
                raise LimitExceeded(
                    f"{op.node.label}: one state bucket holds {len(blob)} bytes, more than "
                    f"{limits.kv_value_bytes_max}; the keys' state is too large",
                    node=op.node.label,
                    bytes=len(blob),
                )
            changed[(node_id, bucket)] = blob
            op.sizes[bucket] = len(blob)
        return changed

    def dump(self) -> tuple[bytes, dict[tuple[int, int], bytes | None]]:
        """The manifest and the touched buckets (``None``: now empty), encoded
        and checked against the KV store's bounds; clears the dirty set. An
        operator with a bucket larger than ``BUCKET_SPLIT_BYTES`` gets twice
        the buckets first, and one whose state would fit in half of them with
        each under a quarter of that gets half (either way, all of them are
        stored in this epoch)."""
        grew = False
        while True:
            changed = self._dump_buckets()
            if changed is None:
                grew = True
                continue
            small = [op for op in self.stateful if op.shrinkable(BUCKET_SPLIT_BYTES // 4)]
            if grew or not small:
                break
            for op in small:  # merged pairs stay below the split: no growth follows
                op.resize(op.nbuckets // 2)
        for where, blob in changed.items():
            if blob is None:
                self.stored.discard(where)
            else:
                self.stored.add(where)
        self.ctx.dirty.clear()
        # The first join where a flow of one join has always kept it; the others beside.
        first, *others = self.joins.values() if self.joins else (None,)
        manifest = Manifest(
            self.fingerprint,
            self.offset,
            self.max_ts,
            self.wm,
            self.records,
            self.ctx.late_count,
            self.dead,
            sorted(self.stored),
            table_offset=self.table_offsets[first.node.id] if first is not None else 0,
            table_times=first.times() if first is not None else (NO_TIME, NO_TIME, NO_TIME),
            joins={op.node.id: (self.table_offsets[op.node.id], *op.times()) for op in others},
            keys=self.state_size(),
            timers=self.timer_count(),
            layout={op.node.id: op.nbuckets for op in self.stateful if op.nbuckets != BUCKETS},
        )
        return _enc.encode(manifest), changed

    @staticmethod
    def read_manifest(blob: bytes, where: str) -> Manifest:
        try:
            return msgspec.msgpack.decode(blob, type=Manifest)
        except msgspec.DecodeError as exc:
            raise CorruptionError(f"stream state manifest {where} cannot be read: {exc}") from exc

    def load(self, manifest: Manifest, buckets: dict[tuple[int, int], bytes], where: str) -> None:
        """Restore the state :meth:`dump` stored (into a fresh task)."""
        if manifest.flow != self.fingerprint:
            from ..errors import UsageError

            raise UsageError(
                f"the stored state of flow {self.flow.name!r} was written by a different "
                "flow (operators or settings changed); reset it (`unbundled streams reset`)",
                flow=self.flow.name,
            )
        for node_id, count in manifest.layout.items():
            op = self.by_id.get(node_id)
            try:
                if op is None:
                    raise ValueError("no such operator")
                op.resize(count, mark=False)  # stored so: nothing to write again
            except ValueError as exc:
                raise CorruptionError(
                    f"stream state {where}: the manifest gives operator #{node_id} "
                    f"{count} buckets: {exc}"
                ) from exc
        for (node_id, bucket), blob in buckets.items():
            op = self.by_id.get(node_id)
            if op is None:
                raise CorruptionError(f"stream state {where}: no operator #{node_id}")
            if not 0 <= bucket < op.nbuckets:
                raise CorruptionError(
                    f"stream state {where}: operator #{node_id} has no bucket {bucket}"
                )
            op.sizes[bucket] = len(blob)
            try:
                op.load(bucket, _dec.decode(blob))
            except (msgspec.DecodeError, TypeError, ValueError) as exc:
                raise CorruptionError(
                    f"stream state {where} operator #{node_id} bucket {bucket}: {exc}"
                ) from exc
        self.offset = manifest.offset
        self.max_ts = manifest.max_ts
        self.wm = manifest.wm
        self.records = manifest.records
        self.ctx.late_count = manifest.late
        self.dead = manifest.dead
        self.stored = set(map(tuple, manifest.stored))  # type: ignore[arg-type]
        first, *others = self.joins.values() if self.joins else (None,)
        if first is not None:
            self.table_offsets[first.node.id] = manifest.table_offset
            first.set_times(*manifest.table_times)
        for op in others:
            got = manifest.joins.get(op.node.id)
            if got is None:
                raise CorruptionError(f"stream state {where}: no progress of join #{op.node.id}")
            self.table_offsets[op.node.id] = got[0]
            op.set_times(*got[1:])
        for op in self.stateful:
            op.restored(self.wm)
        for op in _all_ops(self.source):
            if isinstance(op, RepartitionOp):
                op.wm = self.wm

    def state_size(self) -> int:
        """Keys with state, over every stateful operator."""
        return sum(op.size() for op in self.stateful)

    def timer_count(self) -> int:
        return sum(len(getattr(op, "timers", ())) for op in self.stateful)


def survives(a: Any, b: Any) -> bool:
    """Whether ``b`` (``a`` through msgpack and back) is ``a``, types included:
    what a restart loads must be what the uninterrupted run holds."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(survives(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(survives(v, b[k]) for k, v in a.items())
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _all_ops(root: Any) -> list[Any]:
    out, todo = [], [root]
    while todo:
        op = todo.pop()
        out.append(op)
        todo.extend((*op.children, *op.late))
    return out


def _decoder(decode: Any) -> Any:
    if decode == "json":
        return _json.decode
    if decode == "raw":
        return bytes
    return decode


def _heartbeat(headers: Headers) -> int | None:
    for name, value in headers:
        if name == TIME_HEADER:
            return _check_ts(int(value))
    return None


def _check_ts(ts: object) -> int:
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= limits.timestamp_ms_max:
        raise ValueError(
            f"event time must be an int of ms in 0..{limits.timestamp_ms_max}, got {ts!r}"
        )
    return ts
