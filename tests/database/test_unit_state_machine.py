"""Model-based test of the unit of work: SQLite and PostgreSQL held to memory.

Hypothesis runs random transactions mixing every part -- event appends with
right and wrong expected versions (and retries with the same event ids), log
records, offset commits for groups without members, idempotency completions,
failures and phases (of attempts claimed here, some taken over after the
:class:`SimClock` moved past their lease, so they are stale), key-value
writes, compare-and-set that matches and that does not, deletes, exceptions
raised inside the block, empty transactions -- and reopens the database, on
``unbundled.open(memory://)`` (the specification) and on the backend under
test, with one shared clock. Every write is added to both transactions and
must be refused (or accepted) alike; every commit must end alike (the same
``Committed``, or the same exception type with the same details); after every
step the invariant compares everything a user can observe.

PostgreSQL gets a fresh schema per example; its transactions hold every
part too, the log's records and offsets included.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import unbundled
from unbundled import TopicPartition
from unbundled.database import Database, Transaction
from unbundled.errors import Error
from unbundled.eventstore import ANY, NO_STREAM, STREAM_EXISTS
from unbundled.idempotency.api import Attempt
from unbundled.testing import SimClock
from unbundled.testing.unit_contract import Deposited

STREAMS = ("acc-1", "acc-2", "acc-3")
KEYS = ("k1", "k2", "k3")  # key-value
REQUESTS = ("req-1", "req-2", "req-3")  # idempotency keys
GROUPS = ("g1", "g2")
TOPICS = {"out": 2, "in": 2}  # name -> partitions, created on both at the start
LEASE_MS = 1_000
HELD_MAX = 6  # attempts kept for transactions to use (the oldest dropped)
STEPS = 50

Outcome = tuple[str, Any]

# Shrinking a failure can take Hypothesis's own five minutes (each example
# opens a fresh database); let it finish and print the smallest case rather
# than have pytest-timeout cut it off at its default 300 s.
pytestmark = pytest.mark.timeout(900)


def outcome(call: Callable[[], Any]) -> Outcome:
    """``("ok", result)``, or the exception as ``("error", (class name, details))``."""
    try:
        return ("ok", call())
    except Error as exc:
        return ("error", (type(exc).__name__, exc.details))
    except Boom as exc:
        return ("error", (type(exc).__name__, str(exc)))


class Boom(Exception):
    """Raised inside a transaction's block by the test."""


class Add(NamedTuple):
    """A write for both transactions: ``call(tx, side)``, side 0 the model's,
    1 the real one's; for an event append also its stream, expected version
    and number of events."""

    call: Callable[[Transaction, int], None]
    stream: str = ""
    expected: int = ANY
    events: int = 0


# --- what a transaction does, drawn before it runs; made concrete against the model --

values = st.sampled_from([b"", b"v", b"value"])
events_op = st.tuples(
    st.just("events"),
    st.sampled_from(STREAMS),
    st.lists(st.integers(0, 9), min_size=1, max_size=3),
    st.sampled_from(["right"] * 4 + ["wrong", "any", "no_stream", "exists", "retry"]),
)
record_op = st.tuples(
    st.just("record"),
    st.sampled_from(["out", "out", "out", "in", "nope"]),
    # A partition (2 is beyond the topics' two, now and then), or a key.
    st.one_of(st.sampled_from([0, 0, 0, 1, 1, 1, 2]), st.sampled_from([b"a", b"b", b"c"])),
    values,
)
offsets_op = st.tuples(
    st.just("offsets"),
    st.sampled_from(GROUPS),
    st.dictionaries(
        st.sampled_from([0, 0, 0, 1, 1, 1, 2]), st.integers(0, 6), min_size=1, max_size=2
    ),
)
idem_op = st.tuples(
    st.sampled_from(["complete", "complete", "fail", "phase"]),
    # An attempt held from earlier (maybe taken over since), one claimed on
    # a fresh key right before the transaction, or one claimed there and
    # then taken over after its lease ran out (stale).
    st.one_of(st.integers(0, HELD_MAX - 1), st.sampled_from(["fresh", "fresh", "stale"])),
    st.one_of(st.integers(0, 3), st.sampled_from(["ok", "p1", "p2"])),
)
kv_op = st.tuples(
    st.sampled_from(["write", "cas", "cas", "delete"]),
    st.sampled_from(KEYS),
    values,
    st.sampled_from(
        ["value", "value", "version", "version", "absent", "wrong_value", "wrong_version"]
    ),
)
ops = st.one_of(events_op, record_op, offsets_op, idem_op, idem_op, kv_op)


class UnitPair(RuleBasedStateMachine):
    """A database on the backend under test and one on memory, one clock."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = SimClock()
        self.model = unbundled.open(
            "memory://", clock=self.clock, events=[Deposited], lease_ms=LEASE_MS
        )
        self.real = self.open_real()
        self.held: list[tuple[Attempt, Attempt]] = []  # (model's, real's)
        self.ids = 0
        self.jobs = 0
        self.last_write: tuple[str, list[int], int, list[str]] | None = None
        for name, partitions in TOPICS.items():
            self.model.log.create_topic(name, partitions)
            self.real.log.create_topic(name, partitions)

    def open_real(self) -> Database:
        raise NotImplementedError

    def teardown(self) -> None:
        self.model.close()
        self.real.close()

    def both(self, call: Callable[[Database], Any]) -> Any:
        expected = outcome(lambda: call(self.model))
        actual = outcome(lambda: call(self.real))
        assert actual == expected, f"{self.real.url}: {actual!r} != memory {expected!r}"
        return expected

    # --- rules -----------------------------------------------------------------------

    @rule(ops=st.lists(ops, max_size=8), boom=st.sampled_from([False, False, False, False, True]))
    def transaction(self, ops: list[tuple[Any, ...]], boom: bool) -> None:
        txs = (self.model.transaction(), self.real.transaction())
        pending: dict[str, int | None] = {}  # stream -> version after this tx's writes
        for op in ops:
            add = self.prepare(op, pending)
            if add is None:
                continue
            got = self.add_both(add, txs)
            if got[0] == "error":
                event(f"add {op[0]}: {got[1][0]}")
            elif add.events:
                self.follow(add, pending)

        def commit(side: int) -> Any:
            tx = txs[side]
            with tx:
                if boom:
                    raise Boom("raised inside the block")
            return tx.result

        done = outcome(lambda: commit(0))
        assert outcome(lambda: commit(1)) == done, f"committing {ops!r} (raise: {boom})"
        # In the statistics (--hypothesis-show-statistics): how transactions ended.
        if done[0] == "error":
            event(f"commit: {done[1][0]}")
        elif done[1] is not None:
            parts = zip(("records", "events", "idempotency", "kv"), done[1], strict=False)
            event("commit: " + (", ".join(name for name, held in parts if held) or "empty"))
        for mine, theirs in self.held:
            assert (mine.completed, mine.result, mine.record) == (
                theirs.completed,
                theirs.result,
                theirs.record,
            )
        self.held = [pair for pair in self.held if not pair[0].completed]

    def add_both(self, add: Add, txs: tuple[Transaction, Transaction]) -> Outcome:
        got = outcome(lambda: add.call(txs[0], 0))
        assert outcome(lambda: add.call(txs[1], 1)) == got, f"adding {add!r}"
        return got

    def follow(self, add: Add, pending: dict[str, int | None]) -> None:
        """Note the version a stream has after the event append just added
        (None: known only at commit, so a later append must expect ANY).
        A second append to a stream extends the first, keeping its expectation."""
        vague = add.expected in (ANY, STREAM_EXISTS)
        before = pending.get(add.stream, None if vague else add.expected)
        pending[add.stream] = None if before is None else max(before, NO_STREAM) + add.events

    def prepare(self, op: tuple[Any, ...], pending: dict[str, int | None]) -> Add | None:
        """How to add ``op`` to the transactions (None: nothing to add)."""
        kind = op[0]
        if kind == "events":
            return self.prepare_events(op, pending)
        if kind == "record":
            _, topic, where, value = op
            stamp = self.clock.now()
            # Timestamps given: without one a record takes the wall clock.
            if isinstance(where, int):
                return Add(lambda tx, _: tx.append(topic, value, partition=where, timestamp=stamp))
            return Add(lambda tx, _: tx.append(topic, value, key=where, timestamp=stamp))
        if kind == "offsets":
            _, group, offsets = op
            positions = {TopicPartition("in", p): o for p, o in offsets.items()}
            return Add(lambda tx, _: tx.commit_offsets(group=group, offsets=positions))
        if kind in ("complete", "fail", "phase"):
            _, slot, value = op
            if isinstance(slot, str) or not self.held:
                self.jobs += 1
                if not self.claim_both(f"job-{self.jobs}", None):
                    return None
                slot = -1
                if op[1] == "stale":
                    self.clock.advance(LEASE_MS + 1)
                    if not self.claim_both(f"job-{self.jobs}", None):
                        return None
                    slot = -2
            pair = self.held[slot % len(self.held)]
            if kind == "complete":
                return Add(lambda tx, side: tx.complete(pair[side], value))
            if kind == "fail":
                return Add(lambda tx, side: tx.fail(pair[side], ValueError(f"failed {value}")))
            return Add(lambda tx, side: tx.record_phase(pair[side], f"phase-{value}", value))
        return self.prepare_kv(op)

    def prepare_events(self, op: tuple[Any, ...], pending: dict[str, int | None]) -> Add:
        _, stream, amounts, how = op
        if how == "retry" and self.last_write is not None:
            stream, amounts, expected, ids = self.last_write
        else:
            if stream in pending:
                right = pending[stream]
                right = ANY if right is None else right
            else:
                right = self.model.events.state(stream).version
            expected = {
                "right": right,
                "wrong": right + 2 if right >= 0 else 1,
                "any": ANY,
                "no_stream": NO_STREAM,
                "exists": STREAM_EXISTS,
                "retry": right,
            }[how]
            ids = [str(uuid.UUID(int=self.ids + i + 1)) for i in range(len(amounts))]
            self.ids += len(amounts)
        self.last_write = (stream, amounts, expected, ids)

        def add(tx: Transaction, _: int) -> None:
            tx.append_events(stream, [Deposited(amount=a) for a in amounts], expected, ids=ids)

        return Add(add, stream, expected, len(amounts))

    def prepare_kv(self, op: tuple[Any, ...]) -> Add:
        kind, key, value, how = op
        if kind == "write":
            return Add(lambda tx, _: tx.kv.write(key, value))
        if kind == "delete":
            return Add(lambda tx, _: tx.kv.delete(key))
        found = self.model.kv.read(key)
        now, version = (found.value, found.version) if found is not None else (None, 0)
        expectations: dict[str, dict[str, Any]] = {
            "value": {"expected_value": now},
            "version": {"expected_version": version},
            "absent": {"expected_value": None},
            "wrong_value": {"expected_value": (now or b"") + b"?"},
            "wrong_version": {"expected_version": version + 1},
        }
        expect = expectations[how]
        return Add(lambda tx, _: tx.kv.compare_and_set(key, new=value, **expect))

    @rule()
    def empty_transaction(self) -> None:
        def empty(db: Database) -> Any:
            with db.transaction() as tx:
                pass
            return tx.result

        self.both(empty)

    @rule(
        which=st.one_of(st.sampled_from(REQUESTS), st.integers(0, HELD_MAX - 1)),
        payload=st.sampled_from([None, None, None, None, 1]),
        late=st.booleans(),
    )
    def claim(self, which: str | int, payload: Any, late: bool) -> None:
        """Claim a key: a shared one, or the key of an attempt held (in
        progress: refused, or ``late``, after its lease, taken over)."""
        if late:
            self.clock.advance(LEASE_MS + 1)
        if isinstance(which, int):
            if not self.held:
                return
            which = self.held[which % len(self.held)][0].key
        self.claim_both(which, payload)

    def claim_both(self, key: str, payload: Any) -> bool:
        """Claim ``key`` on both; True if both now hold it (as the newest of :attr:`held`)."""
        attempts: list[Attempt] = []

        def claim(db: Database) -> Any:
            attempt = db.idempotency.attempt(key, payload)
            attempts.append(attempt)
            return (attempt.replayed, attempt.result, attempt.record)

        got = self.both(claim)
        if got[0] == "error":
            event(f"claim: {got[1][0]}")
        else:
            event("claim: " + ("replayed" if got[1][0] else f"token {min(got[1][2].token, 2)}"))
        if got[0] != "ok" or attempts[0].replayed:
            return False
        self.held = [*self.held, (attempts[0], attempts[1])][-HELD_MAX:]
        return True

    @rule(slot=st.integers(0, HELD_MAX - 1))
    def release(self, slot: int) -> None:
        if not self.held:
            return
        pair = self.held.pop(slot % len(self.held))
        got = outcome(lambda: self.model.idempotency.release(pair[0]))
        assert outcome(lambda: self.real.idempotency.release(pair[1])) == got

    @rule(ms=st.sampled_from([1, 400, LEASE_MS + 1, LEASE_MS + 1]))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule()
    def reopen(self) -> None:
        self.real.close()
        self.real = self.open_real()
        # The real attempts belong to the closed database; a restarted
        # process would claim again (and find the keys in progress).
        self.held = []

    # --- the invariant: everything observable is the same --------------------------

    @invariant()
    def same_state(self) -> None:
        expected = self.snapshot(self.model)
        actual = self.snapshot(self.real)
        for part, want in expected.items():
            assert actual[part] == want, f"{part}: {self.real.url} {actual[part]!r} != {want!r}"

    def snapshot(self, db: Database) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def events(stream: str) -> list[tuple[Any, ...]]:
            return [
                (e.id, e.version, e.position, e.type, e.event, e.metadata, e.recorded_ms)
                for e in db.events.read(stream)
            ]

        for stream in STREAMS:
            seen[f"events {stream}"] = outcome(lambda: events(stream))  # noqa: B023
            seen[f"state {stream}"] = db.events.state(stream)
        seen["$all"] = [(e.position, e.stream, e.version, e.id) for e in db.events.read_all()]
        for name, partitions in TOPICS.items():
            for partition in range(partitions):
                seen[f"log {name}[{partition}]"] = db.log.read(name, partition)
        seen["groups"] = {g: db.log.describe_group(g).committed for g in db.log.groups()}
        for key in KEYS:
            seen[f"kv {key}"] = db.kv.read(key)
        seen["keys"] = db.idempotency.records()
        return seen


class SqlitePair(UnitPair):
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="unbundled-unit-"))
        super().__init__()

    def open_real(self) -> Database:
        return unbundled.open(
            self.dir / "unit.db",
            sync="off",
            clock=self.clock,
            events=[Deposited],
            lease_ms=LEASE_MS,
            maintenance_interval_s=None,
        )

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresPair(UnitPair):
    def __init__(self) -> None:
        from tests.backends.postgres.conftest import server_url

        self.schema = f"test_{uuid.uuid4().hex[:16]}"
        self.url = f"{server_url()}?schema={self.schema}"
        super().__init__()

    def open_real(self) -> Database:
        return unbundled.open(
            self.url, sync="normal", clock=self.clock, events=[Deposited], lease_ms=LEASE_MS
        )

    def teardown(self) -> None:
        from tests.backends.postgres.conftest import drop_schema

        try:
            super().teardown()
        finally:
            drop_schema(self.schema)


_SETTINGS = settings(
    stateful_step_count=STEPS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSqliteUnit = SqlitePair.TestCase
# An example takes ~30 ms on SQLite and ~250 ms on PostgreSQL (a schema
# each): SQLite gets four times the profile's examples in about the same time.
TestSqliteUnit.settings = settings(_SETTINGS, max_examples=4 * _SETTINGS.max_examples)
TestPostgresUnit = PostgresPair.TestCase
TestPostgresUnit.settings = _SETTINGS
