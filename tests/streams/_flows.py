"""Shared pieces of the streams tests: hypothesis strategies for windows and
event streams, the flows they build, and running them on a TestDriver."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import strategies as st

from unbundled import limits
from unbundled.streams import (
    Flow,
    Hopping,
    Session,
    TestDriver,
    Tumbling,
    Windowed,
    WindowResult,
    WindowStream,
)

from ._oracle import KEYS, Event, non_commutative, partition_of

#: A heartbeat far enough ahead to close every window of every test.
END_OF_TIME = limits.timestamp_ms_max

AGGREGATE: dict[str, Callable[[Windowed], WindowStream]] = {
    "count": lambda w: w.count(),
    "sum": lambda w: w.sum(),
    "collect": lambda w: w.collect(),
    "reduce": lambda w: w.reduce(non_commutative),
    "max": lambda w: w.reduce(max),
}

tumbling = st.builds(Tumbling, st.integers(1, 40), st.integers(0, 50))
hopping = st.integers(1, 40).flatmap(
    lambda size: st.builds(
        Hopping, st.just(size), st.integers(max(1, size // 6), size), st.integers(0, 50)
    )
)
sessions = st.builds(Session, st.integers(1, 30))
time_windows = st.one_of(tumbling, hopping)
any_window = st.one_of(tumbling, hopping, sessions)


def aggregations(spec: Any) -> st.SearchStrategy[str]:
    """Sessions merge accumulators in start order, not arrival order, so a
    non-commutative reduce has no batch answer there; ``max`` stands in."""
    if isinstance(spec, Session):
        return st.sampled_from(["count", "sum", "collect", "max"])
    return st.sampled_from(["count", "sum", "collect", "reduce", "max"])


@st.composite
def bounded_events(draw: st.DrawFn, partitions: int, out_of_orderness_ms: int) -> list[Event]:
    """Event ``i`` at ``base + i * step - jitter`` with ``jitter <= out_of_orderness_ms``:
    disorder the watermark allows for, so no event may be late."""
    step = draw(st.integers(0, 8))
    base = out_of_orderness_ms + draw(st.integers(0, 100))
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(KEYS), st.integers(-5, 20), st.integers(0, out_of_orderness_ms)
            ),
            max_size=50,
        )
    )
    return [
        Event(partition_of(key, partitions), key, value, base + i * step - jitter)
        for i, (key, value, jitter) in enumerate(items)
    ]


@st.composite
def unbounded_events(draw: st.DrawFn, partitions: int, heartbeats: bool = True) -> list[Event]:
    """Event times in any order; now and then a heartbeat on one partition."""
    out = []
    for _ in range(draw(st.integers(0, 60))):
        if heartbeats and draw(st.integers(0, 9)) == 0:
            out.append(
                Event(draw(st.integers(0, partitions - 1)), None, 0, draw(st.integers(0, 250)))
            )
            continue
        key = draw(st.sampled_from(KEYS))
        out.append(
            Event(
                partition_of(key, partitions),
                key,
                draw(st.integers(-5, 20)),
                draw(st.integers(0, 200)),
            )
        )
    return out


def window_flow(
    spec: Any, agg: str, out_of_orderness_ms: int = 0, name: str = "f", **window_args: Any
) -> Flow:
    flow = Flow(name, out_of_orderness_ms=out_of_orderness_ms)
    AGGREGATE[agg](flow.source("in").window(spec, **window_args)).to_topic("out")
    return flow


def drive(
    flow: Flow,
    events: Iterable[Event],
    partitions: int,
    *,
    restarts: frozenset[int] = frozenset(),
    final: bool = True,
) -> TestDriver:
    """Send ``events`` (heartbeats as ``advance``), restarting the driver
    before the events whose index is in ``restarts`` (``len(events)``: after
    the last); then, with ``final``,
    a heartbeat at the end of time on every partition."""
    driver = TestDriver(flow, partitions=partitions)
    list_events = list(events)
    for i, e in enumerate(list_events):
        if i in restarts:
            driver.restart()
        if e.key is None:
            driver.advance(e.ts, partition=e.partition)
        else:
            driver.send(e.value, key=e.key, ts=e.ts, partition=e.partition)
    if len(list_events) in restarts:
        driver.restart()
    if final:
        driver.advance(END_OF_TIME)
    return driver


def results_by_partition(
    driver: TestDriver, topic: str, partitions: int
) -> dict[int, list[WindowResult]]:
    """The window results ``topic`` got, split by the partition of their key
    (each partition's own order kept)."""
    out: dict[int, list[WindowResult]] = {p: [] for p in range(partitions)}
    for o in driver.output(topic):
        assert isinstance(o.value, WindowResult)
        assert o.key == o.value.key
        assert o.ts == o.value.end - 1  # a result's event time is its window's last instant
        out[partition_of(o.key, partitions)].append(o.value)
    return out
