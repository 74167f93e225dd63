"""Every number a library caller sets is checked at the boundary (issue 9, item 4).

The shared checks (``unbundled._bounds``) are held to their definition by
hypothesis; then every field of ``TopicConfig`` and the numeric parameters
of the facades get out-of-range values (huge and negative ints, bools,
floats, NaN, the infinities, strings) and must raise ``UsageError`` naming
the parameter, with nothing written. ``TopicConfig``'s fields are found by
introspection: a new field without a bound in ``CONFIG_BOUNDS`` fails.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unbundled import EventStore, Idempotency, Log, ProjectionRunner, UsageError, limits
from unbundled._bounds import check_int, check_seconds
from unbundled.backends.sqlite import SqliteBackend
from unbundled.consistency.causal import Replica
from unbundled.consistency.kv import KV
from unbundled.eventstore import Event
from unbundled.log._protocol import TopicConfig, TopicPartition

# --- the shared checks ----------------------------------------------------------------

anything = st.one_of(
    st.integers(),
    st.booleans(),
    st.floats(),
    st.none(),
    st.text(max_size=3),
    st.just(10**30),
    st.just(-(10**30)),
)


@given(value=anything, low=st.integers(-5, 5), span=st.integers(0, 10**20))
def test_check_int_accepts_exactly_ints_in_range(value: object, low: int, span: int) -> None:
    high = low + span
    fits = type(value) is int and low <= value <= high
    try:
        assert check_int("n", value, low, high) == value and fits
    except UsageError as exc:
        assert not fits
        assert exc.details == {"n": value} and repr(value) in exc.message


@given(value=anything, positive=st.booleans())
def test_check_seconds_accepts_exactly_finite_numbers_in_range(
    value: object, positive: bool
) -> None:
    fits = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
        and value <= limits.wait_s_max
    )
    try:
        assert check_seconds("t", value, positive=positive) == value and fits
    except UsageError as exc:
        assert not fits and "t must be a number of seconds" in exc.message


# --- values out of a range -------------------------------------------------------------


def bad_ints(low: int, high: int) -> st.SearchStrategy[object]:
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.booleans(),
        st.floats(),
        st.sampled_from(["1", b"1", [1]]),
    )


def bad_seconds(low: float = 0.0, high: float = limits.wait_s_max) -> st.SearchStrategy[object]:
    return st.one_of(
        st.floats(max_value=low, exclude_max=True),
        st.floats(min_value=high, exclude_min=True),
        st.integers(min_value=int(high) + 1),
        st.sampled_from([math.nan, math.inf, -math.inf, True, "1", None]),
    )


# --- TopicConfig ----------------------------------------------------------------------

CONFIG_BOUNDS = {
    "partitions": (1, limits.partitions_max),
    "retention_ms": (1, limits.retention_ms_max),
    "retention_bytes": (1, limits.retention_bytes_max),
    "tombstone_retention_ms": (0, limits.retention_ms_max),
    "record_bytes_max": (1, limits.record_bytes_max),
}


def test_every_numeric_config_field_has_a_bound() -> None:
    numeric = {f.name for f in msgspec.structs.fields(TopicConfig) if f.name != "cleanup_policy"}
    assert numeric == set(CONFIG_BOUNDS)


@pytest.fixture(params=["memory", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    url = "memory://" if request.param == "memory" else str(tmp_path / "log.db")
    with Log.open(url, sync="off") as opened:
        yield opened


@pytest.mark.parametrize("field", sorted(CONFIG_BOUNDS))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_out_of_range_config_field_creates_no_topic(
    log: Log, field: str, data: st.DataObject
) -> None:
    value = data.draw(bad_ints(*CONFIG_BOUNDS[field]), label=field)
    with pytest.raises(UsageError, match=field) as raised:
        log.create_topic("t", **{field: value})  # type: ignore[arg-type]
    assert raised.value.details == {field: value}
    assert log.topics() == []


def test_the_issue_retention_is_refused(log: Log) -> None:
    """Item 4's value: accepted before, then it killed the writer thread."""
    with pytest.raises(UsageError, match="retention_ms"):
        log.create_topic("r", retention_ms=999999999999999999999999)
    assert log.topics() == []


# --- the facades' parameters ------------------------------------------------------------


class Noted(Event, frozen=True):
    n: int


class Setup:
    """One store of each kind on SQLite, with a little in it; ``written()``
    is what a refused call must leave unchanged."""

    def __init__(self, root: Path) -> None:
        self.log = Log.open(root / "log.db", sync="off")
        self.log.create_topic("t")
        self.log.append("t", b"x")
        self.producer = self.log.producer("p")
        self.consumer = self.log.consumer("t")
        self.store = EventStore.open(root / "events.db", sync="off", events=[Noted])
        self.store.append("s", [Noted(n=1)])
        self.idem = Idempotency.open(root / "idem.db", sync="off")
        self.kv = KV.open(root / "kv.db", sync="off")
        self.kv.write("k", b"v")
        self.replica = Replica(self.log, "a", ["a", "b"], topic="causal")

    def written(self) -> tuple[object, ...]:
        return (
            self.log.end_offsets("t"),
            self.store.safe_position(),
            self.kv.read("k"),
            list(self.idem.records()),
        )

    def close(self) -> None:
        self.replica.close()
        self.consumer.close()
        for part in (self.log, self.store, self.idem, self.kv):
            part.close()


Call = Callable[[Setup, Any], object]
INT = limits.position_max
CALLS: dict[str, tuple[st.SearchStrategy[object], Call]] = {
    "Log.append timestamp": (
        bad_ints(0, limits.timestamp_ms_max),
        lambda s, v: s.log.append("t", b"x", timestamp=v),
    ),
    "Log.read offset": (bad_ints(0, INT), lambda s, v: s.log.read("t", 0, v)),
    "Log.read records_max": (
        bad_ints(1, limits.read_records_max),
        lambda s, v: s.log.read("t", records_max=v),
    ),
    "Log.read bytes_max": (
        bad_ints(1, limits.read_bytes_max),
        lambda s, v: s.log.read("t", bytes_max=v),
    ),
    "Log.scan timeout_s": (
        bad_seconds().filter(lambda v: v is not None),
        lambda s, v: next(s.log.scan("t", follow=True, timeout_s=v)),
    ),
    "Producer.append sequence": (
        bad_ints(0, INT),
        lambda s, v: s.producer.append("t", b"x", sequence=v),
    ),
    "Log.consumer lease_ms": (
        bad_ints(limits.lease_ms_min, limits.lease_ms_max),
        lambda s, v: s.log.consumer("t", group="g", lease_ms=v),
    ),
    "Log.consumer auto_commit_interval_s": (
        bad_seconds(),
        lambda s, v: s.log.consumer("t", group="g", auto_commit_interval_s=v),
    ),
    "Consumer.poll timeout_s": (bad_seconds(), lambda s, v: s.consumer.poll(timeout_s=v)),
    "Consumer.poll records_max": (
        bad_ints(1, limits.poll_records_max),
        lambda s, v: s.consumer.poll(0, records_max=v),
    ),
    "Transaction.commit_offsets offset": (
        bad_ints(0, INT),
        lambda s, v: s.log.transaction().commit_offsets(
            group="g", offsets={TopicPartition("t", 0): v}
        ),
    ),
    "EventStore.append expected_version": (
        bad_ints(0, INT).filter(lambda v: v not in (-1, -2, -4)),  # ANY, NO_STREAM, STREAM_EXISTS
        lambda s, v: s.store.append("s", [Noted(n=2)], expected_version=v),
    ),
    "EventStore.read from_version": (
        bad_ints(0, INT).filter(lambda v: v is not None),
        lambda s, v: s.store.read("s", v),
    ),
    "EventStore.read limit": (
        bad_ints(1, limits.read_events_max),
        lambda s, v: s.store.read("s", limit=v),
    ),
    "EventStore.read_all after_position": (bad_ints(0, INT), lambda s, v: s.store.read_all(v)),
    "EventStore.subscribe after_position": (
        bad_ints(0, INT),
        lambda s, v: s.store.subscribe(v),
    ),
    "EventStore.subscribe batch_size": (
        bad_ints(1, limits.read_events_max),
        lambda s, v: s.store.subscribe(batch_size=v),
    ),
    "Subscription.poll timeout_s": (
        bad_seconds(),
        lambda s, v: s.store.subscribe().poll(v),
    ),
    "ProjectionRunner conflict_backoff_s": (
        bad_seconds(),
        lambda s, v: ProjectionRunner(s.store, [], conflict_backoff_s=v),
    ),
    "Idempotency lease_ms": (
        bad_ints(limits.lease_ms_min, limits.idempotency_lease_ms_max),
        lambda s, v: Idempotency(s.idem.backend, lease_ms=v),
    ),
    "Idempotency retention_ms": (
        bad_ints(limits.lease_ms_min, limits.idempotency_retention_ms_max),
        lambda s, v: Idempotency(s.idem.backend, retention_ms=v),
    ),
    "Idempotency.call wait_s": (
        bad_seconds().filter(lambda v: v is not None),
        lambda s, v: s.idem.call("key", None, lambda attempt: 1, wait_s=v),
    ),
    "Idempotency.records limit": (
        bad_ints(1, limits.read_records_max),
        lambda s, v: s.idem.records(limit=v),
    ),
    "KV.compare_and_set expected_version": (
        bad_ints(0, INT),
        lambda s, v: s.kv.compare_and_set("k", new=b"w", expected_version=v),
    ),
    "Replica.get timeout_s": (
        bad_seconds().filter(lambda v: v is not None),
        lambda s, v: s.replica.get("k", timeout_s=v),
    ),
    "Replica.sync wait_s": (bad_seconds(), lambda s, v: s.replica.sync(v)),
    "SqliteBackend maintenance_interval_s": (
        bad_seconds(low=0.0).filter(lambda v: v is not None),
        lambda s, v: SqliteBackend(s.log.url.removeprefix("sqlite:///"), maintenance_interval_s=v),
    ),
}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with contextlib.closing(Setup(tmp_path)) as opened:
        yield opened


@pytest.mark.parametrize("name", sorted(CALLS))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=15)
@given(data=st.data())
def test_an_out_of_range_argument_is_refused_and_writes_nothing(
    setup: Setup, name: str, data: st.DataObject
) -> None:
    values, call = CALLS[name]
    value = data.draw(values, label=name.rsplit(maxsplit=1)[-1])
    before = setup.written()
    with pytest.raises(UsageError) as raised:
        call(setup, value)
    parameter = name.rsplit(maxsplit=1)[-1]
    assert parameter in raised.value.message or parameter in str(raised.value.details)
    assert setup.written() == before
