"""Restarts change nothing: the same input with ``driver.restart()`` at random
points (every task's state stored as an epoch stores it, and new tasks built
from it) gives the same outputs, late and dead records, state and watermarks
as a run without restarts.

The flow is deliberately busy: windows of every kind with allowed lateness
and early results, late events routed on or left to the default side topic,
``map_with_state`` that deletes its state now and then, a count window, a
callback, and poison records on the dead-letter side.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled.streams import TIME_HEADER, Count, Flow, Session, TestDriver

from ._flows import (
    AGGREGATE,
    END_OF_TIME,
    aggregations,
    any_window,
    bounded_events,
    unbounded_events,
)
from ._oracle import Event

TOPICS = ("w", "late", "s", "c", "f")

FAST = settings(max_examples=8 * settings().max_examples)


def running(state: list[int], value: int) -> tuple[list[int] | None, list[int] | None]:
    """Per key [events, total]; emits every second event, forgets past 30."""
    n, total = state[0] + 1, state[1] + value
    out = [n, total] if n % 2 == 0 else None
    return (None if total > 30 else [n, total]), out


def busy_flow(
    spec: Any, agg: str, ooo: int, lateness: int, early: int | None, route_late: bool
) -> Flow:
    flow = Flow("busy", out_of_orderness_ms=ooo)
    src = flow.source("in")
    windowed = AGGREGATE[agg](
        src.window(spec, allowed_lateness_ms=lateness, early_every_ms=early)
    ).to_topic("w")
    if route_late:
        windowed.late.map(lambda v: v * 10).to_topic("late")
    windowed.filter(lambda r: r.timing != "early").to_callback(lambda key, value, ts: None)
    src.map_with_state(running, init=lambda: [0, 0]).to_topic("s")
    src.window(Count(3)).collect().to_topic("c")
    # A window over window results: the inner results reach it before its watermark moves.
    src.window(spec, allowed_lateness_ms=lateness).count().map(lambda r: r.value).window(
        Count(2)
    ).sum().to_topic("f")
    return flow


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    spec = draw(any_window, label="window")
    agg = draw(aggregations(spec), label="aggregation")
    ooo = draw(st.integers(0, 30), label="out_of_orderness_ms")
    lateness = draw(st.sampled_from([0, 0, 1, 10, 40]), label="allowed_lateness_ms")
    early = None
    if not isinstance(spec, Session):
        early = draw(st.sampled_from([None, None, 1, 3, 10]), label="early_every_ms")
    return busy_flow(spec, agg, ooo, lateness, early, draw(st.booleans(), label="route_late"))


def feed(
    flow: Flow,
    events: list[Event],
    partitions: int,
    restarts: frozenset[int],
    poison: frozenset[int],
) -> list[Any]:
    """Run ``events`` (a poison record before each index in ``poison``,
    restarts before those in ``restarts``); what is observable, before and
    after a final heartbeat."""
    driver = TestDriver(flow, partitions=partitions)
    for i, e in enumerate([*events, None]):
        if i in restarts:
            driver.restart()
        if i in poison:  # a heartbeat that is not a number: a dead letter
            driver.send(1, key="a", ts=5, headers=((TIME_HEADER, b"soon"),))
        if e is None:
            break
        if e.key is None:
            driver.advance(e.ts, partition=e.partition)
        else:
            driver.send(e.value, key=e.key, ts=e.ts, partition=e.partition)
    before = observe(driver, partitions)
    driver.advance(END_OF_TIME)
    return [before, observe(driver, partitions)]


def observe(driver: TestDriver, partitions: int) -> dict[str, Any]:
    """A deep copy: the driver's state lives on and changes in place."""
    return copy.deepcopy(
        {
            "outputs": {t: driver.output(t) for t in TOPICS},
            "late": list(driver.late),
            "dead": list(driver.dead),
            "callbacks": list(driver.callbacks),
            "state": [driver.state(p) for p in range(partitions)],
            "watermarks": [driver.watermark(p) for p in range(partitions)],
        }
    )


@FAST
@given(flow=flows(), data=st.data())
def test_restarts_change_nothing(flow: Flow, data: st.DataObject) -> None:
    partitions = data.draw(st.integers(1, 3), label="partitions")
    events = data.draw(
        st.one_of(
            unbounded_events(partitions), bounded_events(partitions, flow.out_of_orderness_ms)
        ),
        label="events",
    )
    points = st.integers(0, len(events))
    restarts = data.draw(
        st.one_of(st.frozensets(points, max_size=6), st.just(frozenset(range(len(events) + 1)))),
        label="restarts",
    )
    poison = data.draw(st.frozensets(points, max_size=2), label="poison")

    plain = feed(flow, events, partitions, frozenset(), poison)
    restarted = feed(flow, events, partitions, restarts, poison)

    assert restarted == plain
    assert len(plain[1]["dead"]) == len(poison)
    for o in plain[1]["dead"]:
        assert dict(o.value[1])["unbundled.error"].startswith(b"ValueError")


@given(flow=flows(), data=st.data())
def test_a_restart_right_after_another_changes_nothing(flow: Flow, data: st.DataObject) -> None:
    """Restoring restored state (nothing dirty in between) is the same state."""
    events = data.draw(unbounded_events(1), label="events")
    at = data.draw(st.integers(0, len(events)), label="at")
    once = feed(flow, events, 1, frozenset({at}), frozenset())
    driver = TestDriver(flow)
    for i, e in enumerate([*events, None]):
        if i == at:
            driver.restart()
            driver.restart()
            driver.restart()
        if e is None:
            break
        if e.key is None:
            driver.advance(e.ts)
        else:
            driver.send(e.value, key=e.key, ts=e.ts)
    assert observe(driver, 1) == once[0]
