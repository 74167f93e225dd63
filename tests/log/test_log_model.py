"""Model-based test: the SQLite log must behave exactly like the memory log.

Hypothesis drives the same random operations (topics, appends, idempotent
producers, transactions, reads, retention and compaction, consumer-group
membership and commits, reopening the SQLite file) against a log on
``SqliteBackend`` and one on ``MemoryBackend``, the executable specification,
with one shared :class:`SimClock`. After every step the invariants compare
everything observable: topics, partition bounds and sizes, every stored
record, groups, assignments and committed offsets. Errors must match too:
the same class with the same details.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from unbundled import Consumer, Log, Message, Producer, Record, TopicPartition, limits
from unbundled._waiters import SyncWaiter
from unbundled.backends import MemoryBackend, SqliteBackend
from unbundled.errors import Error
from unbundled.log._protocol import AppendItem, OffsetCommit, WriteBatch
from unbundled.testing import SimClock

TOPICS = ("a", "b", "c")
GROUPS = ("g1", "g2")
MEMBERS = ("m1", "m2", "m3")
PRODUCERS = ("p", "q")
CONSUMERS = ("c1", "c2", "c3")
INSTANCES = ("w1", "w2")  # static members' instance ids
WALL_SLACK_MS = 60_000  # appends without a timestamp take the wall clock
RECORD_BYTES_MAX = 30  # small, so some random records are too large
PRODUCER_WINDOW = 3  # recent sequences remembered per producer (64 in production)

Outcome = tuple[str, Any]
MessageSpec = tuple[bytes | None, bytes | None, dict[str, bytes] | None, int | None, int]

configs = st.fixed_dictionaries(
    {
        "partitions": st.integers(1, 3),
        "cleanup_policy": st.sampled_from(["delete", "compact"]),
        "retention_ms": st.sampled_from([None, 500, 2000]),
        "retention_bytes": st.sampled_from([None, 10, 20, 40]),
        "tombstone_retention_ms": st.sampled_from([0, 1000]),
    }
)
headers = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["h", "trace"]), st.binary(max_size=4), max_size=2),
)


# Round sizes and times, so that retention and expiry often hit their exact
# boundaries (a record exactly retention_ms old, a partition exactly at
# retention_bytes), where an off-by-one between SQL and spec would show.
payloads = st.one_of(st.sampled_from([b"", b"12345", b"1234567890"]), st.binary(max_size=12))
ages = st.sampled_from([0, 500, 1000, 1500, 2000, 2500])
steps_ms = st.sampled_from([0, 200, 500, 1000, 2000])


def topic_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config, record_bytes_max=RECORD_BYTES_MAX)


def outcome(call: Callable[[], Any]) -> Outcome:
    """The result of ``call``, or its typed error as (class name, details)."""
    try:
        return ("ok", call())
    except Error as exc:
        return ("error", (type(exc).__name__, exc.details))


class LogPair(RuleBasedStateMachine):
    """A log on SQLite and one on memory sharing a clock; the invariant
    compares every topic and record after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="unbundled-model-"))
        self.path = self.dir / "log.db"
        self.clock = SimClock()
        self.model = Log(MemoryBackend(clock=self.clock))
        self.real = self._open_real()
        # Positions whose timestamp came from the wall clock on each side.
        self.wall: set[tuple[str, int, int]] = set()

    def _open_real(self) -> Log:
        backend = SqliteBackend(
            self.path, sync="off", clock=self.clock, maintenance_interval_s=None
        )
        return Log(backend)

    def _reopen_real(self) -> None:
        self.real.close()
        self.real = self._open_real()
        # A fresh Log starts its keyless round-robin anew; keep it in step
        # with the model's so keyless records land in the same partitions.
        self.real._partitioner._next = self.model._partitioner._next

    def teardown(self) -> None:
        self.model.close()
        self.real.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def both(self, call: Callable[[Log], Any]) -> Any:
        """Run ``call`` on both logs; the outcomes must be equal. Returns the result."""
        expected = outcome(lambda: call(self.model))
        actual = outcome(lambda: call(self.real))
        assert actual == expected, f"sqlite {actual!r} != memory {expected!r}"
        return expected[1] if expected[0] == "ok" else None

    def same(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``both`` for one method call: ``"describe_group"`` on the Log,
        ``"backend.committed"`` on its backend."""

        def call(log: Log) -> Any:
            target: Any = log
            for name in method.split("."):
                target = getattr(target, name)
            return target(*args, **kwargs)

        return self.both(call)

    def _same_records(self, expected: list[Record], actual: list[Record]) -> None:
        assert len(actual) == len(expected), (actual, expected)
        for want, got in zip(expected, actual, strict=True):
            if (want.topic, want.partition, want.offset) in self.wall:
                assert abs(got.timestamp - want.timestamp) <= WALL_SLACK_MS
                assert (got.topic, got.partition, got.offset, got.key, got.value, got.headers) == (
                    want.topic,
                    want.partition,
                    want.offset,
                    want.key,
                    want.value,
                    want.headers,
                )
            else:
                assert got == want

    @invariant()
    def same_topics_and_records(self) -> None:
        for name in self.same("topics"):
            info = self.same("describe_topic", name)
            for part in info.partitions:
                want = list(self.model.scan(name, part.partition, part.start_offset))
                got = list(self.real.scan(name, part.partition, part.start_offset))
                self._same_records(want, got)
                assert part.records == len(want)
                assert part.bytes == sum(len(r.key or b"") + len(r.value or b"") for r in want)


class LogComparison(LogPair):
    """Every rule runs on both logs; the invariants compare them."""

    def __init__(self) -> None:
        super().__init__()
        # Producer instances per id, oldest first, as (model, real) pairs.
        self.producers: dict[str, list[tuple[Producer, Producer]]] = {}
        self.sequences: dict[str, list[int]] = {}
        self.views: dict[tuple[str, str], Any] = {}
        self.consumers: dict[str, tuple[Consumer, Consumer]] = {}
        self.incarnations = 0  # static consumers opened so far (their member ids)
        # A small retry window, so runs reach sequences that fell out of it.
        self.window_max = limits.producer_window_requests_max
        limits.producer_window_requests_max = PRODUCER_WINDOW

    def teardown(self) -> None:
        limits.producer_window_requests_max = self.window_max
        super().teardown()

    # --- topics ---------------------------------------------------------------

    @initialize(a=configs, b=configs, c=configs)
    def start(self, a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> None:
        # One topic of each policy for sure, the third at random.
        a, b = dict(a, cleanup_policy="delete"), dict(b, cleanup_policy="compact")
        for name, config in zip(TOPICS, (a, b, c), strict=True):
            self.same("create_topic", name, **topic_kwargs(config))

    @rule(name=st.sampled_from(TOPICS), config=configs, exist_ok=st.booleans())
    def create_topic(self, name: str, config: dict[str, Any], exist_ok: bool) -> None:
        self.both(lambda log: log.create_topic(name, **topic_kwargs(config), exist_ok=exist_ok))

    @rule(name=st.sampled_from(TOPICS), config=configs, roll=st.integers(0, 3))
    def recreate_topic(self, name: str, config: dict[str, Any], roll: int) -> None:
        if roll:  # only one time in four: deleting wipes the state other rules build
            return
        self.both(lambda log: log.delete_topic(name))
        self.wall = {w for w in self.wall if w[0] != name}
        self.both(lambda log: log.create_topic(name, **topic_kwargs(config)))

    def _partitions(self, topic: str) -> int:
        try:
            return self.model.backend.topic_config(topic).partitions
        except Error:
            return 1

    # --- appends --------------------------------------------------------------

    def _spec(self, data: st.DataObject, topic: str) -> MessageSpec:
        """A record for ``topic``, valid for its cleanup policy most of the time."""
        try:
            compact = self.model.backend.topic_config(topic).cleanup_policy == "compact"
        except Error:
            compact = False
        sometimes = st.integers(0, 9).map(lambda n: n == 0)
        key: bytes | None
        value: bytes | None
        if compact:
            key = data.draw(st.sampled_from([b"k1", b"k2", b"k3", b""]))
            value = None if data.draw(st.booleans()) else b"v"
        else:
            key = data.draw(st.one_of(st.none(), st.sampled_from([b"k1", b"k2", b"k3"])))
            value = b"v"
        if value is not None:
            value = data.draw(payloads)
        if data.draw(sometimes):  # the wrong kind of record for this topic
            key, value = (None, value) if compact else (key, None)
        partition = None
        if data.draw(sometimes):
            partition = data.draw(st.integers(-1, self._partitions(topic)))
        return value, key, data.draw(headers), partition, data.draw(ages)

    def _message(self, spec: MessageSpec) -> Message:
        value, key, hdrs, partition, age = spec
        return Message(value, key, tuple((hdrs or {}).items()), self.clock() - age, partition)

    def _note_wall(self, positions: Any) -> None:
        if isinstance(positions, list):
            self.wall.update((p.topic, p.partition, p.offset) for p in positions)

    @rule(data=st.data(), topic=st.sampled_from(TOPICS), bare=st.booleans())
    def append(self, data: st.DataObject, topic: str, bare: bool) -> None:
        if bare:  # the fast path: a bare value, wall-clock timestamp
            value = data.draw(payloads)
            position = self.both(lambda log: log.append(topic, value))
            self._note_wall([position] if position is not None else None)
            return
        m = self._message(self._spec(data, topic))
        self.both(
            lambda log: log.append(
                topic,
                m.value,
                key=m.key,
                headers=m.headers,
                timestamp=m.timestamp,
                partition=m.partition,
            )
        )

    @rule(
        data=st.data(),
        topic=st.sampled_from(TOPICS),
        count=st.integers(0, 6),
        bare=st.lists(payloads, min_size=1, max_size=8),
        use_bare=st.booleans(),
    )
    def append_batch(
        self, data: st.DataObject, topic: str, count: int, bare: list[bytes], use_bare: bool
    ) -> None:
        if use_bare:  # columnar: bare values, one partition, wall-clock timestamp
            self._note_wall(self.both(lambda log: log.append_batch(topic, list(bare))))
            return
        batch = [self._message(self._spec(data, topic)) for _ in range(count)]
        self.both(lambda log: log.append_batch(topic, batch))

    # --- idempotent producers -------------------------------------------------

    @rule(pid=st.sampled_from(PRODUCERS))
    def open_producer(self, pid: str) -> None:
        model, real = self.model.producer(pid), self.real.producer(pid)
        assert (real.epoch, real.last_sequence) == (model.epoch, model.last_sequence)
        self.producers.setdefault(pid, []).append((model, real))

    @precondition(lambda self: bool(self.producers))
    @rule(data=st.data(), topic=st.sampled_from(TOPICS), count=st.integers(1, 3))
    def producer_append(self, data: st.DataObject, topic: str, count: int) -> None:
        pid = data.draw(st.sampled_from(sorted(self.producers)))
        instances = self.producers[pid]
        pair = instances[-1]
        if data.draw(st.integers(0, 3)) == 0:
            pair = data.draw(st.sampled_from(instances))  # maybe a fenced one
        used = self.sequences.setdefault(pid, [])
        choices: list[st.SearchStrategy[int | None]] = [st.none(), st.none(), st.integers(0, 40)]
        if used:
            choices.append(st.sampled_from(used))  # a retry
        sequence = data.draw(st.one_of(*choices))
        batch = [self._message(self._spec(data, topic)) for _ in range(count)]
        model_out = outcome(lambda: pair[0].append_batch(topic, batch, sequence=sequence))
        real_out = outcome(lambda: pair[1].append_batch(topic, batch, sequence=sequence))
        assert real_out == model_out, f"sqlite {real_out!r} != memory {model_out!r}"
        if model_out[0] == "ok":
            used.append(pair[0]._core.next - 1 if sequence is None else sequence)

    # --- transactions ---------------------------------------------------------

    @rule(
        data=st.data(),
        topics=st.lists(st.sampled_from(TOPICS), max_size=4),
        group=st.sampled_from(GROUPS),
        offsets=st.dictionaries(
            st.tuples(st.sampled_from(TOPICS), st.integers(0, 2)), st.integers(0, 9), max_size=2
        ),
        end=st.sampled_from(["commit", "raise", "abort"]),
        with_producer=st.booleans(),
    )
    def transaction(
        self,
        data: st.DataObject,
        topics: list[str],
        group: str,
        offsets: dict[tuple[str, int], int],
        end: str,
        with_producer: bool,
    ) -> None:
        pid = data.draw(st.sampled_from(sorted(self.producers))) if self.producers else None
        pair = self.producers[pid][-1] if pid is not None and with_producer else None
        batch = [(topic, self._message(self._spec(data, topic))) for topic in topics]
        commits = {TopicPartition(t, p): o for (t, p), o in offsets.items()}

        def run(log: Log, producer: Producer | None) -> Any:
            tx = log.transaction(producer=producer)
            try:
                with tx:
                    for topic, message in batch:
                        tx.append_batch(topic, [message])
                    if commits:
                        tx.commit_offsets(group=group, offsets=commits)
                    if end == "raise":
                        raise _Rollback
                    if end == "abort":
                        tx.abort()
            except _Rollback:
                return "rolled back"
            return tx.positions

        model_out = outcome(lambda: run(self.model, pair[0] if pair else None))
        real_out = outcome(lambda: run(self.real, pair[1] if pair else None))
        assert real_out == model_out, f"sqlite {real_out!r} != memory {model_out!r}"

    # --- reads ----------------------------------------------------------------

    @rule(
        data=st.data(),
        topic=st.sampled_from(TOPICS),
        records_max=st.sampled_from([0, 1, 2, 5, 100]),
        bytes_max=st.integers(0, 40),
    )
    def read(self, data: st.DataObject, topic: str, records_max: int, bytes_max: int) -> None:
        count = self._partitions(topic)
        partition = data.draw(st.one_of(st.integers(0, count - 1), st.integers(-1, count)))
        try:
            start, end = self.model.backend.offset_bounds([TopicPartition(topic, partition)])[
                TopicPartition(topic, partition)
            ]
        except Error:
            start, end = 0, 0
        offset = data.draw(
            st.one_of(st.integers(start, max(start, end - 1)), st.integers(start - 1, end + 1))
        )
        expected = outcome(
            lambda: self.model.read(
                topic, partition, offset, records_max=records_max, bytes_max=bytes_max
            )
        )
        actual = outcome(
            lambda: self.real.read(
                topic, partition, offset, records_max=records_max, bytes_max=bytes_max
            )
        )
        if expected[0] == "ok" and actual[0] == "ok":
            self._same_records(expected[1], actual[1])
        else:
            assert actual == expected, f"sqlite {actual!r} != memory {expected!r}"

    # --- time, maintenance, reopening -----------------------------------------

    @rule(ms=steps_ms)
    def maintain(self, ms: int) -> None:
        self.clock.advance(ms)
        self.both(lambda log: log.maintain())

    @rule()
    def reopen(self) -> None:
        self._reopen_real()
        # Producers of the closed log are gone: reopen each id on both sides.
        for pid in list(self.producers):
            self.producers[pid] = []
            self.open_producer(pid)
        # Its consumers die without closing; their leases run out in both.
        self.consumers.clear()

    # --- consumers (the sans-I/O consumer core on each backend) ---------------

    @rule(
        name=st.sampled_from(CONSUMERS),
        group=st.one_of(st.none(), st.sampled_from(GROUPS)),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=2, unique=True),
        auto_commit=st.booleans(),
        lease_ms=st.sampled_from([200, 1000]),
        reset=st.sampled_from(["earliest", "latest"]),
    )
    def open_consumer(
        self,
        name: str,
        group: str | None,
        topics: list[str],
        auto_commit: bool,
        lease_ms: int,
        reset: Any,
    ) -> None:
        self._open_pair(
            name,
            topics,
            group=group,
            member_id=name,
            auto_commit=auto_commit,
            lease_ms=lease_ms,
            offset_reset=reset,
        )

    def _open_pair(self, name: str, topics: list[str], **options: Any) -> None:
        """Open the consumer ``name`` on both logs, alike down to its member id."""
        pair = []
        for log in (self.model, self.real):
            consumer = log.consumer(topics, **options)
            consumer._core.member_id = name  # a generated one would differ between the two
            # Heartbeat timing from the simulated clock: both sides decide alike.
            consumer._core.clock = lambda: self.clock() / 1000
            pair.append(consumer)
        self.consumers[name] = (pair[0], pair[1])

    @rule(
        instance=st.sampled_from(INSTANCES),
        group=st.sampled_from(GROUPS),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=2, unique=True),
        auto_commit=st.booleans(),
        lease_ms=st.sampled_from([200, 1000]),
    )
    def open_static_consumer(
        self, instance: str, group: str, topics: list[str], auto_commit: bool, lease_ms: int
    ) -> None:
        """A new incarnation of a static member; earlier ones stay in
        ``consumers`` (abandoned, as by a crash) and are polled as zombies."""
        name = f"{instance}.{self.incarnations}"
        self.incarnations += 1
        self._open_pair(
            name,
            topics,
            group=group,
            instance_id=instance,
            auto_commit=auto_commit,
            lease_ms=lease_ms,
        )

    @precondition(lambda self: bool(self.consumers))
    @rule(data=st.data(), records_max=st.sampled_from([1, 3, 500]))
    def poll(self, data: st.DataObject, records_max: int) -> None:
        model, real = self.consumers[data.draw(st.sampled_from(sorted(self.consumers)))]
        expected = outcome(lambda: model.poll(0, records_max=records_max))
        actual = outcome(lambda: real.poll(0, records_max=records_max))
        if expected[0] == "ok" and actual[0] == "ok":
            self._same_records(expected[1], actual[1])
        else:
            assert actual == expected, f"sqlite {actual!r} != memory {expected!r}"
        assert real.assignment() == model.assignment()
        assert real.positions() == model.positions()

    @precondition(lambda self: bool(self.consumers))
    @rule(data=st.data())
    def commit_consumed(self, data: st.DataObject) -> None:
        model, real = self.consumers[data.draw(st.sampled_from(sorted(self.consumers)))]
        expected = outcome(model.commit)
        actual = outcome(real.commit)
        assert actual == expected, f"sqlite {actual!r} != memory {expected!r}"

    @precondition(lambda self: bool(self.consumers))
    @rule(data=st.data())
    def close_consumer(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.consumers)))
        leave = data.draw(st.sampled_from([None, True, False]))
        model, real = self.consumers.pop(name)
        expected = outcome(lambda: model.close(leave=leave))
        actual = outcome(lambda: real.close(leave=leave))
        assert actual == expected, f"sqlite {actual!r} != memory {expected!r}"

    # --- consumer groups (the backend's membership protocol) ------------------

    def _view(self, group: str, member: str, call: Callable[[Log], Any]) -> None:
        view = self.both(call)
        if view is not None:
            self.views[(group, member)] = view

    def _member(self, data: st.DataObject, group: str) -> str:
        """A member, most often one that joined this group."""
        joined = sorted(m for g, m in self.views if g == group)
        if joined and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(joined))
        return data.draw(st.sampled_from(MEMBERS))

    @rule(
        group=st.sampled_from(GROUPS),
        member=st.sampled_from(MEMBERS),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=2, unique=True),
        lease_ms=st.sampled_from([200, 1000]),
        instance=st.one_of(st.none(), st.none(), st.sampled_from(INSTANCES)),
        replace=st.booleans(),
    )
    def join(
        self,
        group: str,
        member: str,
        topics: list[str],
        lease_ms: int,
        instance: str | None,
        replace: bool,
    ) -> None:
        self._view(
            group,
            member,
            lambda log: log.backend.group_join(
                group, member, tuple(topics), lease_ms, instance, replace
            ),
        )

    @rule(data=st.data(), group=st.sampled_from(GROUPS), ack=st.booleans())
    def heartbeat(self, data: st.DataObject, group: str, ack: bool) -> None:
        member = self._member(data, group)
        seen = self.views.get((group, member))
        acked = seen.generation if seen is not None and ack else 0
        self._view(group, member, lambda log: log.backend.group_heartbeat(group, member, acked))

    @rule(data=st.data(), group=st.sampled_from(GROUPS))
    def leave(self, data: st.DataObject, group: str) -> None:
        member = self._member(data, group)
        self.both(lambda log: log.backend.group_leave(group, member))
        self.views.pop((group, member), None)

    @rule(
        data=st.data(),
        group=st.sampled_from(GROUPS),
        offset=st.integers(0, 9),
        stale=st.integers(0, 3).map(lambda n: n == 0),
        append=st.one_of(st.none(), st.sampled_from(TOPICS)),
    )
    def commit(
        self, data: st.DataObject, group: str, offset: int, stale: bool, append: str | None
    ) -> None:
        """Commit offsets as a member (fenced by the generations it holds),
        optionally in one batch with an append: both or neither."""
        member = self._member(data, group)
        seen = self.views.get((group, member))
        held = dict(seen.assigned) if seen is not None else {TopicPartition("a", 0): 1}
        if stale:
            held = {tp: gen - 1 for tp, gen in held.items()}
        commit = OffsetCommit(group, member, dict.fromkeys(held, offset), held)
        item = AppendItem(0, b"k1", b"committed", (), self.clock())
        batch = WriteBatch({append: [item]} if append else {}, (commit,))

        def submit(log: Log) -> Any:
            waiter = SyncWaiter()
            log.backend.submit(batch, waiter)
            return waiter.wait()

        self.both(submit)

    @rule(ms=st.sampled_from([50, 100, 200, 1000, 1200]))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)

    # --- invariants -----------------------------------------------------------

    @invariant()
    def same_groups(self) -> None:
        for group in GROUPS:
            self.same("describe_group", group)
            self.same("backend.committed", group)
            self.same("backend.group_version", group)
        self.both(lambda log: log.groups())


class _Rollback(Exception):
    """Raised inside a transaction block to roll it back."""


class RetentionComparison(LogPair):
    """Retention and compaction alone, so that most steps append or maintain:
    the SQL in ``backends/sqlite/_maintain.py`` must remove exactly what
    ``_core.retention_start`` and ``_core.compaction_victims`` say, including
    at the exact boundaries the round sizes and times of the strategies hit."""

    @initialize(
        partitions=st.integers(1, 2),
        retention_ms=st.sampled_from([None, 500, 1000]),
        retention_bytes=st.sampled_from([None, 10, 20, 30]),
        tombstone_ms=st.sampled_from([0, 500, 1000]),
    )
    def start(
        self,
        partitions: int,
        retention_ms: int | None,
        retention_bytes: int | None,
        tombstone_ms: int,
    ) -> None:
        self.same(
            "create_topic",
            "d",
            partitions,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
        )
        self.same(
            "create_topic",
            "k",
            partitions,
            cleanup_policy="compact",
            tombstone_retention_ms=tombstone_ms,
        )

    @rule(
        topic=st.sampled_from(["d", "k"]),
        records=st.lists(
            st.tuples(st.sampled_from([b"k1", b"k2", b"k3"]), payloads, st.booleans(), ages),
            min_size=1,
            max_size=4,
        ),
    )
    def append(self, topic: str, records: list[tuple[bytes, bytes, bool, int]]) -> None:
        now = self.clock()
        if topic == "k":
            batch = [Message(None if dead else v, k, (), now - age) for k, v, dead, age in records]
        else:  # keyless: sizes 0, 5 and 10 sum to the retention_bytes boundaries
            batch = [Message(v, None, (), now - age) for _, v, _, age in records]
        self.same("append_batch", topic, batch)

    @rule(ms=steps_ms)
    def maintain(self, ms: int) -> None:
        self.clock.advance(ms)
        self.same("maintain")

    @rule(roll=st.integers(0, 3))
    def reopen(self, roll: int) -> None:
        if roll == 0:
            self._reopen_real()


TestLogModel = LogComparison.TestCase
# Steps are cheap (SQLite with sync="off"): run more and longer sequences
# than the profile's default, staying well under a minute in CI.
TestLogModel.settings = settings(
    max_examples=3 * settings().max_examples,
    stateful_step_count=80,
    suppress_health_check=[HealthCheck.too_slow],
)

TestRetentionModel = RetentionComparison.TestCase
TestRetentionModel.settings = settings(
    max_examples=5 * settings().max_examples,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow],
)
