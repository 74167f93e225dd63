"""Window operators: tumbling and hopping, session, count.

Timers are not stored: they follow from the windows in the state and the
watermark, so a restored task rebuilds exactly the timers an uninterrupted
one holds. Timers fire in (fire time, key, window start) order.
"""

from __future__ import annotations

import heapq
from typing import Any

from . import _windows as w
from ._flow import Node
from ._ops import LATE_SINK, NO_TIME, Ctx, StatefulOp, detached, key_sort

# Timer kinds, in the order they fire at one instant.
_EARLY, _ON_TIME, _PURGE = 0, 1, 2
_TIMING = {_EARLY: "early", _ON_TIME: "on_time"}


class WindowOp(StatefulOp):
    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        self.agg: w.Agg = node.args["agg"]
        self.lateness: int = node.args["lateness"]
        self.early: int | None = node.args["early"]
        self.wm = NO_TIME
        self.timers: list[tuple[Any, ...]] = []
        self.counting = self.agg.name == "count"
        self.plain_state = self.counting  # window bounds, int counts, fired flags

    def emit_late(self, key: Any, value: Any, ts: int) -> None:
        self.ctx.late_count += 1
        if not self.late:
            self.ctx.outputs.append((LATE_SINK, key, value, ts))
        for child in self.late:
            child.push(key, value, ts)

    def fire(self, key: Any, start: int, end: int, acc: Any, timing: str) -> None:
        # A count is an int: nothing to call, nothing to copy.
        value = acc if self.counting else detached(self.call(self.agg.result, acc))
        out = w.WindowResult(key, start, end, value, timing)
        for child in self.children:
            child.push(key, out, end - 1)

    def timer(self, fire: int, kind: int, key: Any, start: int) -> None:
        heapq.heappush(self.timers, (fire, kind, key_sort(key), start, key))

    def advance(self, wm: int) -> None:
        timers = self.timers
        while timers and timers[0][0] <= wm:
            fire, kind, _ks, start, key = heapq.heappop(timers)
            self.on_timer(fire, kind, key, start)
        self.wm = wm
        for child in self.wm_children:
            child.advance(wm)

    def on_timer(self, fire: int, kind: int, key: Any, start: int) -> None:
        raise NotImplementedError


class TimeWindowOp(WindowOp):
    """Tumbling and hopping windows. State per key: {start: [acc, fired]}."""

    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        self.spec: w.Tumbling | w.Hopping = node.args["window"]
        self.length = self.spec.length_ms
        self.offset = self.spec.offset_ms
        # The hot path: one window per event, counting (no function of the user's).
        self.fast = isinstance(self.spec, w.Tumbling) and self.agg.name == "count"

    def push(self, key: Any, value: Any, ts: int) -> None:
        wm, size, lateness = self.wm, self.length, self.lateness
        if self.fast:
            start = ts - (ts - self.offset) % size
            if start + size + lateness > wm:
                b = self._bucket_of.get(key)  # touch(key), inlined: the hot path
                if b is None:
                    bucket = self.touch(key)
                else:
                    self.ctx.dirty.add(self._marks[b])
                    bucket = self.buckets[b]
                windows = bucket.get(key)
                if windows is None:
                    windows = bucket[key] = {}
                slot = windows.get(start)
                if slot is None:
                    slot = windows[start] = [0, self.open_slot(key, start, wm)]
                slot[0] += 1
                if slot[1]:
                    self.fire(key, start, start + size, slot[0], "late")
                return
            starts = []
        else:
            starts = [s for s in self.spec.starts(ts) if s + size + lateness > wm]
        if not starts:
            self.emit_late(key, value, ts)
            return
        bucket = self.touch(key)
        windows = bucket.get(key)
        if windows is None:
            windows = bucket[key] = {}
        agg = self.agg
        for start in starts:
            slot = windows.get(start)
            if slot is None:
                slot = windows[start] = [self.call(agg.init), self.open_slot(key, start, wm)]
            slot[0] = self.call(agg.add, slot[0], value)
            if slot[1]:  # fired already, within the allowed lateness: a corrected result
                self.fire(key, start, start + size, slot[0], "late")

    def open_slot(self, key: Any, start: int, wm: int) -> bool:
        """A new window's timers; whether it counts as fired already: a window
        first met after the watermark passed its end (within the allowed
        lateness) gives its result at once, as a late one, not at some later
        watermark move that may never come."""
        end = start + self.length
        if end <= wm:
            self.timer(end + self.lateness, _PURGE, key, start)
            return True
        self.schedule(key, start, wm)
        return False

    def schedule(self, key: Any, start: int, wm: int) -> None:
        end = start + self.length
        if self.early is not None:
            nxt = start + self.early * ((max(wm, start) - start) // self.early + 1)
            if nxt < end:
                self.timer(nxt, _EARLY, key, start)
        self.timer(end, _ON_TIME, key, start)

    def on_timer(self, fire: int, kind: int, key: Any, start: int) -> None:
        bucket = self.touch(key)
        windows = bucket[key]
        slot = windows[start]
        end = start + self.length
        if kind == _EARLY:
            self.fire(key, start, end, slot[0], "early")
            nxt = fire + self.early  # type: ignore[operator]
            if nxt < end:
                self.timer(nxt, _EARLY, key, start)
            return
        if kind == _ON_TIME:
            self.fire(key, start, end, slot[0], "on_time")
            if self.lateness:
                slot[1] = True
                self.timer(end + self.lateness, _PURGE, key, start)
                return
        del windows[start]
        if not windows:
            del bucket[key]

    def restored(self, wm: int) -> None:
        self.wm = wm
        for bucket in self.buckets:
            for key, windows in bucket.items():
                # msgpack gives the window starts back as ints: keep them so.
                for start, (_acc, fired) in windows.items():
                    if fired:
                        self.timer(start + self.length + self.lateness, _PURGE, key, start)
                    else:
                        self.schedule(key, start, wm)


class SessionOp(WindowOp):
    """Session windows. State per key: sorted ``[[start, last, acc, fired,
    timer], ...]``; a session's window is ``[start, last + gap)`` and
    ``timer`` the fire time of its one live timer. A session that grows
    keeps its timer: when the timer comes due and the session's end moved,
    it is set again at the end (instead of one heap entry per event)."""

    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        self.gap: int = node.args["window"].gap_ms

    def push(self, key: Any, value: Any, ts: int) -> None:
        gap, agg = self.gap, self.agg
        bucket = self.buckets[self.bucket_index(key)]
        sessions: list[list[Any]] = bucket.get(key, [])
        touching = [s for s in sessions if s[0] < ts + gap and ts < s[1] + gap]
        start = min([ts, *(s[0] for s in touching)])
        last = max([ts, *(s[1] for s in touching)])
        if last + gap + self.lateness <= self.wm:
            self.emit_late(key, value, ts)
            return
        if touching:  # merged in start order: deterministic
            acc = touching[0][2]
            for s in touching[1:]:
                acc = self.call(agg.merge, acc, s[2])  # type: ignore[arg-type]
        else:
            acc = self.call(agg.init)
        acc = self.call(agg.add, acc, value)
        # Fired already, or first met after the watermark passed its end (within
        # the allowed lateness): its result goes out now, as a late one.
        fired = any(s[3] for s in touching) or last + gap <= self.wm
        # The session with the merged start keeps its live timer; the others'
        # timers find no session of their start when due, and lapse.
        same = next((s for s in touching if s[0] == start), None)
        merged = [start, last, acc, fired, None if same is None else same[4]]
        if len(touching) == 1 and same is not None:
            same[1:4] = merged[1:4]
            self.touch(key)
        else:
            kept = [s for s in sessions if all(s is not t for t in touching)]
            kept.append(merged)
            kept.sort(key=lambda s: s[0])
            self.touch(key)[key] = kept
        if fired:
            self.fire(key, start, last + gap, acc, "late")
        if merged[4] is None:
            at = last + gap + (self.lateness if fired else 0)
            merged[4] = at
            self.timer(at, _PURGE if fired else _ON_TIME, key, start)

    def _find(self, key: Any, start: int) -> tuple[list[list[Any]], list[Any]] | None:
        sessions = self.buckets[self.bucket_index(key)].get(key)
        if sessions:
            for s in sessions:
                if s[0] == start:
                    return sessions, s
        return None

    def on_timer(self, fire: int, kind: int, key: Any, start: int) -> None:
        found = self._find(key, start)
        if found is None or found[1][4] != fire:
            return  # its session merged into an earlier one: that one's timer stands
        sessions, s = found
        self.touch(key)
        end = s[1] + self.gap
        if not s[3]:
            if fire < end:  # the session grew since: due at its new end
                s[4] = end
                self.timer(end, _ON_TIME, key, start)
                return
            self.fire(key, s[0], end, s[2], "on_time")
            if self.lateness:
                s[3], s[4] = True, end + self.lateness
                self.timer(s[4], _PURGE, key, start)
                return
        elif fire < end + self.lateness:
            s[4] = end + self.lateness
            self.timer(s[4], _PURGE, key, start)
            return
        sessions.remove(s)
        if not sessions:
            del self.buckets[self.bucket_index(key)][key]

    def restored(self, wm: int) -> None:
        self.wm = wm
        for bucket in self.buckets:
            for key, sessions in bucket.items():
                for start, _last, _acc, fired, at in sessions:
                    self.timer(at, _PURGE if fired else _ON_TIME, key, start)


class CountOp(WindowOp):
    """Count windows. State per key: [acc, n, first ts, last ts]."""

    def push(self, key: Any, value: Any, ts: int) -> None:
        bucket = self.touch(key)
        slot = bucket.get(key)
        if slot is None:
            slot = bucket[key] = [self.call(self.agg.init), 0, ts, ts]
        slot[0] = self.call(self.agg.add, slot[0], value)
        slot[1] += 1
        slot[2] = min(slot[2], ts)
        slot[3] = max(slot[3], ts)
        if slot[1] >= self.node.args["window"].size:
            del bucket[key]
            value = self.call(self.agg.result, slot[0])
            self.emit(key, w.WindowResult(key, slot[2], slot[3] + 1, value, "on_time"), slot[3])


def window_op(node: Node, ctx: Ctx) -> WindowOp:
    spec = node.args["window"]
    if isinstance(spec, w.Session):
        return SessionOp(node, ctx)
    if isinstance(spec, w.Count):
        return CountOp(node, ctx)
    return TimeWindowOp(node, ctx)
