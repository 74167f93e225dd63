"""The linearizability checker's benchmark at tiny sizes: the functions run,
both sides give the expected verdicts, the rows are well formed, and a wrong
verdict stops the run. No timing is asserted."""

from __future__ import annotations

import math

import pytest
from bench.naive_linearizability import check_naive

from bench import consistency_bench as cb
from unbundled.consistency.checker import Verdict, generate_history, kv, register

TINY = cb.Sizes(
    repeats=1,
    reference_repeats=1,
    reference_cap_s=30.0,
    unpartitioned_budget_s=0.2,
    generated_ops=300,
    generated_keys=10,
    generated_clients=4,
    long_ops=300,
)


def well_formed(rows: list[cb.TimeRow]) -> None:
    for row in rows:
        assert len(cb.cells(row)) == len(cb.HEADERS), row
        assert all(math.isfinite(s) and s >= 0 for s in row.samples), row
        assert row.verdict in ("PASS", "BELOW FLOOR", "context", "baseline", "quoted"), row


def test_etcd_rows_on_a_few_histories() -> None:
    histories = cb.etcd_histories([0, 2, 5])
    ticks: list[None] = []
    rows = cb.bench_etcd(histories, TINY, lambda: ticks.append(None))
    well_formed(rows)
    assert len(ticks) == 3
    assert [r.verdict for r in rows][:2] == ["quoted", "baseline"]
    ours = rows[2]
    assert ours.baseline == rows[1].name and ours.ratio is not None and ours.floor is not None
    assert "etcd_" in rows[-1].name


def test_kv_and_generated_rows() -> None:
    rows = cb.bench_kv(TINY, lambda: None, names=["c01-ok", "c01-bad"])
    well_formed(rows)
    assert [r.verdict for r in rows] == ["baseline", "context", "baseline", "context"]
    rows = cb.bench_generated(TINY, lambda: None)
    well_formed(rows)
    assert rows[1].floor is not None and rows[1].verdict == "PASS"
    rows = cb.bench_long_register(TINY, lambda: None)
    well_formed(rows)
    assert rows[0].floor is not None and "one register, 300 ops" in rows[0].name


def test_a_wrong_verdict_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cb, "ETCD_LINEARIZABLE", set())  # etcd_002 is linearizable
    with pytest.raises(cb.WrongVerdict, match="etcd_002"):
        cb.run_library_etcd(cb.etcd_histories([2]), explain=False)


def test_the_reference_agrees_with_the_library() -> None:
    """The straightforward search is only a fair reference if it is right."""
    model = register()
    for n, history in cb.etcd_histories([0, 2, 100]).items():
        linearizable, steps = check_naive(history.operations, model.init, model.step)
        assert linearizable == (cb.etcd_expected(n) is Verdict.LINEARIZABLE) and steps > 0
    history = generate_history(60, keys=3, clients=4, seed=3, crash_rate=0.1)
    linearizable, _ = check_naive(history.operations, kv().init, kv().step)
    assert linearizable is True
