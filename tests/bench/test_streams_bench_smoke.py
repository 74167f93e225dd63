"""The stream-processing benchmark at tiny sizes, unbundled's side and the dict loop
only: the competitor (Bytewax) lives in bench/.venv, never in this venv. Both sides
must compute the same windows as a brute-force count; no speed is asserted."""

from __future__ import annotations

import itertools
import math
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from bench import bench_venv, run
from bench import streams_bench as sb
from bench import streams_report as sr

EVENTS = 5_000


@pytest.fixture(scope="module")
def work() -> sb.Workload:
    return sb.make_workload(EVENTS, 1_000)


def brute_tumbling(work: sb.Workload) -> sb.Windows:
    counts = Counter((k, t - t % sb.WINDOW_MS) for k, t in zip(work.keys, work.ts_ms, strict=True))
    return {(k, start, n) for (k, start), n in counts.items()}


def brute_join(work: sb.Workload) -> sb.Windows:
    """Each click with its user's plan (user i has plan i % PLANS), counted per window."""
    counts = Counter(
        (f"{k}/p{int(k[1:]) % sb.PLANS}", t - t % sb.WINDOW_MS)
        for k, t in zip(work.keys, work.ts_ms, strict=True)
    )
    return {(k, start, n) for (k, start), n in counts.items()}


def brute_sessions(work: sb.Workload) -> sb.Windows:
    """Per key, the sorted times split wherever two neighbours are more than a gap apart."""
    times: dict[str, list[int]] = {}
    for k, t in zip(work.keys, work.ts_ms, strict=True):
        times.setdefault(k, []).append(t)
    out = set()
    for k, ts in times.items():
        ts.sort()
        first, n = ts[0], 1
        for before, t in itertools.pairwise(ts):
            if t - before > sb.SESSION_GAP_MS:
                out.add((k, first, n))
                first, n = t, 0
            n += 1
        out.add((k, first, n))
    return out


def test_workload_is_seeded_and_within_its_bounds(work: sb.Workload) -> None:
    again = sb.make_workload(EVENTS, 1_000)
    assert (again.keys, again.ts_ms, again.values) == (work.keys, work.ts_ms, work.values)
    assert len(work) == EVENTS and set(work.keys) <= {f"k{i}" for i in range(1_000)}
    assert all(t % 2 == 0 for t in work.ts_ms)  # so no two are exactly one (odd) gap apart
    newest = 0
    for t in work.ts_ms:
        assert newest - t <= sb.JITTER_MS < sb.OUT_OF_ORDERNESS_MS  # never late
        newest = max(newest, t)
    assert work.decoded()[0][2] == {"user": work.keys[0], "n": 1}
    assert work.messages()[0].key == work.keys[0].encode()


def test_dict_loops_count_what_a_brute_force_counts(work: sb.Workload) -> None:
    seconds, windows = sb.TUMBLING.dict_loop(work.decoded())
    assert seconds > 0 and windows == brute_tumbling(work)
    assert sum(n for _, _, n in windows) == EVENTS
    seconds, sessions = sb.SESSIONS.dict_loop(work.decoded())
    assert seconds > 0 and sessions == brute_sessions(work)
    assert sum(n for _, _, n in sessions) == EVENTS


@pytest.mark.parametrize("case", sb.CASES, ids=lambda c: c.kind)
def test_unbundled_computes_the_same_windows(
    tmp_path: Path, work: sb.Workload, case: sb.Case
) -> None:
    run_ = sb.unbundled_run(tmp_path, work.messages(), case)
    expected = {sb.TUMBLING: brute_tumbling, sb.SESSIONS: brute_sessions, sb.JOIN: brute_join}[
        case
    ](work)
    assert run_.windows == expected
    assert run_.seconds > 0 and run_.epochs >= 1
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone


def test_bench_case_without_the_competitor(tmp_path: Path, work: sb.Workload) -> None:
    lines = sb.bench_case(tmp_path, work, sb.TUMBLING, 2, None)
    assert [line.competitor for line in lines] == [
        "dict loop (raw floor)",
        "least work: read + decode + Counter (the ceiling of this design)",
        "Quix Streams 3.x",
    ]
    loop, least, quix = lines
    # The least work computed the same windows (bench_case checks) and is context only.
    assert len(least.theirs) == 2 and all(v > 0 for v in least.theirs)
    assert (least.floor, least.verdict) == (None, "context")
    assert len(loop.ours) == len(loop.theirs) == 2
    assert all(math.isfinite(v) and v > 0 for v in (*loop.ours, *loop.theirs))
    assert loop.floor == sb.DICT_FLOOR and loop.verdict in ("PASS", "BELOW FLOOR")
    assert (quix.theirs, quix.ratio, quix.verdict) == ((), None, "not run")
    assert "Kafka" in quix.note
    sessions = sb.bench_case(tmp_path, work, sb.SESSIONS, 1, None)
    assert [(line.floor, line.verdict) for line in sessions] == [(None, "context")]
    assert list(tmp_path.iterdir()) == []


def test_a_disagreement_stops_the_run() -> None:
    good = {("k1", 0, 3), ("k2", 0, 1)}
    sb.check_same(sb.TUMBLING, {"a": good, "b": set(good)})
    with pytest.raises(sb.Disagreement, match="1 windows missing"):
        sb.check_same(sb.TUMBLING, {"a": good, "b": {("k1", 0, 3)}})


def test_report_rows_and_markdown() -> None:
    fast = sb.Line(sb.TUMBLING, "Bytewax", (600.0, 500.0, 550.0), (100.0, 90.0, 110.0), 5.0)
    slow = sb.Line(sb.TUMBLING, "dict loop", (100.0,), (1_000.0,), 0.3, "epochs")
    assert fast.ratio == pytest.approx(5.5) and fast.verdict == "PASS"
    assert slow.verdict == "BELOW FLOOR"
    rows = [sr.cells(fast), sr.cells(slow)]
    assert all(len(r) == len(sr.HEADERS) for r in rows)
    assert rows[0][3:8] == ["550 events/s", "100 events/s", "5.50x", ">= 5x", "PASS"]
    facts = sr.machine_facts(sb.QUICK, None, "tiny")
    assert ("Bytewax", "not installed") in facts
    text = sr.markdown(facts, rows, ["a note"])
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows)
    assert "- a note" in text and "2. Sessions" in text


def test_competitor_is_only_in_the_bench_environment() -> None:
    root = Path(sb.__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert not [d for d in declared if "bytewax" in d.lower() or "quix" in d.lower()]
    assert "bytewax==0.21.*" in bench_venv.REQUIREMENTS.read_text().splitlines()
    assert sb.load_rival() is None  # not importable in the dev venv


def test_run_accepts_only_streams() -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--only", "streams", "--help"])
    assert info.value.code == 0
