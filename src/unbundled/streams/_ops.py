"""The operators at run time, sans I/O: one set per task (source partition).

An operator takes ``push(key, value, ts)`` and ``advance(watermark)``.
Advancing first fires the operator's due timers -- in (fire time, key,
window) order, so the same log always gives the same output order -- and
then advances its children: a window's results reach the next operator
before that operator's watermark moves past them, as in Flink.

State lives in buckets (dicts) per stateful operator, split by a hash of
the key, so an epoch rewrites only the buckets it touched. An operator
starts with ``BUCKETS`` of them and doubles their number (up to
``BUCKETS_MAX``) when one would be stored larger than ``BUCKET_SPLIT_BYTES``:
state grows past what 64 entries could hold, and a touched key rewrites a
bounded bucket, not a sixty-fourth of all the state. When every pair of
buckets that halving would merge holds less than a quarter of that, the
count halves again (down to ``BUCKETS``). The layout changes where state is
stored, never what a flow outputs.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import UsageError
from ._flow import Node
from ._windows import WindowResult

NO_TIME = -(2**62)  # the watermark before any event
#: The header of a heartbeat record: the event time (ASCII digits, ms) it stands for.
TIME_HEADER = "unbundled.time"
TIME_KEY = b"unbundled.time"  # its key: compacted topics need one; compaction keeps the newest
_BUCKET_CACHE_MAX = 100_000
LATE_SINK = -1  # the sink id of late events no one routed: the topic <flow name>.late
BUCKETS = 64  # KV entries per task per stateful operator at first (see above)
BUCKETS_MAX = 1 << 14  # a power of two, as every count is; the manifest lists the stored ones
BUCKET_SPLIT_BYTES = 256 * 1024  # a larger bucket doubles its operator's buckets
_enc = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


class OperatorFailed(UsageError):
    """A function of the flow raised; the epoch does not commit, so a restart
    meets the same record again (fix the function, or route the record)."""

    code = "operator_failed"


_loops = threading.local()


def event_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop for the flow's async functions (one per thread, reused)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop


def key_sort(key: Any) -> tuple[int, Any]:
    """A total order over keys of mixed types (None < int < str < bytes)."""
    if key is None:
        return (0, 0)
    if isinstance(key, int):
        return (1, key)
    if isinstance(key, str):
        return (2, key)
    return (3, key)


def bucket_of(key: Any, buckets: int = BUCKETS) -> int:
    """The bucket of ``key`` among ``buckets`` (a power of two): doubling the
    count splits each bucket in two, its keys staying or moving up by the old count."""
    return zlib.crc32(_enc.encode(key)) & (buckets - 1)


def encode_key(key: Any) -> bytes | None:
    """A key as a log record's key: bytes as they are, others as their text."""
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


def detached(value: Any) -> Any:
    """``value`` as an output, sharing no memory with the state it came from:
    an accumulator or state changed in place later (``collect`` appends) must
    not change what was already emitted -- nor may a restart, which loads
    fresh copies, change it."""
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    return copy.deepcopy(value)


def check_key(key: object, where: str) -> Any:
    if (
        key is None
        or isinstance(key, str | bytes)
        or (isinstance(key, int) and not isinstance(key, bool))
    ):
        return key
    raise UsageError(f"{where} returned key {key!r}: a key is str, int, bytes or None", value=key)


class Ctx:
    """What a task's operators share: the outputs of the epoch and the dirty buckets."""

    __slots__ = ("dirty", "encode_sinks", "late_count", "outputs")

    def __init__(self, *, encode_sinks: bool = True) -> None:
        self.outputs: list[tuple[int, Any, Any, int]] = []  # (sink node id, key, value, ts)
        self.dirty: set[tuple[int, int]] = set()  # (node id, bucket)
        self.late_count = 0
        # Topic and table sinks hold their values encoded (False: the test driver,
        # which shows values and only checks that they encode).
        self.encode_sinks = encode_sinks


class Op:
    """An operator; stateless ones pass items on."""

    def __init__(self, node: Node, ctx: Ctx) -> None:
        self.node = node
        self.ctx = ctx
        self.children: list[Op] = []
        self.late: list[Op] = []
        self.wm_children: list[Op] = []  # the children with a window below them (set by build)

    def emit(self, key: Any, value: Any, ts: int) -> None:
        for child in self.children:
            child.push(key, value, ts)

    def push(self, key: Any, value: Any, ts: int) -> None:
        self.emit(key, value, ts)

    def advance(self, wm: int) -> None:
        for child in self.wm_children:
            child.advance(wm)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            out = fn(*args)
            if inspect.iscoroutine(out):  # an async function: awaited here, in order
                out = event_loop().run_until_complete(out)
            return out
        except Exception as exc:
            raise OperatorFailed(
                f"{self.node.label} raised {type(exc).__name__}: {exc}", node=self.node.label
            ) from exc


class MapOp(Op):
    def push(self, key: Any, value: Any, ts: int) -> None:
        self.emit(key, self.call(self.node.args["fn"], value), ts)


class FilterOp(Op):
    def push(self, key: Any, value: Any, ts: int) -> None:
        if self.call(self.node.args["fn"], value):
            self.emit(key, value, ts)


class FlatMapOp(Op):
    def push(self, key: Any, value: Any, ts: int) -> None:
        for out in self.call(list, self.call(self.node.args["fn"], value)):
            self.emit(key, out, ts)


class KeyByOp(Op):
    def push(self, key: Any, value: Any, ts: int) -> None:
        self.emit(check_key(self.call(self.node.args["fn"], value), self.node.label), value, ts)


class SinkOp(Op):
    """Collects the epoch's outputs. A topic or table sink encodes each value
    as it is pushed (``Ctx.encode_sinks``): a value it cannot encode fails the
    epoch there, naming the sink, and the epoch holds bytes -- not the values,
    which would all live until the commit and keep the garbage collector
    scanning them (a third of a stateless flow's time, measured)."""

    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        to = node.args.get("to")
        encoder = sink_encoder if to == "topic" else row_encoder if to == "table" else None
        self.encoder = encoder(self) if encoder is not None and ctx.encode_sinks else None

    def push(self, key: Any, value: Any, ts: int) -> None:
        encoder = self.encoder
        if encoder is not None:
            value = encoder(value)
        self.ctx.outputs.append((self.node.id, key, value, ts))


def row_encoder(op: Op) -> Callable[[Any], tuple[int, int, str]]:
    """How table sink ``op`` turns a value into its row's ``(start, end,
    JSON text)`` (a window result: its bounds and value; else 0, 0 and the
    value); what is not JSON raises ``OperatorFailed`` naming the sink."""
    label = op.node.label

    def to_row(value: Any) -> tuple[int, int, str]:
        start, end = (value.start, value.end) if isinstance(value, WindowResult) else (0, 0)
        shown = value.value if isinstance(value, WindowResult) else value
        try:
            return start, end, _json.encode(shown).decode()
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise OperatorFailed(
                f"{label}: the value is not JSON ({exc}), got {shown!r:.80}", node=label
            ) from exc

    return to_row


def sink_encoder(op: Op) -> Callable[[Any], bytes | None]:
    """How topic sink ``op`` turns a value into a record's bytes; what it
    cannot encode raises ``OperatorFailed`` naming the sink and the value."""
    codec = op.node.args["encode"]
    label = op.node.label

    def refuse(value: Any, why: str) -> OperatorFailed:
        return OperatorFailed(f"{label}: {why}, got {value!r:.80}", node=label)

    if codec == "json":

        def to_json(value: Any) -> bytes:
            try:
                return _json.encode(value)
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                raise refuse(value, f"the value is not JSON ({exc})") from exc

        return to_json
    if codec == "raw":

        def to_raw(value: Any) -> bytes | None:
            if value is not None and type(value) is not bytes:
                raise refuse(value, 'encode="raw" needs bytes values')
            return value

        return to_raw

    def to_bytes(value: Any) -> bytes:
        out = op.call(codec, value)
        if type(out) is not bytes:
            raise refuse(out, "an encode function must return bytes")
        return out

    return to_bytes


class StatefulOp(Op):
    """An operator with per-key state kept in buckets."""

    def __init__(self, node: Node, ctx: Ctx) -> None:
        super().__init__(node, ctx)
        self.nbuckets = BUCKETS
        self.buckets: list[dict[Any, Any]] = [{} for _ in range(BUCKETS)]
        self.sizes = [0] * BUCKETS  # each bucket's bytes as last stored or loaded
        self._marks = [(node.id, b) for b in range(BUCKETS)]
        self._bucket_of: dict[Any, int] = {}  # a cache: the hash is the hot path's cost
        # True when this operator alone builds its state, of values msgpack
        # gives back unchanged (ints, bools, lists, dicts of them, and keys
        # as checked by record_key): storing it needs no round-trip check.
        self.plain_state = False

    def bucket_index(self, key: Any) -> int:
        return bucket_of(key, self.nbuckets)

    def resize(self, buckets: int, *, mark: bool = True) -> None:
        """Spread the state over ``buckets`` (a power of two), every bucket of
        the old and the new layout marked as changed (with ``mark``), so the
        epoch stores the new layout whole and deletes what it no longer has; a
        restore sets the stored layout unmarked."""
        if buckets & (buckets - 1) or not BUCKETS <= buckets <= BUCKETS_MAX:
            raise ValueError(f"{buckets} buckets: not a power of two in {BUCKETS}..{BUCKETS_MAX}")
        spread: list[dict[Any, Any]] = [{} for _ in range(buckets)]
        for bucket in self.buckets:
            for key, value in bucket.items():
                spread[bucket_of(key, buckets)][key] = value
        if mark:
            self.ctx.dirty.update(self._marks)
        self.nbuckets = buckets
        self.buckets = spread
        self.sizes = [0] * buckets
        self._marks = [(self.node.id, b) for b in range(buckets)]
        self._bucket_of.clear()
        if mark:
            self.ctx.dirty.update(self._marks)

    def shrinkable(self, small: int) -> bool:
        """Whether half the buckets would each hold less than ``small`` bytes
        (as last stored): then the state has shrunk well below its layout."""
        half = self.nbuckets // 2
        sizes = self.sizes
        return half >= BUCKETS and all(sizes[b] + sizes[b + half] < small for b in range(half))

    def touch(self, key: Any) -> dict[Any, Any]:
        """The key's bucket, marked as changed in this epoch."""
        cache = self._bucket_of
        b = cache.get(key)
        if b is None:
            if len(cache) >= _BUCKET_CACHE_MAX:
                cache.clear()
            b = cache[key] = bucket_of(key, self.nbuckets)
        self.ctx.dirty.add(self._marks[b])
        return self.buckets[b]

    def dump(self, bucket: int) -> list[list[Any]]:
        return [[k, v] for k, v in self.buckets[bucket].items()]

    def load(self, bucket: int, entries: list[list[Any]]) -> None:
        self.buckets[bucket] = {k: v for k, v in entries}

    def size(self) -> int:
        return sum(len(b) for b in self.buckets)

    def restored(self, wm: int) -> None:
        """Rebuild what is derived from the state (timers) after a load."""


class StateOp(StatefulOp):
    def push(self, key: Any, value: Any, ts: int) -> None:
        bucket = self.touch(key)
        state = bucket[key] if key in bucket else self.call(self.node.args["init"])
        result = self.call(self.node.args["fn"], state, value)
        if not isinstance(result, tuple) or len(result) != 2:
            raise OperatorFailed(
                f"{self.node.label}: map_with_state's function must return (state, output), "
                f"got {result!r}",
                node=self.node.label,
            )
        state, out = result
        if state is None:
            bucket.pop(key, None)
        else:
            bucket[key] = state
        if out is not None:
            self.emit(key, detached(out), ts)


class LateOp(Op):
    """The side output of a window: late events, unchanged."""
