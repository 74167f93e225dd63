"""The linearizability checker on hand-made histories, generated ones, and
against a brute-force reference that tries every order."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled import UsageError
from unbundled.consistency.checker import (
    UNKNOWN,
    History,
    Model,
    Operation,
    Recorder,
    Verdict,
    append_log,
    check,
    generate_history,
    kv,
    queue,
    register,
)

LIN = Verdict.LINEARIZABLE
NOT = Verdict.NOT_LINEARIZABLE


def op(client: Hashable, input: Any, output: Any, call: float, ret: float | None) -> Operation:
    return Operation(client, input, UNKNOWN if ret is None else output, call, ret)


def verdict(ops: Sequence[Operation], model: Model[Any] | None = None) -> Verdict:
    return check(History.of(ops), model or register()).verdict


# --- register ------------------------------------------------------------------------


def test_sequential_register_history() -> None:
    ops = [
        op(0, ("write", 1), None, 0, 1),
        op(1, ("read",), 1, 2, 3),
        op(0, ("cas", 1, 2), True, 4, 5),
        op(1, ("read",), 2, 6, 7),
        op(1, ("cas", 1, 3), False, 8, 9),
        op(0, ("delete",), None, 10, 11),
        op(1, ("read",), None, 12, 13),
    ]
    assert verdict(ops) is LIN


def test_stale_read_after_a_completed_write_is_a_violation() -> None:
    ops = [op(0, ("write", 1), None, 0, 1), op(1, ("read",), None, 2, 3)]
    assert verdict(ops) is NOT


@pytest.mark.parametrize("seen", [None, 1])
def test_a_read_concurrent_with_a_write_may_see_either_value(seen: int | None) -> None:
    ops = [op(0, ("write", 1), None, 0, 10), op(1, ("read",), seen, 2, 3)]
    assert verdict(ops) is LIN


def test_two_reads_cannot_see_the_new_value_then_the_old() -> None:
    ops = [
        op(0, ("write", 1), None, 0, 10),
        op(1, ("read",), 1, 1, 2),
        op(2, ("read",), None, 3, 4),  # after a read that saw 1: must see 1 too
    ]
    assert verdict(ops) is NOT


def test_initial_value() -> None:
    ops = [op(0, ("read",), 0, 0, 1)]
    assert check(History.of(ops), register(initial=0)).ok
    assert verdict(ops) is NOT


@pytest.mark.parametrize("seen", [None, 5])
def test_a_crashed_write_may_take_effect_later_or_never(seen: int | None) -> None:
    ops = [
        op(0, ("write", 5), None, 0, None),  # never returned
        op(1, ("read",), seen, 100, 101),
        op(1, ("read",), seen, 102, 103),
    ]
    assert verdict(ops) is LIN


def test_a_crashed_write_takes_effect_once() -> None:
    ops = [
        op(0, ("write", 5), None, 0, None),
        op(1, ("write", 6), None, 1, 2),
        op(1, ("read",), 5, 3, 4),
        op(1, ("write", 6), None, 5, 6),
        op(1, ("read",), 5, 7, 8),  # the crashed write cannot happen twice
    ]
    assert verdict(ops) is NOT


def test_a_crashed_write_cannot_take_effect_before_its_call() -> None:
    ops = [op(1, ("read",), 5, 0, 1), op(0, ("write", 5), None, 2, None)]
    assert verdict(ops) is NOT


def test_failed_cas_needs_a_moment_when_the_value_differed() -> None:
    always_one = [op(0, ("write", 1), None, 0, 1), op(1, ("cas", 1, 2), False, 2, 3)]
    assert verdict(always_one) is NOT
    racing = [*always_one[:1], op(2, ("write", 3), None, 2, 5), op(1, ("cas", 1, 2), False, 2, 3)]
    assert verdict(racing) is LIN


def test_a_crashed_cas_swaps_only_if_it_matched() -> None:
    swapped = [
        op(0, ("write", 1), None, 0, 1),
        op(1, ("cas", 1, 2), None, 2, None),
        op(0, ("read",), 2, 3, 4),
    ]
    assert verdict(swapped) is LIN
    unmatched = [
        op(0, ("write", 7), None, 0, 1),
        op(1, ("cas", 1, 2), None, 2, None),
        op(0, ("read",), 2, 3, 4),
    ]
    assert verdict(unmatched) is NOT


def test_returned_with_unknown_output_accepts_any_value() -> None:
    ops = [op(0, ("write", 1), None, 0, 1), Operation(1, ("read",), UNKNOWN, 2, 3)]
    assert verdict(ops) is LIN


def test_empty_history_is_linearizable() -> None:
    result = check([], register())
    assert result.ok and result.partitions == 0


# --- the explanation -------------------------------------------------------------------


def test_shortest_failing_prefix_and_culprit() -> None:
    ops = [
        op(0, ("write", 1), None, 0, 1),
        op(1, ("read",), 1, 2, 3),
        op(0, ("write", 2), None, 4, 5),
        op(1, ("read",), 1, 6, 7),  # stale: the violation
        op(0, ("write", 3), None, 8, 9),
        op(1, ("read",), 3, 10, 11),
    ]
    result = check(History.of(ops), register())
    assert result.verdict is NOT
    violation = result.violation
    assert violation is not None
    assert [o.input for o in violation.operations] == [o.input for o in ops[:4]]
    assert violation.culprit.input == ("read",) and violation.culprit.output == 1
    assert violation.time == 7 and violation.partition_size == 6
    # The longest partial order places the first three, then gets stuck.
    assert len(violation.longest) == 3 and violation.states == (1, 1, 2)


def test_prefix_cut_turns_in_flight_operations_unknown() -> None:
    ops = [
        op(0, ("write", 1), None, 0, 100),  # in flight when the violation happens
        op(1, ("read",), 2, 2, 3),  # 2 was never written
    ]
    violation = check(History.of(ops), register()).violation
    assert violation is not None
    write = next(o for o in violation.operations if o.input == ("write", 1))
    assert write.return_time is None and write.output is UNKNOWN


def test_html_picture_of_a_violation_is_self_contained() -> None:
    ops = [op(0, ("write", 1), None, 0, 1), op(1, ("read",), None, 2, 3)]
    page = check(History.of(ops), register()).html(title="stale <read>")
    assert page.startswith("<!DOCTYPE html>") and "stale &lt;read&gt;" in page
    assert "not linearizable" in page and "no linearization from here" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    root = ET.fromstring(svg)  # well-formed
    bars = root.findall(".//{http://www.w3.org/2000/svg}rect")
    assert len(bars) == 1 + 2  # the hatch pattern's, and one per operation
    assert "✗ read() -&gt; None" in page  # the culprit is marked


def test_html_of_a_linearizable_result() -> None:
    page = check([op(0, ("write", 1), None, 0, 1)], register()).html()
    assert "<strong>linearizable</strong>" in page and "<svg" not in page


# --- key-value map, partitioned ---------------------------------------------------------


def test_kv_is_checked_key_by_key() -> None:
    ops = [
        op(0, ("put", "a", 1), None, 0, 1),
        op(1, ("put", "b", 2), None, 0, 1),
        op(0, ("get", "a"), 1, 2, 3),
        op(1, ("get", "b"), 2, 2, 3),
        op(2, ("append", "c", "x"), None, 4, 5),
        op(2, ("append", "c", "y"), None, 6, 7),
        op(2, ("get", "c"), "xy", 8, 9),
        op(1, ("cas", "b", 2, 3), True, 10, 11),
        op(1, ("delete", "a"), None, 12, 13),
        op(0, ("get", "a"), None, 14, 15),
    ]
    result = check(History.of(ops), kv())
    assert result.ok and result.partitions == 3
    unpartitioned = check(History.of(ops), kv(), partition=False)
    assert unpartitioned.ok and unpartitioned.partitions == 1


def test_kv_violation_names_its_key() -> None:
    ops = [
        op(0, ("put", "a", 1), None, 0, 1),
        op(1, ("put", "b", 1), None, 0, 1),
        op(1, ("get", "b"), 0, 2, 3),  # b was never 0
    ]
    result = check(History.of(ops), kv())
    assert result.verdict is NOT
    assert result.violation is not None and result.violation.culprit.input == ("get", "b")
    assert check(History.of(ops), kv(), partition=False).verdict is NOT


# --- queue and log ---------------------------------------------------------------------


def test_queue_model() -> None:
    fifo = [
        op(0, ("enqueue", 1), None, 0, 1),
        op(0, ("enqueue", 2), None, 2, 3),
        op(1, ("dequeue",), 1, 4, 5),
        op(1, ("dequeue",), 2, 6, 7),
        op(1, ("dequeue",), None, 8, 9),
    ]
    assert verdict(fifo, queue()) is LIN
    lifo = [*fifo[:2], op(1, ("dequeue",), 2, 4, 5)]
    assert verdict(lifo, queue()) is NOT
    concurrent = [
        op(0, ("enqueue", 1), None, 0, 5),
        op(1, ("enqueue", 2), None, 0, 5),
        op(2, ("dequeue",), 2, 6, 7),
    ]
    assert verdict(concurrent, queue()) is LIN


def test_append_log_model() -> None:
    ops = [
        op(0, ("append", "a"), 0, 0, 5),
        op(1, ("append", "b"), 1, 0, 5),
        op(2, ("read",), ("a", "b"), 6, 7),
        op(2, ("read", 1), "b", 8, 9),
    ]
    assert verdict(ops, append_log()) is LIN
    swapped = [*ops[:2], op(2, ("read",), ("b", "a"), 6, 7)]
    assert verdict(swapped, append_log()) is NOT


# --- a user-defined model ----------------------------------------------------------------


def set_model() -> Model[list[int]]:
    """A set held as a sorted list (unhashable: needs ``state_key``)."""

    def step(state: list[int], input: Any, output: Any) -> tuple[bool, list[int]]:
        if input[0] == "add":
            return True, sorted({*state, input[1]})
        return (output is UNKNOWN or list(output) == state), state

    return Model("set", list, step, state_key=tuple, describe_state=lambda s: f"{{{s}}}")


def test_user_defined_model_with_unhashable_state() -> None:
    ops = [
        op(0, ("add", 1), None, 0, 3),
        op(1, ("add", 2), None, 0, 3),
        op(2, ("read",), [2], 1, 2),
        op(2, ("read",), [1, 2], 4, 5),
    ]
    assert verdict(ops, set_model()) is LIN
    bad = [*ops[:2], op(2, ("read",), [1], 4, 5)]
    result = check(History.of(bad), set_model())
    assert result.verdict is NOT and "{[1, 2]}" in result.html()


def test_a_model_that_rejects_an_input_raises() -> None:
    with pytest.raises(ValueError, match="unsupported input"):
        check([op(0, ("increment",), None, 0, 1)], register())


# --- the time budget --------------------------------------------------------------------


def hard_history(width: int = 22) -> History:
    """``width`` concurrent appends and then a read of a string no order makes:
    not linearizable, and every order of every subset is a distinct state."""
    ops = [op(i, ("append", "k", f"{i},"), None, 0, 10) for i in range(width)]
    ops.append(op(width, ("get", "k"), "impossible", 11, 12))
    return History.of(ops)


def test_budget_gives_unknown_never_ok() -> None:
    result = check(hard_history(), kv(), budget_s=0.2)
    assert result.verdict is Verdict.UNKNOWN and not result.ok
    assert result.violation is None and result.notes == ("1 of 1 partitions ran out of time",)
    assert check(hard_history(width=4), kv(), budget_s=5).verdict is NOT


def test_a_definite_violation_wins_over_an_unknown_part() -> None:
    ops = [*hard_history().operations, op(99, ("get", "other"), 1, 0, 1)]
    result = check(History.of(ops), kv(), budget_s=0.2)
    assert result.verdict is NOT and result.partitions_checked == 1  # smallest part first


def test_negative_budget_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        check([], register(), budget_s=-1)


# --- generated histories ----------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32),
    clients=st.integers(1, 8),
    operations=st.integers(1, 60),
    overlap=st.floats(0.1, 8.0),
    crash_rate=st.sampled_from([0.0, 0.1, 0.3]),
    keyed=st.booleans(),
)
def test_histories_from_a_real_execution_are_linearizable(
    seed: int, clients: int, operations: int, overlap: float, crash_rate: float, keyed: bool
) -> None:
    model_name = "kv" if keyed else "register"
    history = generate_history(
        operations,
        keys=3,
        clients=clients,
        seed=seed,
        crash_rate=crash_rate,
        overlap=overlap,
        model=model_name,
    )
    model = kv() if keyed else register()
    assert check(history, model, budget_s=30).verdict is LIN


def never_written(history: History, victim: Operation) -> list[Operation]:
    """``history`` with ``victim`` (a read) returning a value nobody wrote."""
    return [
        Operation(o.client, o.input, "never written", o.call_time, o.return_time)
        if o is victim
        else o
        for o in history
    ]


@given(seed=st.integers(0, 2**32), clients=st.integers(1, 6), overlap=st.floats(0.1, 4.0))
def test_a_read_of_a_value_never_written_is_caught(seed: int, clients: int, overlap: float) -> None:
    history = generate_history(
        40, clients=clients, seed=seed, overlap=overlap, crash_rate=0.1, model="register"
    )
    reads = [o for o in history if o.input == ("read",) and o.returned]
    if not reads:
        return
    victim = reads[len(reads) // 2]
    mutated = never_written(history, victim)
    result = check(History.of(mutated), register(), budget_s=30)
    assert result.verdict is NOT
    assert result.violation is not None
    assert result.violation.culprit.output == "never written"


# --- against a brute-force reference ----------------------------------------------------


def brute_force(ops: Sequence[Operation], model: Model[Any]) -> bool:
    """Try every order that respects real time; ops that never returned are optional."""

    def extend(placed: frozenset[int], state: Any) -> bool:
        pending = [i for i in range(len(ops)) if i not in placed]
        if all(ops[i].return_time is None for i in pending):
            return True
        # i may go next only if no unplaced op returned before i was called.
        deadline = min(t for i in pending if (t := ops[i].return_time) is not None)
        for i in pending:
            if ops[i].call_time > deadline:
                continue
            ok, new = model.step(state, ops[i].input, ops[i].output)
            if ok and extend(placed | {i}, new):
                return True
        return False

    return extend(frozenset(), model.init())


register_op = st.one_of(
    st.just(("read",)),
    st.tuples(st.just("write"), st.integers(0, 2)),
    st.tuples(st.just("cas"), st.integers(0, 2), st.integers(0, 2)),
)


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for client in range(draw(st.integers(1, 7))):
        call = draw(st.integers(0, 6))
        ret = call + draw(st.integers(0, 6))
        input = draw(register_op)
        crashed = draw(st.integers(0, 4)) == 0
        if input[0] == "read":
            output: Any = draw(st.sampled_from([None, 0, 1, 2, UNKNOWN]))
        elif input[0] == "cas":
            output = draw(st.sampled_from([True, False, UNKNOWN]))
        else:
            output = None
        ops.append(op(client, input, output, call, None if crashed else ret))
    return ops


@settings(max_examples=1500, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    history = History.of(ops)
    expected = brute_force(history.operations, register())
    assert check(history, register()).ok is expected


# --- the recorder -----------------------------------------------------------------------


def test_recorder_from_threads_gives_a_linearizable_history() -> None:
    rec = Recorder()
    lock = threading.Lock()
    value: list[int | None] = [None]

    def client(name: str) -> None:
        for n in range(50):
            with rec.call(name, ("write", n)) as call:
                with lock:
                    value[0] = n
                call.ok(None)
            with rec.call(name, ("read",)) as call:
                with lock:
                    seen = value[0]
                call.ok(seen)

    threads = [threading.Thread(target=client, args=(f"c{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = rec.history()
    assert len(history) == 400
    assert check(history, register()).ok


def test_recorder_outcomes() -> None:
    rec = Recorder()
    rec.invoke("a", ("write", 1))
    rec.invoke("b", ("write", 2))
    rec.ok("a")
    rec.info("b")  # unknown outcome
    rec.invoke("b", ("write", 3))
    rec.fail("b")  # certainly no effect: left out
    with pytest.raises(RuntimeError), rec.call("c", ("cas", 1, 4)):
        raise RuntimeError("connection lost")  # leaves the outcome unknown
    rec.invoke("d", ("read",))  # still in flight at the end
    history = rec.history()
    assert [(o.client, o.input, o.output, o.returned) for o in history] == [
        ("a", ("write", 1), None, True),
        ("b", ("write", 2), UNKNOWN, False),
        ("c", ("cas", 1, 4), UNKNOWN, False),
        ("d", ("read",), UNKNOWN, False),
    ]
    assert [o.id for o in history] == [0, 1, 2, 3]


def test_recorder_misuse() -> None:
    rec = Recorder()
    rec.invoke("a", ("read",))
    with pytest.raises(UsageError, match="in flight"):
        rec.invoke("a", ("read",))
    with pytest.raises(UsageError, match="never invoked"):
        rec.ok("b", 1)


def test_recorder_with_explicit_times_and_added_operations() -> None:
    rec = Recorder()
    rec.invoke("a", ("write", 1), time=10.0)
    rec.ok("a", None, time=20.0)
    rec.add([Operation("z", ("read",), 1, 25.0, 30.0)])
    history = rec.history()
    assert [(o.call_time, o.return_time) for o in history] == [(10.0, 20.0), (25.0, 30.0)]
    assert check(history, register()).ok


def test_history_validation() -> None:
    with pytest.raises(UsageError, match="before it is called"):
        History.of([Operation(0, ("read",), 1, 5, 4)])
    with pytest.raises(UsageError, match="use UNKNOWN"):
        History.of([Operation(0, ("read",), 1, 5, None)])
    with pytest.raises(UsageError, match=r"History\.of"):
        History((Operation(0, ("read",), 1, 0, 1, id=7),))
    history = History.of([op("x", ("read",), None, 3, 4), op("y", ("read",), None, 1, 9)])
    assert history.clients == ["y", "x"]
    cut = history.prefix(5)
    assert [(o.client, o.returned) for o in cut] == [("x", True), ("y", False)]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_long_single_register_histories_keep_their_verdicts(seed: int) -> None:
    """2,000 operations on one register, so the search's window of linearized
    operations slides far past its start: still linearizable (also with 2% of
    the operations never returning), and one read made to return a value
    nobody wrote, late in the history, is still caught. (With never-returned
    writes the refutation must try every place for each of them: that search
    is exponential, in Porcupine too, and ends in ``unknown``.)"""
    crashing = generate_history(2_000, clients=8, seed=seed, crash_rate=0.02, model="register")
    assert check(crashing, register(), budget_s=60).verdict is LIN
    history = generate_history(2_000, clients=8, seed=seed, model="register")
    assert check(history, register(), budget_s=60).verdict is LIN
    reads = [o for o in history if o.input == ("read",) and o.returned]
    victim = reads[len(reads) * 9 // 10]
    mutated = never_written(history, victim)
    result = check(History.of(mutated), register(), budget_s=60)
    assert result.verdict is NOT
    assert result.violation is not None and result.violation.culprit.output == "never written"
