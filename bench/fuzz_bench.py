"""The corruption fuzzer's full sweep (issue 9, item 3): ``make fuzz``.

    .venv/bin/python bench/run.py --only fuzz            # the whole sweep, bench/results/fuzz.md
    .venv/bin/python bench/run.py --only fuzz --quick    # a sample, in seconds, writes nothing
    .venv/bin/python bench/fuzz_bench.py --jobs 1        # the sweep on one core

It builds the fuzzer's file (``bench/fuzzer.py``: log records, events,
idempotency records and key-value entries), then damages copies of it: every
byte of one page of each b-tree the reads use, flipped one at a time; every
bit and byte of the file header; each page's cell count lowered and raised;
each page zeroed; the file truncated at every page boundary and inside each
page. Every read through the API runs on each copy, and the CLI's reads on
every copy the API found damaged (and on every 25th other one). The table
counts, per kind of damage, the copies whose reads were all exact, those
where a read raised ``CorruptionError`` (CLI: exit 6), those where damage to
a key's b-tree made the key look absent (``key lost``: no lookup can see
that, see docs/reference/format.md), and failures: anything else, which
must be 0.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "fuzz.md"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import fuzzer as _fuzzer  # noqa: E402 - after the path is set

HEADERS = ["damage", "mutations", "exact", "CorruptionError", "key lost", "failure"]
CLI_EVERY = 25  # the CLI runs on every 25th exact copy, and on every other copy
QUICK_COUNT = 200
FAILURES_SHOWN = 20

_CORPUS: _fuzzer.Corpus | None = None  # the workers' copy (inherited by fork)


def _scratch() -> Path:
    """tmpfs when there is one: each mutation writes a whole file."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None, prefix="unbundled-fuzz-"))


def _work(chunk: list[_fuzzer.Mutation]) -> _fuzzer.Tally:
    assert _CORPUS is not None
    work = _scratch()
    try:
        return _fuzzer.sweep(_CORPUS, chunk, work, cli_every=CLI_EVERY)
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


def run_sweep(
    corpus: _fuzzer.Corpus,
    chosen: list[_fuzzer.Mutation],
    jobs: int,
    progress: Callable[[int], None],
) -> _fuzzer.Tally:
    """Check ``chosen`` on ``jobs`` processes, in chunks (for progress)."""
    global _CORPUS
    _CORPUS = corpus
    chunks = [chosen[i : i + 200] for i in range(0, len(chosen), 200)]
    total = _fuzzer.Tally()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        for chunk, tally in zip(chunks, pool.map(_work, chunks), strict=True):
            total.merge(tally)
            progress(len(chunk))
    return total


def rows_of(tally: _fuzzer.Tally) -> list[list[str]]:
    kinds = sorted({kind for kind, _ in tally.counts})
    rows = []
    for kind in [*kinds, "total"]:
        counts = {
            verdict: sum(
                n for (k, v), n in tally.counts.items() if v == verdict and kind in (k, "total")
            )
            for verdict in _fuzzer.VERDICTS
        }
        rows.append(
            [kind, f"{sum(counts.values()):,}", *(f"{counts[v]:,}" for v in _fuzzer.VERDICTS)]
        )
    return rows


def _facts(corpus: _fuzzer.Corpus, jobs: int, seconds: float) -> list[tuple[str, str]]:
    from bench.common import git_commit

    pages = _fuzzer.select_pages(corpus.pages)
    swept = ", ".join(f"{p.number} ({p.btree} {p.kind})" for p in pages)
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("file", f"{len(corpus.data):,} bytes, {len(corpus.pages)} pages of {corpus.page_size}"),
        ("pages whose every byte was flipped", swept),
        ("reads per copy", f"{len(corpus.api)} through the API; {len(corpus.cli)} CLI commands"),
        ("time", f"{seconds:,.0f} s on {jobs} process{'es' if jobs > 1 else ''}"),
    ]


def markdown(facts: list[tuple[str, str]], rows: list[list[str]], notes: list[str]) -> str:
    from bench.common import markdown_table

    return (
        "\n".join(
            [
                "# Corruption fuzzer",
                "",
                "Written by `make fuzz` (`bench/run.py --only fuzz`); see `bench/fuzz_bench.py`.",
                "",
                *[f"- {name}: {value}" for name, value in facts],
                "",
                markdown_table(HEADERS, rows),
                "",
                *[f"- {note}" for note in notes],
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a sample; writes nothing")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from bench.common import show_results, write_results

    console = Console() if sys.stdout.isatty() else Console(width=200)
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    started = time.perf_counter()
    home = _scratch()
    try:
        corpus = _fuzzer.Corpus.create(home)
    finally:
        for path in home.iterdir():
            path.unlink()
        home.rmdir()
    if args.quick:
        chosen = _fuzzer.sample(corpus, QUICK_COUNT, seed=1)
    else:
        chosen = list(_fuzzer.mutations(corpus))
    with Progress(
        "fuzz", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("mutations", total=len(chosen))
        tally = run_sweep(corpus, chosen, args.jobs, lambda n: progress.advance(task, n))
    rows = rows_of(tally)
    notes: list[str] = [
        "exact: every read returned what it returns on the undamaged file; CorruptionError: "
        "at least one read raised it (the CLI exited 6, having printed only genuine output), "
        "the others were exact; key lost: damage to the b-tree a lookup goes through made a "
        "key (or a stream's newest events) look absent, which no lookup can tell from a key "
        "never written; failure: anything else.",
    ]
    if tally.lost:
        notes.append(
            "key lost, by the b-tree damaged: "
            + ", ".join(f"{btree} {n:,}" for btree, n in tally.lost.most_common())
        )
    if args.quick:
        notes.append(f"--quick run: a sample of {len(chosen)} mutations, not the sweep.")
    failed = tally.total("failure")
    if failed:
        notes.append(f"{failed} FAILURES; the first {FAILURES_SHOWN}:")
        notes += tally.failures[:FAILURES_SHOWN]
    facts = _facts(corpus, args.jobs, time.perf_counter() - started)
    show_results(
        console,
        "Corruption fuzzer: every read exact, or CorruptionError",
        HEADERS,
        lambda header: header != "damage",
        [(row, row[-1] != "0") for row in rows],
        facts,
        notes,
    )
    write_results(console, output, markdown(facts, rows, notes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "rows_of", "run_sweep"]
