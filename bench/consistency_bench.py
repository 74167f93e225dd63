"""The linearizability checker's benchmark: ``unbundled.consistency.checker``
on Porcupine's test histories and on a large generated one, beside a
straightforward Python search run in the same process.

    .venv/bin/python bench/run.py --only consistency      # the usual way (make bench)
    .venv/bin/python bench/consistency_bench.py --quick   # directly; a smoke run, writes nothing

Cases (sizes in :data:`FULL`):

1. Porcupine's 102 non-empty etcd histories (``tests/data/porcupine/jepsen``),
   each parsed once, then checked with ``check(h, register())`` in a loop
   over all of them; a line is the median over repetitions of that loop's
   total (and of the slowest history's time). The reference,
   ``bench/naive_linearizability.py``, is Porcupine's algorithm written the
   plain way in Python, run on the same parsed histories in the same
   repetitions, under a time cap.
2. Porcupine's kv histories c01/c10/c50, ok and bad, with
   ``check(h, kv(initial=""))`` (one search per key); the reference on
   c01 and c10; c50 unpartitioned (one search over the whole map) once, as
   context, under a budget.
3. ``generate_history(100_000, keys=1000, clients=16, crash_rate=0.01)``
   checked with ``check(h, kv())``; the generation is timed on its own line
   (context) and does not count towards the floor.
4. One register (no keys to split on) of 20,000 operations from 16 clients,
   checked with ``check(h, register())``: the case partitioning cannot help,
   where a search whose cache key grows with the history turns quadratic.

Every verdict is compared with the expected one (``tests/consistency/
test_porcupine_data.py``; generated histories are linearizable by
construction), on both sides: a wrong verdict stops the run with an error
and writes no table, since a fast wrong answer is not a result.

Porcupine itself (Go) is not run here: Debian ships no package of it
(``apt-get update && apt-cache search porcupine`` finds none), and the Go
module proxy is not reachable from this machine, so a Go program using it
cannot be built. Its line shows the figure quoted in the issue (1.1-1.5 s for
the etcd set), marked as quoted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

from bench.naive_linearizability import check_naive  # noqa: E402
from bench.porcupine import DATA, ETCD, ETCD_LINEARIZABLE, KV  # noqa: E402
from unbundled.consistency.checker import (  # noqa: E402
    History,
    Verdict,
    check,
    generate_history,
    kv,
    parse_history,
    register,
)

RESULTS = REPO / "bench" / "results" / "consistency.md"
PORCUPINE_QUOTED = "1.1-1.5 s"
Tick = Callable[[], None]


@dataclass(frozen=True)
class Sizes:
    repeats: int  # runs of each of the library's lines
    reference_repeats: int  # runs of the straightforward search (slower)
    reference_cap_s: float  # the straightforward search's time cap per run
    unpartitioned_budget_s: float  # budget of the one unpartitioned c50 check
    generated_ops: int
    generated_keys: int
    generated_clients: int
    long_ops: int  # case 4: one register


FULL = Sizes(
    repeats=5,
    reference_repeats=3,
    reference_cap_s=60.0,
    unpartitioned_budget_s=10.0,
    generated_ops=100_000,
    generated_keys=1_000,
    generated_clients=16,
    long_ops=20_000,
)
QUICK = Sizes(
    repeats=1,
    reference_repeats=1,
    reference_cap_s=10.0,
    unpartitioned_budget_s=0.5,
    generated_ops=5_000,
    generated_keys=100,
    generated_clients=16,
    long_ops=2_000,
)


class WrongVerdict(Exception):
    """A checker (the library's or the reference) gave a verdict it must not."""


@dataclass(frozen=True)
class Floor:
    """A line's median time must stay under ``seconds_max``."""

    seconds_max: float

    def describe(self) -> str:
        return f"< {self.seconds_max:g} s"


@dataclass(frozen=True)
class TimeRow:
    """One line: wall-clock seconds of each repetition.

    ``ratio`` is the baseline's median over this line's (higher is better:
    how many times less time it takes). A baseline line has verdict
    ``"baseline"``, a line without a floor ``"context"``. ``shown`` replaces
    the median's text (a quoted figure, or a capped run).
    """

    case: str
    name: str
    samples: tuple[float, ...]
    baseline: str | None = None
    baseline_s: float | None = None
    floor: Floor | None = None
    verdict: str = "context"
    note: str = ""
    shown: str | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def ratio(self) -> float | None:
        if self.baseline_s is None or not self.samples or self.seconds <= 0:
            return None
        return self.baseline_s / self.seconds


def judged(
    case: str,
    name: str,
    samples: list[float],
    baseline: TimeRow | None,
    floor: Floor | None,
    note: str = "",
) -> TimeRow:
    """A library line: its ratio is to ``baseline``'s median, its verdict from ``floor``."""
    seconds = statistics.median(samples)
    verdict = "context"
    if floor is not None:
        verdict = "PASS" if seconds < floor.seconds_max else "BELOW FLOOR"
    return TimeRow(
        case,
        name,
        tuple(samples),
        baseline=baseline.name if baseline is not None else None,
        baseline_s=baseline.seconds if baseline is not None and baseline.samples else None,
        floor=floor,
        verdict=verdict,
        note=note,
    )


def expect(what: str, got: Verdict | bool | None, expected: Verdict) -> None:
    """Raise :class:`WrongVerdict` unless ``got`` (a verdict, or the reference's
    bool) is ``expected``. ``None`` (the reference ran out of time) passes."""
    if got is None:
        return
    if isinstance(got, bool):
        got = Verdict.LINEARIZABLE if got else Verdict.NOT_LINEARIZABLE
    if got is not expected:
        raise WrongVerdict(f"{what}: {got.value}, expected {expected.value}")


# --- 1. etcd --------------------------------------------------------------------------


def etcd_histories(numbers: list[int] | None = None) -> dict[int, History]:
    """The parsed etcd histories (parsing is not timed)."""
    numbers = ETCD if numbers is None else numbers
    return {
        n: parse_history(DATA / "jepsen" / f"etcd_{n:03d}.log", "jepsen", "register")
        for n in numbers
    }


def etcd_expected(n: int) -> Verdict:
    return Verdict.LINEARIZABLE if n in ETCD_LINEARIZABLE else Verdict.NOT_LINEARIZABLE


def run_library_etcd(
    histories: dict[int, History], *, explain: bool
) -> tuple[dict[int, float], int]:
    """Seconds per history of one pass of ``check`` over the set, and the
    search steps (operations tried) of that pass."""
    model = register()
    times: dict[int, float] = {}
    steps = 0
    for n, history in histories.items():
        started = time.perf_counter()
        result = check(history, model, explain=explain)
        times[n] = time.perf_counter() - started
        steps += result.steps
        expect(f"check(etcd_{n:03d}, explain={explain})", result.verdict, etcd_expected(n))
    return times, steps


def run_reference_etcd(histories: dict[int, History], cap_s: float) -> tuple[float | None, int]:
    """Seconds of one pass of the straightforward search (None past ``cap_s``)
    and its steps."""
    model = register()
    started = time.perf_counter()
    deadline = started + cap_s
    steps = 0
    for n, history in histories.items():
        linearizable, tried = check_naive(history.operations, model.init, model.step, deadline)
        steps += tried
        if linearizable is None:
            return None, steps
        expect(f"reference on etcd_{n:03d}", linearizable, etcd_expected(n))
    return time.perf_counter() - started, steps


def bench_etcd(histories: dict[int, History], sizes: Sizes, tick: Tick) -> list[TimeRow]:
    """Case 1, the library and the reference interleaved repetition by repetition."""
    count = len(histories)
    explained: list[dict[int, float]] = []
    verdicts_only: list[float] = []
    reference: list[float] = []
    capped = 0
    # Steps (operations tried) are the same every repetition: the searches are deterministic.
    steps_explained = steps_verdicts = steps_reference = 0
    for repetition in range(sizes.repeats):
        times, steps_explained = run_library_etcd(histories, explain=True)
        explained.append(times)
        tick()
        times, steps_verdicts = run_library_etcd(histories, explain=False)
        verdicts_only.append(sum(times.values()))
        tick()
        if repetition < sizes.reference_repeats:
            seconds, steps_reference = run_reference_etcd(histories, sizes.reference_cap_s)
            if seconds is None:
                capped += 1
            else:
                reference.append(seconds)
            tick()
    name = f"straightforward Python search: all {count}"
    ref = reference_row("1", name, reference, sizes, capped, f"{steps_reference:,} steps")
    medians = {n: statistics.median(run[n] for run in explained) for n in histories}
    slowest = max(medians, key=lambda n: medians[n])
    return [
        porcupine_row(count),
        ref,
        judged(
            "1",
            f"unbundled check(h, register()): all {count}",
            [sum(run.values()) for run in explained],
            ref,
            Floor(3.0),
            f"{steps_explained:,} steps; as the CLI runs it: a violation is also explained "
            "(shortest failing prefix)",
        ),
        judged(
            "1",
            f"unbundled check(h, register(), explain=False): all {count}",
            verdicts_only,
            ref,
            None,
            f"{steps_verdicts:,} steps; verdicts only, as the references compute them",
        ),
        judged(
            "1",
            f"unbundled: slowest single history (etcd_{slowest:03d})",
            [run[slowest] for run in explained],
            None,
            Floor(0.5),
            f"{len(histories[slowest])} operations; {etcd_expected(slowest).value}",
        ),
    ]


def porcupine_row(count: int) -> TimeRow:
    return TimeRow(
        "1",
        f"Porcupine (Go): all {count}",
        (),
        verdict="quoted",
        note="quoted in the issue, not run here (no Go package of Porcupine on this machine)",
        shown=PORCUPINE_QUOTED,
    )


def reference_row(
    case: str, name: str, samples: list[float], sizes: Sizes, capped: int = 0, extra: str = ""
) -> TimeRow:
    """The straightforward search's line: the median of its runs that finished
    within the cap (``capped`` did not); none finished: no time, no ratio."""
    cap = f"{sizes.reference_cap_s:g} s"
    if not samples:
        note = f"no run finished within the {cap} cap: no ratio"
        return TimeRow(case, name, (), verdict="baseline", note=note, shown=f"> {cap}")
    note = f"bench/naive_linearizability.py, {len(samples)} run(s)"
    if extra:
        note = f"{extra}; {note}"
    if capped:
        note += f"; {capped} more passed the {cap} cap (left out: the median flatters it)"
    return TimeRow(case, name, tuple(samples), verdict="baseline", note=note)


# --- 2. kv ----------------------------------------------------------------------------


def kv_history(name: str) -> History:
    return parse_history(DATA / "kv" / f"{name}.txt", "porcupine-kv", "kv")


def bench_kv(sizes: Sizes, tick: Tick, names: list[str] | None = None) -> list[TimeRow]:
    """Case 2: each kv history partitioned; the reference where it finishes."""
    rows: list[TimeRow] = []
    model = kv(initial="")
    for name in list(KV) if names is None else names:
        history = kv_history(name)
        expected = KV[name][1]
        ref: TimeRow | None = None
        if not name.startswith("c50"):
            samples: list[float] = []
            for _ in range(sizes.reference_repeats):
                started = time.perf_counter()
                deadline = started + sizes.reference_cap_s
                linearizable, _ = check_naive(history.operations, model.init, model.step, deadline)
                expect(f"reference on {name}", linearizable, expected)
                if linearizable is not None:
                    samples.append(time.perf_counter() - started)
                tick()
            capped = sizes.reference_repeats - len(samples)
            label = f"straightforward Python search: {name}"
            ref = reference_row("2", label, samples, sizes, capped)
            rows.append(ref)
        ours: list[float] = []
        result = None
        for _ in range(sizes.repeats):
            started = time.perf_counter()
            result = check(history, model)
            ours.append(time.perf_counter() - started)
            expect(f"check({name})", result.verdict, expected)
            tick()
        assert result is not None
        floor = Floor(1.0) if name.startswith("c50") else None
        note = f"{len(history):,} operations, {result.partitions} keys; {expected.value}"
        rows.append(judged("2", f"unbundled check(h, kv()): {name}", ours, ref, floor, note))
    return rows


def bench_kv_unpartitioned(sizes: Sizes, name: str = "c50-ok") -> TimeRow:
    """Case 2's context line: one search over the whole map, under a budget."""
    history = kv_history(name)
    budget = sizes.unpartitioned_budget_s
    started = time.perf_counter()
    result = check(history, kv(initial=""), partition=False, budget_s=budget, explain=False)
    seconds = time.perf_counter() - started
    if result.verdict is not Verdict.UNKNOWN:
        expect(f"check({name}, partition=False)", result.verdict, KV[name][1])
    return TimeRow(
        "2",
        f"unbundled check(h, kv(), partition=False): {name}",
        (seconds,),
        note=f"one run, budget_s={budget:g}: {result.verdict.value}; partitioning is what "
        "makes this history cheap",
        shown=f"> {budget:g} s" if result.verdict is Verdict.UNKNOWN else None,
    )


# --- 3. generated ---------------------------------------------------------------------


def bench_generated(sizes: Sizes, tick: Tick) -> list[TimeRow]:
    """Case 3: generate (timed apart), then check; a fresh seed each repetition."""
    generating: list[float] = []
    checking: list[float] = []
    partitions = 0
    for seed in range(1, sizes.repeats + 1):
        started = time.perf_counter()
        history = generate_history(
            sizes.generated_ops,
            keys=sizes.generated_keys,
            clients=sizes.generated_clients,
            seed=seed,
            crash_rate=0.01,
        )
        generating.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = check(history, kv())
        checking.append(time.perf_counter() - started)
        partitions = result.partitions
        expect(f"check(generated, seed={seed})", result.verdict, Verdict.LINEARIZABLE)
        tick()
    what = (
        f"{sizes.generated_ops:,} ops, {sizes.generated_keys:,} keys, "
        f"{sizes.generated_clients} clients"
    )
    return [
        judged(
            "3",
            f"generate_history({what})",
            generating,
            None,
            None,
            "not counted: only the check has a floor",
        ),
        judged(
            "3",
            f"unbundled check(h, kv()): generated, {what}",
            checking,
            None,
            Floor(30.0),
            f"1% of operations never return; {partitions:,} keys used; seeds 1 to {sizes.repeats}",
        ),
    ]


def bench_long_register(sizes: Sizes, tick: Tick) -> list[TimeRow]:
    """Case 4: one register, no partitioning; a fresh seed each repetition."""
    checking: list[float] = []
    for seed in range(1, sizes.repeats + 1):
        history = generate_history(sizes.long_ops, keys=1, clients=16, seed=seed, model="register")
        started = time.perf_counter()
        result = check(history, register(), explain=False)
        checking.append(time.perf_counter() - started)
        expect(f"check(long register, seed={seed})", result.verdict, Verdict.LINEARIZABLE)
        tick()
    return [
        judged(
            "4",
            f"unbundled check(h, register()): one register, {sizes.long_ops:,} ops, 16 clients",
            checking,
            None,
            Floor(30.0),
            f"no keys to partition on; seeds 1 to {sizes.repeats}",
        )
    ]


# --- report ---------------------------------------------------------------------------

HEADERS = ["#", "measured", "median", "min to max", "ratio", "floor", "result", "notes"]


def fmt_seconds(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:,.0f}x"


def cells(row: TimeRow) -> list[str]:
    median = row.shown if row.shown is not None else fmt_seconds(row.seconds)
    spread = ""
    if len(row.samples) > 1:
        spread = f"{fmt_seconds(min(row.samples))} to {fmt_seconds(max(row.samples))}"
    return [
        row.case,
        row.name,
        median,
        spread,
        fmt_ratio(row.ratio),
        row.floor.describe() if row.floor is not None else "",
        row.verdict,
        row.note,
    ]


CASES = [
    "Porcupine's 102 non-empty etcd histories (one compare-and-set register each, 73 to 90 "
    "operations, many never returned; 23 linearizable, 79 not), parsed once, then "
    "`check(h, register())` on each in turn: the median total and the slowest history's "
    "median. The straightforward search (`bench/naive_linearizability.py`: Porcupine's "
    "algorithm written the plain way in Python: node objects, a set of (bitset, state) "
    "tuples, every operation that never returned placed somewhere) checks the same parsed "
    "histories in the same repetitions.",
    'Porcupine\'s kv histories (get/put/append on string keys that start as `""`; '
    'c01/c10/c50 = 1, 10, 50 clients), `check(h, kv(initial=""))`, which checks each key '
    "on its own; the straightforward search (the whole map as one state) on c01 and c10. "
    "c50-ok once more with `partition=False` for context.",
    "A linearizable history from `generate_history` (get/put/cas/append; operations overlap, "
    "1% never return and took effect or not at random), checked with `check(h, kv())`. "
    "Generating it is timed apart.",
    "One register (no keys, so nothing to partition on), a linearizable history from "
    '`generate_history(..., keys=1, model="register")` from 16 clients, checked with '
    "`check(h, register(), explain=False)`: the case where a cache key that grows with the "
    "history makes the search quadratic; the checker keeps a sliding window instead.",
]


def machine_facts(sizes: Sizes) -> list[tuple[str, str]]:
    from bench.common import git_commit

    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", str(os.cpu_count())),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        (
            "runs",
            f"each unbundled line is the median of {sizes.repeats} runs, the straightforward "
            f"search's of {sizes.reference_repeats} (cap {sizes.reference_cap_s:g} s a run), "
            "interleaved in one process; ratio = the reference's median / the line's (higher: "
            "faster)",
        ),
        (
            "Porcupine (Go)",
            "not run: Debian has no package of it (apt-cache search porcupine) and the Go "
            f"module proxy is not reachable here; {PORCUPINE_QUOTED} is the figure the issue "
            "quotes for this machine",
        ),
    ]


def markdown(facts: list[tuple[str, str]], rows: list[TimeRow], notes: list[str]) -> str:
    from bench.common import markdown_table

    parts = [
        "# Linearizability checker benchmarks",
        "",
        "Written by `make bench` (`bench/run.py --only consistency`, which runs "
        "`bench/consistency_bench.py`). `unbundled.consistency.checker` and a straightforward "
        "Python search were run side by side on the same parsed histories in one run on this "
        "machine; every verdict was checked against the expected one.",
        "",
        *[f"- {name}: {value}" for name, value in facts],
        "",
        markdown_table(HEADERS, [cells(r) for r in rows]),
        "",
        *[f"- {n}" for n in notes],
        "",
        "## What each line measures",
        "",
        *[f"{i}. {text}" for i, text in enumerate(CASES, 1)],
    ]
    return "\n".join(parts) + "\n"


# --- running --------------------------------------------------------------------------


def run_all(sizes: Sizes, progress: Any) -> list[TimeRow]:
    """Every case in order, advancing a rich ``progress`` bar per repetition."""
    rows: list[TimeRow] = []
    histories = etcd_histories()
    per_etcd = 2 * sizes.repeats + min(sizes.repeats, sizes.reference_repeats)
    task = progress.add_task("1. etcd set", total=per_etcd)
    rows += bench_etcd(histories, sizes, lambda: progress.advance(task))
    kv_runs = len(KV) * sizes.repeats + 4 * sizes.reference_repeats
    task = progress.add_task("2. kv histories", total=kv_runs + 1)
    rows += bench_kv(sizes, lambda: progress.advance(task))
    rows.append(bench_kv_unpartitioned(sizes))
    progress.advance(task)
    task = progress.add_task("3. generated history", total=sizes.repeats)
    rows += bench_generated(sizes, lambda: progress.advance(task))
    task = progress.add_task("4. one long register", total=sizes.repeats)
    rows += bench_long_register(sizes, lambda: progress.advance(task))
    return rows


def notes_for(rows: list[TimeRow]) -> list[str]:
    notes = [
        f"Porcupine (Go) is shown as quoted ({PORCUPINE_QUOTED}); ratios to it are not "
        "computed, since it was not run beside the others."
    ]
    etcd = [r for r in rows if r.case == "1" and r.name.startswith("unbundled check")]
    if etcd:
        low, high = (float(x) for x in PORCUPINE_QUOTED.removesuffix(" s").split("-"))
        best = etcd[0].seconds
        notes.append(
            f"For scale only: the quoted Porcupine figure is {low / best:.1f}x to "
            f"{high / best:.1f}x the first etcd line's median ({fmt_seconds(best)})."
        )
    reference = [r for r in rows if r.case == "1" and r.verdict == "baseline" and r.samples]
    if reference:
        notes.append(
            "The issue quotes about 8 s for a straightforward Python search of the etcd set; "
            f"the one here takes {fmt_seconds(reference[0].seconds)}. It runs Porcupine's "
            "algorithm, so compiled Go doing the same steps should be well under that: the "
            "quoted Go figure likely includes more than the search (a `go test` run's build "
            "and start-up, say). Trust the ratios to lines measured here."
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    sizes = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            rows = run_all(sizes, progress)
    except WrongVerdict as error:
        console.print(f"[bold red]WRONG VERDICT[/bold red]: {error}")
        console.print("[red]no table written: a wrong answer is not a benchmark result[/red]")
        return 1
    facts = machine_facts(sizes)
    facts.append(
        (
            "load average",
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute; "
            f"{os.cpu_count()} = every CPU busy)",
        )
    )
    notes = notes_for(rows)
    if args.quick:
        notes.append("--quick run: tiny sizes, the numbers are not comparable to a full run.")
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")

    from bench.common import show_results, write_results

    show_results(
        console,
        "unbundled linearizability checker vs a straightforward Python search",
        HEADERS,
        lambda header: header in ("median", "ratio"),
        [(cells(r), r.verdict.startswith("BELOW")) for r in rows],
        facts,
        notes,
    )
    write_results(console, output, markdown(facts, rows, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "FULL",
    "QUICK",
    "Sizes",
    "TimeRow",
    "WrongVerdict",
    "bench_etcd",
    "bench_generated",
    "bench_kv",
    "main",
    "markdown",
]
