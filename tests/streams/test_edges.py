"""The edges of the streams package: bad arguments are ``UsageError`` naming
the value, a raising function is ``OperatorFailed``, poison records go to the
dead letters with why, state that cannot be stored fails the epoch,
heartbeats close the windows of idle partitions, and an emitted result never
changes afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from unbundled import limits
from unbundled.errors import UsageError
from unbundled.streams import (
    TIME_HEADER,
    Count,
    Flow,
    Hopping,
    OperatorFailed,
    Session,
    Stream,
    TestDriver,
    Tumbling,
    WindowResult,
)

from ._flows import END_OF_TIME, results_by_partition, window_flow
from ._oracle import Event, batch_results

HUGE = limits.stream_window_ms_max + 1


def _usage(make: Callable[[], object], value: object) -> UsageError:
    with pytest.raises(UsageError) as caught:
        make()
    assert repr(value) in str(caught.value), str(caught.value)
    return caught.value


@pytest.mark.parametrize("bad", [0, -1, -(2**70), True, False, HUGE, 1.5, "10", None])
@pytest.mark.parametrize(
    "make",
    [
        Tumbling,
        lambda v: Hopping(v, 1),
        lambda v: Hopping(100, v),
        Session,
        Count,
    ],
    ids=["tumbling", "hopping-size", "hopping-slide", "session", "count"],
)
def test_window_sizes(make: Callable[[object], object], bad: object) -> None:
    _usage(lambda: make(bad), bad)


@pytest.mark.parametrize("bad", [-1, True, HUGE, 0.5])
def test_window_offsets(bad: object) -> None:
    _usage(lambda: Tumbling(10, bad), bad)  # type: ignore[arg-type]
    _usage(lambda: Hopping(10, 5, bad), bad)  # type: ignore[arg-type]


def test_hopping_slide_and_overlap() -> None:
    _usage(lambda: Hopping(10, 11), 11)  # events between windows would be in none
    over = limits.stream_windows_per_event_max
    Hopping(over, 1)  # the bound itself is allowed
    _usage(lambda: Hopping(over + 1, 1), 1)


@pytest.mark.parametrize(
    "bad", ["", "-x", ".x", "a b", "a/b", "a:b", "é", 5, None, b"x", "a\n", "\nab"]
)
def test_flow_names(bad: object) -> None:
    _usage(lambda: Flow(bad), bad)  # type: ignore[arg-type]


def test_flow_name_length() -> None:
    long = "x" * (limits.stream_name_chars_max + 1)
    with pytest.raises(UsageError, match=f"at most {limits.stream_name_chars_max}") as caught:
        Flow(long)
    assert caught.value.details["value"] == long


def test_flow_names_allowed() -> None:
    for good in ["a", "A.b_c-d", "0", "x" * limits.stream_name_chars_max]:
        assert Flow(good).name == good


@pytest.mark.parametrize("bad", [-1, True, HUGE, 1.0])
def test_out_of_orderness(bad: object) -> None:
    _usage(lambda: Flow("f", out_of_orderness_ms=bad), bad)  # type: ignore[arg-type]


def _src() -> Stream:
    return Flow("f").source("in")


def test_window_settings() -> None:
    with pytest.raises(UsageError, match="early_every_ms"):
        _src().window(Session(10), early_every_ms=5)
    with pytest.raises(UsageError, match="early_every_ms"):
        _src().window(Count(10), early_every_ms=5)
    with pytest.raises(UsageError, match="allowed_lateness_ms"):
        _src().window(Count(10), allowed_lateness_ms=5)
    for bad in (0, -1, True, HUGE):
        _usage(lambda: _src().window(Tumbling(10), early_every_ms=bad), bad)  # noqa: B023
    for bad in (-1, True, HUGE):
        _usage(lambda: _src().window(Tumbling(10), allowed_lateness_ms=bad), bad)  # noqa: B023
    _usage(lambda: _src().window(10), 10)  # type: ignore[arg-type]


def test_session_aggregate_needs_merge() -> None:
    with pytest.raises(UsageError, match="merge"):
        _src().window(Session(10)).aggregate(list, lambda a, v: [*a, v])
    _src().window(Session(10)).aggregate(list, lambda a, v: [*a, v], merge=lambda a, b: a + b)
    _src().window(Tumbling(10)).aggregate(list, lambda a, v: [*a, v])  # no merge needed


NOT_A_FUNCTION = 42


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.map(NOT_A_FUNCTION),
        lambda s: s.filter(NOT_A_FUNCTION),
        lambda s: s.flat_map(NOT_A_FUNCTION),
        lambda s: s.key_by(NOT_A_FUNCTION),
        lambda s: s.map_with_state(NOT_A_FUNCTION),
        lambda s: s.map_with_state(lambda st, v: (st, v), init=NOT_A_FUNCTION),
        lambda s: s.to_callback(NOT_A_FUNCTION),
        lambda s: s.window(Tumbling(5)).reduce(NOT_A_FUNCTION),
        lambda s: s.window(Tumbling(5)).sum(NOT_A_FUNCTION),
        lambda s: s.window(Tumbling(5)).aggregate(NOT_A_FUNCTION, lambda a, v: a),
        lambda s: s.window(Tumbling(5)).aggregate(list, lambda a, v: a, result=NOT_A_FUNCTION),
    ],
)
def test_functions_must_be_callable(call: Callable[[Stream], object]) -> None:
    _usage(lambda: call(_src()), NOT_A_FUNCTION)


def test_sources_and_sinks() -> None:
    flow = Flow("f")
    _usage(lambda: flow.source(""), "")
    _usage(lambda: flow.source("in", decode="xml"), "xml")  # type: ignore[arg-type]
    src = flow.source("in")
    with pytest.raises(UsageError, match="one source"):
        flow.source("other")
    _usage(lambda: src.to_topic(""), "")
    _usage(lambda: src.to_topic("out", encode="yaml"), "yaml")  # type: ignore[arg-type]
    for bad in ("1t", "a-b", "t;drop", "", "t" * 64, "t\n", "a b"):
        _usage(lambda: src.to_table(bad), bad)  # noqa: B023
    with pytest.raises(UsageError, match="no source"):
        TestDriver(Flow("empty"))


def test_driver_arguments() -> None:
    driver = TestDriver(window_flow(Tumbling(10), "count"), partitions=2)
    bad: Any
    for bad in (2, -1, True, "0"):
        _usage(lambda: driver.send(1, key="a", partition=bad), bad)  # noqa: B023
        _usage(lambda: driver.advance(5, partition=bad), bad)  # noqa: B023
    for bad in (-1, limits.timestamp_ms_max + 1, True, 1.5):
        _usage(lambda: driver.send(1, key="a", ts=bad), bad)  # noqa: B023
        _usage(lambda: driver.advance(bad), bad)  # noqa: B023
    for bad in (0, 1025, True):
        _usage(lambda: TestDriver(window_flow(Tumbling(10), "count"), partitions=bad), bad)  # noqa: B023
    assert driver.output("out") == [] and driver.late == [] and driver.dead == []


@pytest.mark.parametrize(
    "build",
    [
        lambda s: s.map(lambda v: 1 // v),
        lambda s: s.filter(lambda v: [][v]),
        lambda s: s.flat_map(lambda v: iter(1 // v for _ in range(2))),
        lambda s: s.key_by(lambda v: {}[v]),
        lambda s: s.map_with_state(lambda st, v: 1 // v),
        lambda s: s.map_with_state(lambda st, v: (st, v), init=lambda: 1 // 0),
        lambda s: s.window(Tumbling(5)).reduce(lambda a, b: 1 // 0),
        lambda s: s.window(Tumbling(5)).aggregate(list, lambda a, v: a, result=lambda a: 1 // 0),
    ],
)
def test_a_raising_function_is_operator_failed(build: Callable[[Stream], Any]) -> None:
    flow = Flow("f")
    build(flow.source("in")).to_topic("out")
    driver = TestDriver(flow)
    with pytest.raises(OperatorFailed) as caught:
        driver.send(0, key="a", ts=1)
        driver.send(0, key="a", ts=2)
        driver.advance(END_OF_TIME)
    assert caught.value.code == "operator_failed"
    assert "#1" in str(caught.value)  # names the operator
    assert driver.dead == []  # a failing function is not a poison record (nor a dead heartbeat)


def test_map_with_state_must_return_a_pair() -> None:
    flow = Flow("f")
    flow.source("in").map_with_state(lambda st, v: v).to_topic("out")
    with pytest.raises(OperatorFailed, match="state, output"):
        TestDriver(flow).send(1, key="a")


def test_key_by_must_return_a_key() -> None:
    flow = Flow("f")
    flow.source("in").key_by(lambda v: 1.5).to_topic("out")  # type: ignore[arg-type,return-value]
    _usage(lambda: TestDriver(flow).send(1, key="a"), 1.5)


def test_poison_records_are_dead_letters_with_why() -> None:
    flow = Flow("f")
    stream = flow.source("in", decode=msgspec.json.decode, timestamp=lambda v: v["t"])
    stream.window(Tumbling(10)).count().to_topic("out")
    driver = TestDriver(flow)
    bad = [b"{not json", b'{"t": -5}', b'{"t": "soon"}', b"[1]"]
    for raw in bad:
        driver.send(raw, key="a", ts=3)
    driver.send(b'{"t": 7}', key="a", headers=(("h", b"v"),))
    driver.send(b"{}", key="a", headers=((TIME_HEADER, b"later"),))  # a heartbeat not a number
    driver.advance(END_OF_TIME)

    assert [o.value[0] for o in driver.dead] == [*bad, b"{}"]
    for o in driver.dead:
        headers = dict(o.value[1])
        assert headers["unbundled.error"]
        assert headers["unbundled.source"].startswith(b"in/0/")
    assert [o.value.value for o in driver.output("out")] == [1]  # the good one counted


def test_state_that_cannot_be_stored_fails_the_epoch() -> None:
    for agg in ("state", "aggregate"):
        flow = Flow("f")
        if agg == "state":
            flow.source("in").map_with_state(lambda st, v: (object(), v)).to_topic("out")
        else:
            flow.source("in").window(Tumbling(10)).aggregate(object, lambda a, v: a)
        driver = TestDriver(flow)
        driver.send(1, key="a", ts=1)
        with pytest.raises(OperatorFailed, match="msgpack"):
            driver.restart()


def test_heartbeats_close_the_windows_of_idle_partitions() -> None:
    spec = Tumbling(10)
    driver = TestDriver(window_flow(spec, "sum"), partitions=2)
    events = [Event(0, "a", 1, 3), Event(1, "b", 2, 4), Event(1, "b", 5, 8), Event(0, "a", 1, 50)]
    for e in events:
        driver.send(e.value, key=e.key, ts=e.ts, partition=e.partition)
    # Partition 0 moved on; partition 1 is idle at 8: its window [0, 10) waits.
    assert results_by_partition(driver, "out", 2)[1] == []
    driver.advance(9, partition=1)
    assert results_by_partition(driver, "out", 2)[1] == []
    driver.advance(10, partition=1)
    expected = batch_results([e for e in events if e.partition == 1], spec, "sum")
    assert results_by_partition(driver, "out", 2)[1] == expected
    assert driver.watermark(1) == 10 and driver.watermark(0) == 50


def test_an_emitted_result_never_changes() -> None:
    """Early, on-time and late results of ``collect`` are what the window
    held when each was emitted, not what it holds later."""
    spec = Tumbling(100)
    flow = window_flow(spec, "collect", allowed_lateness_ms=50, early_every_ms=10)
    driver = TestDriver(flow)
    held: dict[int, list[int]] = {}  # window start: its values so far
    seen: list[tuple[WindowResult, list[int]]] = []
    for i, ts in enumerate([1, 15, 27, 28, 64, 99, 130, 40, 140, 60, 200, 70, 250]):
        before, late = len(driver.output("out")), len(driver.late)
        driver.send(i, key="a", ts=ts)
        if len(driver.late) == late:  # taken: the window has it from now on
            held.setdefault(spec.starts(ts)[0], []).append(i)
        for o in driver.output("out")[before:]:
            seen.append((o.value, list(held[o.value.start])))
    assert {r.timing for r, _ in seen} == {"early", "on_time", "late"}
    assert [o.value for o in driver.late] == [11]
    for emitted, at_the_time in seen:
        assert emitted.value == at_the_time, emitted


@pytest.mark.parametrize(
    "window", [Tumbling(100), Hopping(100, 50), Session(gap_ms=50)], ids=lambda w: type(w).__name__
)
def test_a_window_first_met_within_the_lateness_fires_at_once(window: Any) -> None:
    flow = Flow("lateness")
    flow.source("x").window(window, allowed_lateness_ms=1000).count().to_topic("o")
    d = TestDriver(flow)
    d.send(1, key="a", ts=500)
    d.send(1, key="b", ts=10)  # its windows ended before the watermark (500): no later move needed
    got = d.output("o")
    assert got and all(
        o.key == "b" and o.value.timing == "late" and o.value.value == 1 for o in got
    )


def test_state_that_would_come_back_changed_fails_the_epoch() -> None:
    flow = Flow("tuples")
    flow.source("x").map_with_state(lambda state, v: ((v, v), v)).to_topic("o")
    d = TestDriver(flow)
    d.send(1, key="a")
    with pytest.raises(OperatorFailed, match="come back changed"):
        d.restart()
