"""The dataflow you build: a :class:`Flow` of operators over one source topic.

Building checks every argument and runs nothing; :func:`unbundled.streams.run`
(or :class:`unbundled.streams.TestDriver`) executes it. One task per source
partition runs the whole flow over that partition's records, in offset
order, with that partition's watermark; so the same log gives the same
output, whatever the batch sizes, worker count or crashes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from .. import limits
from ..errors import UsageError
from . import _windows as w

Decode = Literal["json", "raw"] | Callable[[bytes], Any]
Encode = Literal["json", "raw"] | Callable[[Any], bytes]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: "$" would let a final "\n" in


@dataclass
class Node:
    """One operator: ``kind`` says which, ``args`` its settings."""

    id: int
    kind: str
    parent: int | None
    args: dict[str, Any] = field(default_factory=dict)
    side: bool = False  # fed by the parent's side output (late events), not its main output
    # The segment the node runs in: 0 for the source's, else the id of the
    # repartitioning key_by whose topic feeds it. Each segment has one task per partition.
    segment: int = 0

    @property
    def label(self) -> str:
        """``kind#id``, as error messages and ``describe()`` name the operator."""
        return f"{self.kind}#{self.id}"


def _check_fn(name: str, fn: object) -> None:
    if not callable(fn):
        raise UsageError(f"{name} needs a function, got {fn!r}", value=fn)


def _check_bound(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{name} must be an int in {low}..{high}, got {value!r}", value=value)
    return value


def _check_codec(name: str, codec: object) -> None:
    if codec not in ("json", "raw") and not callable(codec):
        raise UsageError(f'{name} must be "json", "raw" or a function, got {codec!r}', value=codec)


class Flow:
    """A named dataflow. ``name`` names its consumer group (``streams.<name>``),
    its state and its default late-event topic (``<name>.late``).

    ``out_of_orderness_ms``: how far behind the newest event time seen in a
    partition an event may be and still be on time. A partition's watermark
    is (newest event time seen in it) - ``out_of_orderness_ms``, raised by
    heartbeat records written into the log (:func:`heartbeat`); it never
    looks at a clock. A window closes when the watermark passes its end.

    ``watermark_every_ms``: a repartitioning ``key_by`` forwards its
    watermark downstream each time it passes another multiple of this.
    """

    def __init__(
        self, name: str, *, out_of_orderness_ms: int = 0, watermark_every_ms: int = 1000
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UsageError(
                f"a flow name is letters, digits, '.', '_', '-' (not first), got {name!r}",
                value=name,
            )
        if len(name) > limits.stream_name_chars_max:
            raise UsageError(
                f"a flow name has at most {limits.stream_name_chars_max} characters, "
                f"got {len(name)}",
                value=name,
            )
        self.name = name
        self.out_of_orderness_ms = _check_bound(
            "out_of_orderness_ms", out_of_orderness_ms, 0, limits.stream_window_ms_max
        )
        self.watermark_every_ms = _check_bound(
            "watermark_every_ms", watermark_every_ms, 1, limits.stream_window_ms_max
        )
        self.nodes: list[Node] = []

    def _add(self, kind: str, parent: int | None, side: bool = False, **args: Any) -> Node:
        if len(self.nodes) >= limits.stream_nodes_max:
            raise UsageError(f"a flow has at most {limits.stream_nodes_max} operators")
        segment = 0
        if parent is not None:
            up = self.nodes[parent]
            repartitions = up.kind == "key_by" and up.args["repartition"] and not side
            segment = up.id if repartitions else up.segment
        node = Node(len(self.nodes), kind, parent, args, side, segment)
        self.nodes.append(node)
        return node

    def segments(self) -> list[int]:
        """The segments, upstream first: 0, then each repartitioning key_by's id."""
        return [0, *(n.id for n in self.nodes if n.kind == "key_by" and n.args["repartition"])]

    def segment_topic(self, segment: int) -> str:
        """The topic a segment reads: the source, or a key_by's repartition topic."""
        if segment == 0:
            return self.source_topic
        return f"{self.name}.by-{segment}"

    @property
    def source_topic(self) -> str:
        """The topic the flow reads (``UsageError`` before ``source()`` was called)."""
        for node in self.nodes:
            if node.kind == "source":
                return str(node.args["topic"])
        raise UsageError(f"flow {self.name!r} has no source: call flow.source(topic)")

    def source(
        self,
        topic: str,
        *,
        decode: Decode = "json",
        timestamp: Callable[[Any], int] | None = None,
    ) -> Stream:
        """The records of ``topic``, decoded (``"json"``, ``"raw"`` bytes or a
        function). Each record's key is its log key as ``str`` (``bytes`` if
        not UTF-8, ``None`` if absent). Event time is the record's timestamp,
        or ``timestamp(value)`` (milliseconds)."""
        if any(n.kind == "source" for n in self.nodes):
            raise UsageError("a flow reads one source topic (joins of two streams: not yet)")
        if not isinstance(topic, str) or not topic:
            raise UsageError(f"source needs a topic name, got {topic!r}", value=topic)
        _check_codec("decode", decode)
        if timestamp is not None:
            _check_fn("timestamp", timestamp)
        return Stream(self, self._add("source", None, topic=topic, decode=decode, ts=timestamp))

    @property
    def joins(self) -> list[Node]:
        """The flow's ``join_table`` and ``join_window`` operators, in order."""
        return [n for n in self.nodes if n.kind in ("join", "wjoin")]

    @property
    def table_topic(self) -> str | None:
        """The other topic the flow's first join reads, if any."""
        joins = self.joins
        return str(joins[0].args["topic"]) if joins else None

    @property
    def join_segments(self) -> set[int]:
        """The segments with a join (0, or a repartitioning key_by's id)."""
        return {n.segment for n in self.joins}

    def sinks(self) -> list[Node]:
        """The flow's sink operators, in the order they were added."""
        return [n for n in self.nodes if n.kind == "sink"]

    def children(self) -> dict[int, list[Node]]:
        """Each operator's id -> the operators it feeds."""
        out: dict[int, list[Node]] = {}
        for node in self.nodes:
            if node.parent is not None:
                out.setdefault(node.parent, []).append(node)
        return out

    def describe(self) -> list[str]:
        """One line per operator, for ``streams status`` and error messages."""
        return [
            f"{n.label} <- {'' if n.parent is None else f'#{n.parent}'}"
            f"{' (late)' if n.side else ''} {_args_text(n)}"
            for n in self.nodes
        ]


def _args_text(node: Node) -> str:
    shown = {k: v for k, v in node.args.items() if isinstance(v, str | int | w.Window)}
    return " ".join(f"{k}={v!r}" for k, v in shown.items())


class Stream:
    """A stream of ``(key, value, event time)`` items inside a :class:`Flow`."""

    def __init__(self, flow: Flow, node: Node) -> None:
        self.flow = flow
        self.node = node

    def _then(self, kind: str, **args: Any) -> Stream:
        return Stream(self.flow, self.flow._add(kind, self.node.id, **args))

    def map(self, fn: Callable[[Any], Any]) -> Stream:
        """``fn(value)`` replaces each value."""
        _check_fn("map", fn)
        return self._then("map", fn=fn)

    def filter(self, fn: Callable[[Any], bool]) -> Stream:
        """Keep the items whose ``fn(value)`` is true."""
        _check_fn("filter", fn)
        return self._then("filter", fn=fn)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> Stream:
        """Each value becomes the values ``fn(value)`` yields (zero or more)."""
        _check_fn("flat_map", fn)
        return self._then("flat_map", fn=fn)

    def key_by(self, fn: Callable[[Any], str | int | bytes], *, repartition: bool = True) -> Stream:
        """Re-key each item by ``fn(value)`` (a ``str``, ``int`` or ``bytes``).

        With ``repartition`` (the default) the items go through the topic
        ``<flow>.by-<n>`` (as many partitions as the source, partition by a
        hash of the key; before a join, the log's keyed partitioning of the
        key's text), so each key's items meet in one task downstream;
        values must be msgpack-encodable. Downstream tasks take the items of
        the upstream partitions in a fixed order (by the upstream watermark
        they carry, then partition, then offset), so the result stays a
        function of the input log. ``repartition=False`` re-keys in place:
        right only when the records of a key already share a partition."""
        _check_fn("key_by", fn)
        if not isinstance(repartition, bool):
            raise UsageError(f"repartition must be a bool, got {repartition!r}", value=repartition)
        return self._then("key_by", fn=fn, repartition=repartition)

    def map_with_state(
        self,
        fn: Callable[[Any, Any], tuple[Any, Any]],
        *,
        init: Callable[[], Any] = lambda: None,
    ) -> Stream:
        """Per key: ``state, out = fn(state, value)``, ``state`` starting at
        ``init()``. ``out`` is emitted unless it is ``None``; a returned state
        of ``None`` deletes the key's state. The state is stored with each
        epoch, so it must be msgpack-encodable."""
        _check_fn("map_with_state", fn)
        _check_fn("init", init)
        return self._then("state", fn=fn, init=init)

    def window(
        self,
        window: w.Window,
        *,
        allowed_lateness_ms: int = 0,
        early_every_ms: int | None = None,
    ) -> Windowed:
        """Group items by key into ``window`` (:class:`Tumbling`,
        :class:`Hopping`, :class:`Session`, :class:`Count`); then pick the
        aggregation (``count()``, ``sum()``, ``reduce()``, ``aggregate()``,
        ``collect()``).

        ``allowed_lateness_ms`` keeps a window's state that long after its
        on-time result, and an event arriving then emits a corrected result
        (``timing="late"``). ``early_every_ms`` (tumbling and hopping) emits
        speculative results (``timing="early"``) each time the watermark
        passes another multiple of it after the window's start. Events later
        than that go to the side output (``.late``), never nowhere."""
        if not isinstance(window, w.Tumbling | w.Hopping | w.Session | w.Count):
            raise UsageError(
                f"window needs Tumbling, Hopping, Session or Count, got {window!r}", value=window
            )
        _check_bound("allowed_lateness_ms", allowed_lateness_ms, 0, limits.stream_window_ms_max)
        if early_every_ms is not None:
            if not isinstance(window, w.Tumbling | w.Hopping):
                raise UsageError("early_every_ms is for tumbling and hopping windows")
            _check_bound("early_every_ms", early_every_ms, 1, limits.stream_window_ms_max)
        if isinstance(window, w.Count) and allowed_lateness_ms:
            raise UsageError("count windows have no event time: allowed_lateness_ms must be 0")
        return Windowed(self, window, allowed_lateness_ms, early_every_ms)

    def join_table(
        self,
        topic: str,
        fn: Callable[[Any, Any], Any] | None = None,
        *,
        how: Literal["inner", "left"] = "inner",
        decode: Decode = "json",
        out_of_orderness_ms: int = 0,
    ) -> Stream:
        """Join each item with the row of its key in the table ``topic`` (a
        compacted or CDC topic, co-partitioned with the source: same
        partition count, keyed the same way) *as of the item's event time*;
        emit ``fn(value, row)`` (default ``[value, row]``). ``how="inner"``
        drops items whose key has no row then; ``"left"`` passes ``row=None``.

        After a repartitioning ``key_by`` the items are sent to the partition
        the log's keyed partitioning gives their key's text, as the table's
        records were: key by the table's key (a ``str`` or ``bytes``; an
        ``int`` key is ``OperatorFailed``, the table's keys being text).

        Items wait until the table's watermark passes them (table records'
        event times - ``out_of_orderness_ms``; heartbeats on the table topic
        move it too), so the result depends on the two logs only."""
        _join_bound(self)
        if not isinstance(topic, str) or not topic:
            raise UsageError(f"join_table needs a topic name, got {topic!r}", value=topic)
        if fn is not None:
            _check_fn("join_table", fn)
        if how not in ("inner", "left"):
            raise UsageError(f'how must be "inner" or "left", got {how!r}', value=how)
        _check_codec("decode", decode)
        _check_bound("out_of_orderness_ms", out_of_orderness_ms, 0, limits.stream_window_ms_max)
        return self._then(
            "join",
            topic=topic,
            fn=fn or _pair,
            how=how,
            decode=decode,
            out_of_orderness_ms=out_of_orderness_ms,
        )

    def join_window(
        self,
        topic: str,
        within_ms: int,
        fn: Callable[[Any, Any], Any] | None = None,
        *,
        decode: Decode = "json",
        out_of_orderness_ms: int = 0,
    ) -> Stream:
        """Join with the stream of ``topic`` (co-partitioned with the source):
        for each pair of items with the same key whose event times are at
        most ``within_ms`` apart, emit ``fn(this_value, other_value)``
        (default ``[this, other]``) at the later event time -- each pair once.
        Items wait until both watermarks pass them; the other topic's
        watermark is its event times - ``out_of_orderness_ms`` (and its
        heartbeats). Items later than their own side's watermark go to ``.late``."""
        _join_bound(self)
        if not isinstance(topic, str) or not topic:
            raise UsageError(f"join_window needs a topic name, got {topic!r}", value=topic)
        _check_bound("within_ms", within_ms, 0, limits.stream_window_ms_max)
        if fn is not None:
            _check_fn("join_window", fn)
        _check_codec("decode", decode)
        _check_bound("out_of_orderness_ms", out_of_orderness_ms, 0, limits.stream_window_ms_max)
        return self._then(
            "wjoin",
            topic=topic,
            within_ms=within_ms,
            fn=fn or _pair,
            decode=decode,
            out_of_orderness_ms=out_of_orderness_ms,
        )

    # --- sinks -----------------------------------------------------------------

    def to_topic(self, topic: str, *, encode: Encode = "json") -> Self:
        """Append each item to ``topic`` (created with the source's partition
        count if missing), in the epoch's transaction: exactly once. The
        record's key is the item's key, its timestamp the item's event time;
        with as many partitions as the source, task ``p`` writes partition
        ``p`` (so the topic's bytes are a function of the input)."""
        if not isinstance(topic, str) or not topic:
            raise UsageError(f"to_topic needs a topic name, got {topic!r}", value=topic)
        _check_codec("encode", encode)
        self._then("sink", to="topic", topic=topic, encode=encode)
        return self

    def to_callback(self, fn: Callable[[Any, Any, int], object]) -> Self:
        """Call ``fn(key, value, event_time)`` for each item once its epoch
        has committed: at least once (a crash between the commit and the
        calls repeats none; a crash during the calls repeats the epoch's)."""
        _check_fn("to_callback", fn)
        self._then("sink", to="callback", fn=fn)
        return self

    def to_table(self, table: str) -> Self:
        """Upsert each item into SQL table ``table`` (``key``, ``value`` JSON,
        ``ts``; window results by ``key``, ``start``, ``end``) in the epoch's
        transaction (SQLite, PostgreSQL): exactly once."""
        if not isinstance(table, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", table):
            raise UsageError(f"to_table needs a plain SQL table name, got {table!r}", value=table)
        self._then("sink", to="table", table=table)
        return self


JOINS_MAX = 16  # each join reads its topic beside the source, every poll


def _join_bound(stream: Stream) -> None:
    if len(stream.flow.joins) >= JOINS_MAX:
        raise UsageError(f"a flow has at most {JOINS_MAX} joins", value=JOINS_MAX)


def _pair(value: Any, row: Any) -> list[Any]:
    return [value, row]


class Windowed:
    """A windowed stream waiting for its aggregation."""

    def __init__(self, stream: Stream, window: w.Window, lateness: int, early: int | None) -> None:
        self._stream = stream
        self._args: dict[str, Any] = {"window": window, "lateness": lateness, "early": early}

    def _agg(self, agg: w.Agg) -> WindowStream:
        if isinstance(self._args["window"], w.Session) and agg.merge is None:
            raise UsageError(f"{agg.name} over session windows needs merge= (sessions merge)")
        node = self._stream.flow._add("window", self._stream.node.id, agg=agg, **self._args)
        return WindowStream(self._stream.flow, node)

    def count(self) -> WindowStream:
        """The number of events per window."""
        return self._agg(w.count_agg())

    def sum(self, fn: Callable[[Any], Any] | None = None) -> WindowStream:
        """The sum of the values (or of ``fn(value)``) per window."""
        if fn is not None:
            _check_fn("sum", fn)
        return self._agg(w.sum_agg(fn))

    def reduce(self, fn: Callable[[Any, Any], Any]) -> WindowStream:
        """``fn(fn(v1, v2), v3)...`` over the window's values in arrival order
        (sessions that an event bridges merge in their start order)."""
        _check_fn("reduce", fn)
        return self._agg(w.reduce_agg(fn))

    def collect(self) -> WindowStream:
        """The window's values, as a list in arrival order (sessions that an
        event bridges are concatenated in their start order)."""
        return self._agg(w.collect_agg())

    def aggregate(
        self,
        init: Callable[[], Any],
        add: Callable[[Any, Any], Any],
        *,
        merge: Callable[[Any, Any], Any] | None = None,
        result: Callable[[Any], Any] | None = None,
    ) -> WindowStream:
        """A custom accumulator: ``acc = add(acc, value)`` from ``init()``;
        ``merge(a, b)`` joins two (needed by session windows); ``result(acc)``
        is what is emitted. Accumulators are stored: msgpack-encodable."""
        for name, fn in (("init", init), ("add", add), ("merge", merge), ("result", result)):
            if fn is not None:
                _check_fn(name, fn)
        return self._agg(w.aggregate_agg(init, add, merge, result))


class WindowStream(Stream):
    """A stream of :class:`WindowResult`, with the late events beside it."""

    @property
    def late(self) -> Stream:
        """The events too late for every window they belong to, unchanged
        (key, value, event time). Unless routed here, they go to the topic
        ``<flow name>.late``: a late event is never dropped."""
        existing = [n for n in self.flow.nodes if n.parent == self.node.id and n.side]
        if existing:
            return Stream(self.flow, existing[0])
        return Stream(self.flow, self.flow._add("late", self.node.id, side=True))
