"""Power cuts of every durable part on SQLite (issue 13): ``make bench``.

    .venv/bin/python bench/run.py --only powercut            # 1,000 cuts, bench/results/powercut.md
    .venv/bin/python bench/run.py --only powercut --quick    # 20 cuts, writes nothing
    .venv/bin/python bench/powercut_bench.py --cuts 200 --seed 7

Ten cases (the log, the event store, idempotency records, the key-value
store and the unit of work, each at ``sync="full"`` and ``"normal"``), each
on its own LazyFS mount, share the cuts; ``--jobs`` cases run at once. See
``bench/powercut.py`` for the writers, the models and what is checked. The
table counts, per case, the cuts, the acknowledged writes checked, those
lost under ``normal`` (always a suffix: a middle one missing is a failure)
and failures, which must be 0. Needs FUSE (``unbundled.testing.lazyfs``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "powercut.md"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import powercut  # noqa: E402 - after the path is set

CUTS = 1_000
QUICK_CUTS = 20
HEADERS = ["part", "sync", "cuts", "acknowledged writes checked", "lost (suffix)", "failures"]


def run_cases(
    cuts: int, seed: int, jobs: int, advance: object
) -> list[tuple[powercut.CaseResult, str | None]]:
    """Every case with its share of ``cuts``; each result with its failure (or None)."""
    cases = [(part, sync) for part in powercut.PARTS for sync in powercut.SYNCS]
    share = [cuts // len(cases) + (i < cuts % len(cases)) for i in range(len(cases))]
    rng = random.Random(seed)
    seeds = [rng.randrange(2**31) for _ in cases]
    assert callable(advance)

    def run(i: int) -> tuple[powercut.CaseResult, str | None]:
        part, sync = cases[i]
        done = [0]

        def on_cut(result: powercut.CaseResult) -> None:
            advance(result.cuts - done[0])
            done[0] = result.cuts

        with tempfile.TemporaryDirectory(prefix=f"powercut-{part}-{sync}-") as home:
            try:
                return powercut.run_case(part, sync, share[i], seeds[i], Path(home), on_cut), None
            except powercut.PowerCutFailure as exc:
                advance(share[i] - done[0])
                failed = powercut.CaseResult(part, sync, seeds[i], cuts=done[0])
                return failed, str(exc)

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(run, range(len(cases))))


def markdown(facts: list[tuple[str, str]], rows: list[list[str]], notes: list[str]) -> str:
    parts = [
        "# Power cuts (LazyFS)",
        "",
        "Written by `make bench` (`bench/run.py --only powercut`); see `bench/powercut_bench.py`"
        " and `bench/powercut.py`.",
        "",
        *[f"- {name}: {value}" for name, value in facts],
        "",
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join("---" for _ in HEADERS) + " |",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        *[f"{note}\n" for note in notes],
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CUTS} cuts; writes nothing")
    parser.add_argument("--cuts", type=int, default=None, help=f"cuts in all (default {CUTS})")
    parser.add_argument("--seed", type=int, default=None, help="seed (default random)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cases at once")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)
    cuts = args.cuts if args.cuts is not None else (QUICK_CUTS if args.quick else CUTS)
    if cuts < 1 or args.jobs < 1:
        parser.error("--cuts and --jobs must be >= 1")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from bench.common import git_commit, show_results, write_results
    from unbundled.testing.lazyfs import fuse_unavailable

    console = Console() if sys.stdout.isatty() else Console(width=200)
    reason = fuse_unavailable()
    if reason is not None:
        console.print(f"powercut benchmark skipped: LazyFS cannot mount here: {reason}")
        return 0
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    seed = random.randrange(2**31) if args.seed is None else args.seed
    console.print(f"powercut: {cuts} cuts, seed {seed} (replay with --seed {seed})")
    started = time.perf_counter()
    with Progress(
        "powercut", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("cuts", total=cuts)
        results = run_cases(cuts, seed, args.jobs, lambda n: progress.advance(task, n))
    seconds = time.perf_counter() - started
    rows = [
        [r.part, r.sync, f"{r.cuts:,}", f"{r.checked:,}", f"{r.lost:,}", str(int(e is not None))]
        for r, e in results
    ]
    total = [sum(r.cuts for r, _ in results), sum(r.checked for r, _ in results)]
    failures = [e for _, e in results if e is not None]
    lost = sum(r.lost for r, _ in results)
    rows.append(["total", "", f"{total[0]:,}", f"{total[1]:,}", f"{lost:,}", str(len(failures))])
    facts = [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        (
            "cuts",
            f"{cuts:,} asked, {total[0]:,} made" + (" (a reduced run)" if cuts < CUTS else ""),
        ),
        ("seed", f"{seed} (case seeds: {', '.join(str(r.seed) for r, _ in results)})"),
        ("time", f"{seconds:,.0f} s, {args.jobs} case(s) at once"),
    ]
    notes = [
        "Each cut: a writer acknowledges 1-12 writes (seeded), is SIGKILLed 0-20 ms later, "
        "the power is cut (seeded tear and reorder of the unsynced writes), the mount "
        "comes back and the file is reopened with `unbundled.open` and checked against "
        "the part's model; the next writer goes on on the same file. `full`: every "
        "acknowledged write there exactly once, batches and units whole. `normal`: a "
        "prefix of the acknowledged writes (lost counts the missing suffixes). Both: no "
        "`CorruptionError`. A failure stops its case.",
    ]
    if args.quick:
        notes.append(f"--quick run: {cuts} cuts, not {CUTS:,}.")
    notes += [f"FAILURE: {e}" for e in failures]
    show_results(
        console,
        "Power cuts: every acknowledged write (full) or a prefix (normal), never corrupt",
        HEADERS,
        lambda header: header not in ("part", "sync"),
        [(row, row[-1] != "0") for row in rows],
        facts,
        notes,
    )
    write_results(console, output, markdown(facts, rows, notes))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
