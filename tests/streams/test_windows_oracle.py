"""Windows against a batch oracle (``_oracle.py``): for random event streams,
what the TestDriver emits once a final heartbeat closes every window is what
a plain computation over all the events gives.

- Disorder within ``out_of_orderness_ms``: nothing is late, and every window
  (tumbling, hopping, session; count, sum, collect, reduce) holds exactly the
  batch answer, emitted in (end, key, start) order per partition.
- Disorder without bound: each event counts in exactly the windows the
  watermark still had open, or appears in ``driver.late`` -- never neither.
- Count windows: every ``size`` events of a key, in arrival order.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled.streams import Count, Flow, Output, Session, WindowResult

from ._flows import (
    AGGREGATE,
    aggregations,
    any_window,
    bounded_events,
    drive,
    results_by_partition,
    time_windows,
    tumbling,
    unbounded_events,
    window_flow,
)
from ._flows import sessions as session_windows
from ._oracle import (
    AGGREGATIONS,
    batch_results,
    count_results,
    late_split,
    partition_of,
    results_of_split,
    session_split,
)

# These run in milliseconds: many more examples than the profile's default.
FAST = settings(max_examples=5 * settings().max_examples)


def _comparable(results: list[WindowResult], spec: Any, agg: str) -> list[WindowResult]:
    """Sessions merge collected values in session order, not arrival order:
    compare those as multisets."""
    if isinstance(spec, Session) and agg == "collect":
        return [WindowResult(r.key, r.start, r.end, sorted(r.value), r.timing) for r in results]
    return results


@FAST
@given(st.data())
def test_bounded_disorder_gives_the_batch_answer(data: st.DataObject) -> None:
    partitions = data.draw(st.integers(1, 3), label="partitions")
    ooo = data.draw(st.integers(0, 40), label="out_of_orderness_ms")
    spec = data.draw(any_window, label="window")
    agg = data.draw(aggregations(spec), label="aggregation")
    events = data.draw(bounded_events(partitions, ooo), label="events")

    driver = drive(window_flow(spec, agg, ooo), events, partitions)

    assert driver.late == []
    assert driver.dead == []
    got = results_by_partition(driver, "out", partitions)
    for p in range(partitions):
        mine = [e for e in events if e.partition == p]
        expected = batch_results(mine, spec, agg)
        assert _comparable(got[p], spec, agg) == _comparable(expected, spec, agg), p
        # Every window closed and purged: nothing stays in the state.
        assert all(not keys for keys in driver.state(p).values())


@FAST
@given(st.data())
def test_unbounded_disorder_loses_no_event(data: st.DataObject) -> None:
    """Each event lands in the windows still open for it, or in ``late``."""
    partitions = data.draw(st.integers(1, 3), label="partitions")
    ooo = data.draw(st.integers(0, 60), label="out_of_orderness_ms")
    spec = data.draw(time_windows, label="window")
    agg = data.draw(aggregations(spec), label="aggregation")
    events = data.draw(unbounded_events(partitions), label="events")

    driver = drive(window_flow(spec, agg, ooo), events, partitions)

    got = results_by_partition(driver, "out", partitions)
    late_by_partition: dict[int, list[Output]] = {p: [] for p in range(partitions)}
    for o in driver.late:
        late_by_partition[partition_of(o.key, partitions)].append(o)
    for p in range(partitions):
        late, on_time = late_split([e for e in events if e.partition == p], spec, ooo)
        assert got[p] == results_of_split(on_time, agg), p
        assert late_by_partition[p] == [Output(e.key, e.value, e.ts) for e in late], p


@FAST
@given(
    partitions=st.integers(1, 3),
    ooo=st.integers(0, 40),
    spec=session_windows,
    agg=st.sampled_from(["count", "sum", "collect", "max"]),
    data=st.data(),
)
def test_unbounded_disorder_in_sessions(
    partitions: int, ooo: int, spec: Session, agg: str, data: st.DataObject
) -> None:
    """Sessions under a watermark: an event joins the open sessions it is
    near, or opens one, or (when that one would already be closed) is late."""
    events = data.draw(unbounded_events(partitions), label="events")
    driver = drive(window_flow(spec, agg, ooo), events, partitions)

    got = results_by_partition(driver, "out", partitions)
    late_by_partition: dict[int, list[Output]] = {p: [] for p in range(partitions)}
    for o in driver.late:
        late_by_partition[partition_of(o.key, partitions)].append(o)
    for p in range(partitions):
        late, found = session_split([e for e in events if e.partition == p], spec.gap_ms, ooo)
        expected = sorted(
            (WindowResult(k, s, end, AGGREGATIONS[agg](v)) for k, s, end, v in found),
            key=lambda r: (r.end, r.key, r.start),
        )
        # Merged sessions collect in session order: compare values as multisets.
        assert _comparable(got[p], spec, agg) == _comparable(expected, spec, agg), p
        assert late_by_partition[p] == [Output(e.key, e.value, e.ts) for e in late], p


@FAST
@given(
    partitions=st.integers(1, 3),
    ooo=st.integers(0, 60),
    spec=st.one_of(tumbling, session_windows),
    data=st.data(),
)
def test_counts_are_conserved(partitions: int, ooo: int, spec: Any, data: st.DataObject) -> None:
    """Tumbling windows and sessions hold each on-time event once: the
    on-time counts and the late events add up to the events sent."""
    events = data.draw(unbounded_events(partitions), label="events")
    driver = drive(window_flow(spec, "count", ooo), events, partitions)

    counted = sum(o.value.value for o in driver.output("out"))
    assert all(o.value.timing == "on_time" for o in driver.output("out"))
    sent = sum(1 for e in events if e.key is not None)
    assert counted + len(driver.late) == sent


@FAST
@given(
    partitions=st.integers(1, 3),
    size=st.integers(1, 6),
    agg=st.sampled_from(sorted(AGGREGATE)),
    data=st.data(),
)
def test_count_windows(partitions: int, size: int, agg: str, data: st.DataObject) -> None:
    """Every ``size`` events of a key form a window, whatever their event
    times (nothing is late for a count window); the rest wait in the state."""
    events = data.draw(unbounded_events(partitions), label="events")
    flow = Flow("counts")
    AGGREGATE[agg](flow.source("in").window(Count(size))).to_topic("out")
    driver = drive(flow, events, partitions)

    assert driver.late == []
    got = results_by_partition(driver, "out", partitions)
    for p in range(partitions):
        mine = [e for e in events if e.partition == p]
        assert got[p] == count_results(mine, Count(size), agg), p
        (state,) = driver.state(p).values()
        for key in {e.key for e in mine if e.key is not None}:
            n = sum(1 for e in mine if e.key == key)
            assert (state[key][1] if key in state else 0) == n % size
