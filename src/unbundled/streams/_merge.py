"""Repartitioning, deterministic: a key_by's items leave through a topic,
and the downstream task merges its upstream partitions in a fixed order.

Upstream, each task writes its re-keyed items into partition
``hash(key) % n`` of the repartition topic and, each time its watermark
passes another multiple of ``watermark_every_ms``, a watermark record into
every partition. So each downstream partition holds, per upstream
partition, a deterministic sequence -- but how those sequences interleave
depends on timing.

Downstream, every item carries a *stamp*: the last watermark its upstream
partition had sent before it. The merge takes items in (stamp, upstream
partition, order) order, and only once no upstream partition can still send
a smaller one (its last stamp is past). Its watermark is the minimum over
upstream partitions of the watermarks taken so far. The merged sequence --
and so everything downstream, lateness included -- is a function of the
upstream sequences alone (Flink's watermark alignment made exact).
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

import msgspec

from .. import limits
from ..errors import LimitExceeded
from ..log._core import partition_for_key
from ..log._protocol import Message
from ._flow import Node
from ._ops import (
    NO_TIME,
    TIME_HEADER,
    TIME_KEY,
    Ctx,
    Op,
    OperatorFailed,
    StatefulOp,
    check_key,
    encode_key,
)

_enc = msgspec.msgpack.Encoder()

FORWARD: Any = object()  # the key of a forwarded watermark in the task's outputs
#: The header naming the upstream partition of a repartition topic's record.
SRC_HEADER = "unbundled.src"


class RepartitionOp(Op):
    """``key_by(..., repartition=True)``: items go out to the topic, with the
    watermark forwarded every ``watermark_every_ms`` of event time."""

    def __init__(self, node: Node, ctx: Ctx, every_ms: int) -> None:
        super().__init__(node, ctx)
        self.every = every_ms
        self.wm = NO_TIME

    def push(self, key: Any, value: Any, ts: int) -> None:
        new = check_key(self.call(self.node.args["fn"], value), self.node.label)
        self.ctx.outputs.append((self.node.id, new, value, ts))

    def advance(self, wm: int) -> None:
        if self.wm == NO_TIME or wm // self.every > self.wm // self.every:
            self.ctx.outputs.append((self.node.id, FORWARD, None, wm))
        self.wm = wm


class MergeOp(StatefulOp):
    """The root of a downstream segment. State per upstream partition ``s``
    (the key): ``[last stamp, watermark taken, queue]``, queue items
    ``[stamp, is_watermark, key, value, ts]``."""

    def __init__(self, node: Node, ctx: Ctx, sources: int) -> None:
        super().__init__(node, ctx)
        self.sources = sources
        self.wm = NO_TIME

    def _src(self, s: int) -> list[Any]:
        bucket = self.touch(s)
        slot = bucket.get(s)
        if slot is None:
            slot = bucket[s] = [NO_TIME, NO_TIME, deque()]
        return slot

    def arrive(self, s: int, key: Any, value: Any, ts: int, watermark: bool) -> None:
        slot = self._src(s)
        if len(slot[2]) >= limits.stream_merge_items_max:
            held = min(range(self.sources), key=lambda t: (self._src(t)[0], t))
            raise LimitExceeded(
                f"{self.node.label}: {len(slot[2]):,} items from upstream partition {s} wait "
                f"for upstream partition {held}'s watermark; a partition that receives "
                "nothing holds everything back: heartbeat it (streams.heartbeat, or "
                "run(..., heartbeat_s=...))",
                partition=held,
            )
        slot[2].append([slot[0], watermark, key, value, ts])
        if watermark and ts > slot[0]:
            slot[0] = ts

    def release(self) -> None:
        slots = [self._src(s) for s in range(self.sources)]
        while True:
            best: tuple[int, int] | None = None
            for s, slot in enumerate(slots):
                if slot[2] and (best is None or (slot[2][0][0], s) < best):
                    best = (slot[2][0][0], s)
            if best is None:
                return
            for s, slot in enumerate(slots):
                if s != best[1] and not slot[2] and (slot[0], s) < best:
                    return  # partition s may still send an earlier item
            s = best[1]
            slot = slots[s]
            _stamp, watermark, key, value, ts = slot[2].popleft()
            if not watermark:
                self.emit(key, value, ts)
                continue
            slot[1] = max(slot[1], ts)
            wm = min(sl[1] for sl in slots)
            if wm > self.wm:
                self.wm = wm
                for child in self.wm_children:
                    child.advance(wm)

    def dump(self, bucket: int) -> list[list[Any]]:
        # The queues are deques while running, lists when stored.
        return [[s, [slot[0], slot[1], list(slot[2])]] for s, slot in self.buckets[bucket].items()]

    def load(self, bucket: int, entries: list[list[Any]]) -> None:
        self.buckets[bucket] = {s: [a, b, deque(q)] for s, (a, b, q) in entries}

    def restored(self, wm: int) -> None:
        self.wm = wm


def repartition_messages(
    label: str, src: int, key: Any, value: Any, ts: int, partitions: int, log_keyed: bool = False
) -> list[Message]:
    """The records a repartition output becomes: a forwarded watermark goes
    to every partition; an item to ``crc32(key) % partitions``, as
    msgpack ``[key, value]`` (the key keeps its type), stamped with ``src``.

    ``log_keyed`` (the segment joins a table): an item with a key goes where
    the log's keyed partitioning puts its text instead, as it put the
    table's records; other segments keep the hash their stored state was
    spread by."""
    srch = (SRC_HEADER, str(src).encode())
    if key is FORWARD:
        headers = ((TIME_HEADER, str(ts).encode()), srch)
        return [Message(b"", TIME_KEY, headers, max(0, ts), q) for q in range(partitions)]
    try:
        raw = _enc.encode([key, value])
    except (TypeError, ValueError, OverflowError) as exc:
        raise OperatorFailed(
            f"{label}: a value cannot go through the repartition topic ({exc}); "
            "values after a repartitioning key_by must be msgpack-encodable",
            node=label,
        ) from exc
    bkey = encode_key(key)
    if log_keyed and bkey is not None:
        q = partition_for_key(bkey, partitions) if partitions > 1 else 0
    else:
        q = zlib.crc32(_enc.encode(key)) % partitions
    return [Message(raw, bkey, (srch,), max(0, ts), q)]
