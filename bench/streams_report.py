"""The report of ``bench/streams_bench.py``: the table's cells, machine facts,
what each line measures, and the Markdown page (``bench/results/streams.md``)."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import statistics
from typing import Any, Protocol

from bench.common import git_commit, markdown_table, results_page


class Sizes(Protocol):
    """What the page says of a run's sizes (``streams_bench.Sizes`` is one)."""

    @property
    def repeats(self) -> int: ...


HEADERS = [
    "#",
    "case",
    "competitor",
    "unbundled",
    "competitor's rate",
    "ratio",
    "floor",
    "result",
    "notes",
]


def _rate(samples: tuple[float, ...]) -> str:
    return f"{statistics.median(samples):,.0f} events/s" if samples else ""


def _spread(name: str, samples: tuple[float, ...]) -> str:
    return f"{name} {min(samples):,.0f} to {max(samples):,.0f}" if samples else ""


def cells(line: Any) -> list[str]:
    """One row of the table for a ``streams_bench.Line`` (not imported: it imports us)."""
    ratio = line.ratio
    spreads = [_spread("unbundled", line.ours), _spread("competitor", line.theirs)]
    return [
        line.case.number,
        line.case.name,
        line.competitor,
        _rate(line.ours),
        _rate(line.theirs),
        "" if ratio is None else f"{ratio:.2f}x",
        "" if line.floor is None else f">= {line.floor:g}x",
        line.verdict,
        "; ".join(p for p in [*spreads, line.note] if p),
    ]


def machine_facts(sizes: Sizes, bytewax: str | None, workload: str) -> list[tuple[str, str]]:
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", str(os.cpu_count())),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("Bytewax", bytewax or "not installed"),
        ("workload", workload),
        (
            "runs",
            f"each rate is the median of {sizes.repeats} repetitions, every side once per "
            "repetition (order rotating); ratios are of medians (unbundled / competitor)",
        ),
    ]


WHAT = [
    "Tumbling: count per key and 10-second event-time window. unbundled: "
    '`flow.source("clicks").window(streams.Tumbling(10_000)).count().to_topic("counts")` '
    "with `out_of_orderness_ms=5_000`, run by `streams.run(db, flow, until_end=True, "
    "epoch_records=100_000, epoch_event_ms=1_000)` on a 4-partition topic of a SQLite file "
    '(sync="full"): JSON decoding, windowing, the output records and every epoch\'s commit '
    "are in its time. Bytewax: `count_window` with `TumblingWindower(length=10 s, "
    "align_to=1970-01-01)` and `EventClock(wait_for_system_duration=5 s)` pinned to event "
    "time (constant `now_getter`, `to_system_utc` None), `TestingSource` batches of 10,000 "
    "over already-built `(key, datetime)` items, `run_main`; recovery on adds "
    "`RecoveryConfig` on one SQLite partition and `epoch_interval=1 s` (system time: Bytewax "
    "has no epoch by records or event time). Dict loop: `counts[(key, ts - ts % 10_000)] += 1` "
    "over already-decoded events. Least work: the same topic loaded into its own SQLite "
    "file, then timed: `db.log.read` in polls of 5,000 records per partition, every value "
    "decoded by msgspec and the (key, window) pairs counted by `collections.Counter` -- "
    "what any engine over this log must do at least, without the state, watermark, late "
    "check, epochs and output records a real job adds: its rate bounds what a pure-Python "
    "engine of this design can reach.",
    "Sessions: the same, with `streams.Session(gap_ms=3_001)` and Bytewax's "
    "`SessionWindower(gap=3.001 s)`; the dict loop keeps each key's open sessions, merges "
    "those within a gap of an event and closes them with the same watermark. No floor: "
    "context.",
    "Stream-table join: each click joined with its user's row (a compacted, co-partitioned "
    "topic of 1,000 rows older than every click) as of the click's time, "
    '`source.join_table("users", fn).key_by(..., repartition=False)`, then the tumbling '
    "count per (user/plan, window). Dict loop: the row from a dict, then the count. "
    "Bytewax's `join` has no event time (not the same computation): not run.",
]


def markdown(facts: list[tuple[str, str]], rows: list[list[str]], notes: list[str]) -> str:
    return results_page(
        "Stream-processing benchmarks",
        "Written by `make bench` (`bench/run.py --only streams`, which runs "
        "`bench/streams_bench.py` in bench/.venv). Every side computed the same windows from "
        "the same events, side by side in one run on this machine; the run stops if any "
        "two disagree.",
        facts,
        markdown_table(HEADERS, rows),
        notes,
        WHAT,
    )
