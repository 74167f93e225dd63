"""The stream-table join, by event time, deterministic.

The table is a topic read beside the source, partition by partition (the
two are co-partitioned: same partition count, same keys in the same
partition). Each table record is a version of its key's row from its event
time on (a ``None`` value deletes the row); a table record older than the
table's watermark counts from the watermark.

An event at time ``t`` joins the row as of ``t``. It waits until both
inputs are past ``t`` -- the operator's output watermark is the minimum of
the stream's and the table's -- and events leave in (event time, arrival)
order. So which row an event meets, and the order of what comes out, depend
on the two logs only, never on which of them was read faster (Flink's
event-time temporal join). An event older than the stream's watermark when
it arrives is late: the side output, as for windows.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Any

from ._flow import Node
from ._ops import LATE_SINK, NO_TIME, Ctx, OperatorFailed, StatefulOp, detached, key_sort


def _int_key(op: StatefulOp, key: int) -> OperatorFailed:
    # The joined topic's keys are the text (or bytes) of its records' keys: an
    # int would meet no row, silently. key_by must give str or bytes here.
    return OperatorFailed(
        f"{op.node.label}: key {key!r} is an int, and the joined topic's keys are "
        "text or bytes: key the stream by str or bytes before the join",
        node=op.node.label,
    )


class JoinOp(StatefulOp):
    """State per key: ``[versions, pending]``; versions ``[[from, row], ...]``
    sorted by time, pending events ``{seq: [ts, value]}``."""

    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        self.fn = node.args["fn"]
        self.inner = node.args["how"] == "inner"
        self.table_ooo: int = node.args["out_of_orderness_ms"]
        self.wm = NO_TIME  # the stream's watermark, as advanced from upstream
        self.table_max = NO_TIME
        self.table_wm = NO_TIME
        self.out_wm = NO_TIME  # min(stream, table): what this operator has let through
        self.seq = 0
        self.heap: list[tuple[Any, ...]] = []  # pending events: (ts, seq, key order, key)

    def _slot(self, key: Any) -> list[Any]:
        bucket = self.touch(key)
        slot = bucket.get(key)
        if slot is None:
            slot = bucket[key] = [[], {}]
        return slot

    # --- the stream side -------------------------------------------------------

    def push(self, key: Any, value: Any, ts: int) -> None:
        if type(key) is int:
            raise _int_key(self, key)
        if ts < self.wm:  # behind the stream's own watermark: its place is decided
            self.ctx.late_count += 1
            if not self.late:
                self.ctx.outputs.append((LATE_SINK, key, value, ts))
            for child in self.late:
                child.push(key, value, ts)
            return
        slot = self._slot(key)
        slot[1][self.seq] = [ts, value]
        heapq.heappush(self.heap, (ts, self.seq, key_sort(key), key))
        self.seq += 1

    def advance(self, wm: int) -> None:
        self.wm = wm
        self._release()

    # --- the table side --------------------------------------------------------

    def table(self, key: Any, row: Any, ts: int) -> None:
        """One table record (``row`` None: the key's row is deleted)."""
        start = max(ts, self.table_wm)
        versions = self._slot(key)[0]
        i = bisect.bisect_right([v[0] for v in versions], start)
        versions.insert(i, [start, row])
        # Rows older than the newest one at or before out_wm cannot be met again.
        keep = bisect.bisect_right([v[0] for v in versions], self.out_wm) - 1
        if keep > 0:
            del versions[:keep]
        if ts > self.table_max:
            self.table_max = ts
            table_wm = ts - self.table_ooo
            if table_wm > self.table_wm:
                self.table_wm = table_wm
                self._release()

    def table_time(self, ts: int) -> None:
        """A heartbeat of the table topic."""
        if ts > self.table_max:
            self.table_max = ts
            if ts - self.table_ooo > self.table_wm:
                self.table_wm = ts - self.table_ooo
                self._release()

    # --- output ----------------------------------------------------------------

    def _release(self) -> None:
        out_wm = min(self.wm, self.table_wm)
        if out_wm <= self.out_wm:
            return
        heap = self.heap
        while heap and heap[0][0] < out_wm:
            ts, seq, _ks, key = heapq.heappop(heap)
            slot = self._slot(key)
            value = slot[1].pop(seq)[1]
            row = _row_at(slot[0], ts)
            if not slot[1] and not slot[0]:
                self.touch(key).pop(key, None)
            if row is None and self.inner:
                continue
            self.emit(key, detached(self.call(self.fn, value, row)), ts)
        self.out_wm = out_wm
        for child in self.wm_children:
            child.advance(out_wm)

    def restored(self, wm: int) -> None:
        self.wm = wm
        for bucket in self.buckets:
            for key, (_versions, pending) in bucket.items():
                for seq, (ts, _value) in pending.items():
                    heapq.heappush(self.heap, (ts, seq, key_sort(key), key))
                    self.seq = max(self.seq, seq + 1)

    def times(self) -> tuple[int, int, int]:
        return self.table_max, self.table_wm, self.out_wm

    def set_times(self, table_max: int, table_wm: int, out_wm: int) -> None:
        self.table_max, self.table_wm, self.out_wm = table_max, table_wm, out_wm


def _row_at(versions: list[list[Any]], ts: int) -> Any:
    row = None
    for start, value in versions:
        if start > ts:
            break
        row = value
    return row


class WindowJoinOp(StatefulOp):
    """Stream-stream join: pairs of the source's items and the other
    topic's with the same key and event times at most ``within_ms`` apart.

    Both sides wait until both watermarks pass them, then are taken in
    (event time, side, arrival) order; each item meets the other side's
    items taken before it, so every pair is emitted once, by the later of
    the two, at its event time -- a function of the two logs only. State
    per key: ``[kept, pending]``, kept ``[[ts, side, seq, value], ...]``,
    pending ``{seq: [ts, side, seq, value]}``;
    kept items older than (output watermark - ``within_ms``) are dropped.
    """

    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        self.fn = node.args["fn"]
        self.within: int = node.args["within_ms"]
        # Every this much event time, the kept items of every key are swept.
        self.sweep_ms = max(self.within, 1000)
        self.swept: int | None = None
        self.table_ooo: int = node.args["out_of_orderness_ms"]
        self.wm = NO_TIME
        self.table_max = NO_TIME
        self.table_wm = NO_TIME
        self.out_wm = NO_TIME
        self.seq = 0
        self.heap: list[tuple[Any, ...]] = []

    def _slot(self, key: Any) -> list[Any]:
        bucket = self.touch(key)
        slot = bucket.get(key)
        if slot is None:
            slot = bucket[key] = [[], {}]
        return slot

    def _arrive(self, side: int, key: Any, value: Any, ts: int, wm: int) -> None:
        if ts < wm:  # behind its own side's watermark: late
            self.ctx.late_count += 1
            if not self.late:
                self.ctx.outputs.append((LATE_SINK, key, value, ts))
            for child in self.late:
                child.push(key, value, ts)
            return
        self._slot(key)[1][self.seq] = [ts, side, self.seq, value]
        heapq.heappush(self.heap, (ts, side, self.seq, key_sort(key), key))
        self.seq += 1

    def push(self, key: Any, value: Any, ts: int) -> None:
        if type(key) is int:
            raise _int_key(self, key)
        self._arrive(0, key, value, ts, self.wm)

    def table(self, key: Any, value: Any, ts: int) -> None:
        self._arrive(1, key, value, ts, self.table_wm)
        if ts > self.table_max:
            self.table_time(ts)

    def table_time(self, ts: int) -> None:
        if ts > self.table_max:
            self.table_max = ts
            if ts - self.table_ooo > self.table_wm:
                self.table_wm = ts - self.table_ooo
                self._release()

    def advance(self, wm: int) -> None:
        self.wm = wm
        self._release()

    def _release(self) -> None:
        out_wm = min(self.wm, self.table_wm)
        if out_wm <= self.out_wm:
            return
        heap, within = self.heap, self.within
        while heap and heap[0][0] < out_wm:
            ts, side, seq, _ks, key = heapq.heappop(heap)
            if ts // self.sweep_ms != self.swept:
                self.swept = ts // self.sweep_ms
                self._sweep(self.swept * self.sweep_ms - within)
            kept, pending = self._slot(key)
            item = pending.pop(seq)
            horizon = ts - within
            while kept and kept[0][0] < min(horizon, out_wm - within):
                kept.pop(0)
            for other in kept:
                if other[1] != side and other[0] >= horizon:
                    left, right = (item[3], other[3]) if side == 0 else (other[3], item[3])
                    self.emit(key, detached(self.call(self.fn, left, right)), ts)
            kept.append(item)
        self.out_wm = out_wm
        for child in self.wm_children:
            child.advance(out_wm)

    def _sweep(self, before: int) -> None:
        """Drop every key's kept items older than ``before`` (none can pair
        again), and keys left with nothing: a key that goes quiet does not
        keep its items forever. The thresholds are multiples of the sweep
        interval, met in the release order, so the state stays a function
        of the input (a sweep repeated after a restart removes nothing new)."""
        for b, bucket in enumerate(self.buckets):
            empty = []
            for key, (kept, pending) in bucket.items():
                n = 0
                while n < len(kept) and kept[n][0] < before:
                    n += 1
                if n:
                    del kept[:n]
                    self.ctx.dirty.add(self._marks[b])
                if not kept and not pending:
                    empty.append(key)
            for key in empty:
                del bucket[key]
                self.ctx.dirty.add(self._marks[b])

    def restored(self, wm: int) -> None:
        self.wm = wm
        for bucket in self.buckets:
            for key, (_kept, pending) in bucket.items():
                for ts, side, seq, _value in pending.values():
                    heapq.heappush(self.heap, (ts, side, seq, key_sort(key), key))
                    self.seq = max(self.seq, seq + 1)

    def times(self) -> tuple[int, int, int]:
        return self.table_max, self.table_wm, self.out_wm

    def set_times(self, table_max: int, table_wm: int, out_wm: int) -> None:
        self.table_max, self.table_wm, self.out_wm = table_max, table_wm, out_wm
