"""The idempotency benchmark: per-call overhead of unbundled's idempotency keys
side by side with Powertools for AWS Lambda's idempotency utility on the same
local Redis, in one run.

    .venv/bin/python bench/run.py --only idempotency             # the usual way (make bench)
    bench/.venv/bin/python bench/idempotency_bench.py --quick    # directly, inside bench/.venv

Powertools is installed only in ``bench/.venv`` (``bench/requirements.txt``):
``bench/run.py`` makes that venv (``bench/bench_venv.py``) and runs this file
there. Every call goes through each library's public API with a trivial
handler, so what is timed is the library's overhead: for a NEW key (claim,
run, store the result) and for a REPEATED key (answer the stored result).
Each repetition runs every side in turn on fresh keys, so a slow moment of
the machine hurts all alike; a line's p50 and p99 are the medians over the
repetitions of each run's percentiles over ``calls`` timed calls.

The functions take their sizes as arguments and accept ``rival=None`` (no
competitor) and ``redis_at=None`` (no server), so the smoke test runs
unbundled's side tiny, without Powertools.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

from bench.log_bench import scratch_dir  # noqa: E402
from unbundled.idempotency import Idempotency  # noqa: E402

RESULTS = REPO / "bench" / "results" / "idempotency.md"
REDIS_AT = ("127.0.0.1", 6379)
PAYLOAD = {"amount": 10, "currency": "EUR", "customer": "c-42", "items": [1, 2, 3]}
Call = Callable[[str, dict[str, Any]], Any]


@dataclass(frozen=True)
class Sizes:
    repeats: int
    calls: int  # timed calls per run and case
    warmup: int  # untimed calls before each run (connections, scripts, caches)


FULL = Sizes(repeats=5, calls=5_000, warmup=200)
QUICK = Sizes(repeats=2, calls=300, warmup=20)


@dataclass(frozen=True)
class Floor:
    """A minimum of (the baseline's p50) / (this line's p50)."""

    ratio_min: float

    def describe(self) -> str:
        return f">= {self.ratio_min:g}x" if self.ratio_min != 1 else "no slower (>= 1x)"


@dataclass(frozen=True)
class LatencyRow:
    """One line: per-call latency in microseconds, one (p50, p99) per run.

    ``ratio`` is the baseline's median p50 over this line's (higher is
    better: how many times less time a call takes). A baseline line has
    verdict ``"baseline"``; a line without a floor is ``"context"``.
    """

    case: str
    name: str
    p50s: tuple[float, ...]
    p99s: tuple[float, ...]
    baseline: str | None = None
    baseline_p50: float | None = None
    floor: Floor | None = None
    verdict: str = "context"
    note: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.p50s)

    @property
    def p99(self) -> float:
        return statistics.median(self.p99s)

    @property
    def ratio(self) -> float | None:
        if self.baseline_p50 is None or self.p50 <= 0:
            return None
        return self.baseline_p50 / self.p50


def judged(row: LatencyRow, baseline: LatencyRow | None, floor: Floor | None) -> LatencyRow:
    """``row`` with its ratio to ``baseline`` and the verdict of ``floor``."""
    if baseline is None:
        return row
    ratio = baseline.p50 / row.p50 if row.p50 > 0 else 0.0
    verdict = "context" if floor is None else "PASS" if ratio >= floor.ratio_min else "BELOW FLOOR"
    return LatencyRow(
        row.case,
        row.name,
        row.p50s,
        row.p99s,
        baseline=baseline.name,
        baseline_p50=baseline.p50,
        floor=floor,
        verdict=verdict,
        note=row.note,
    )


# --- timing ---------------------------------------------------------------------------


def percentiles(ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in microseconds of per-call times in nanoseconds."""
    ordered = sorted(ns)
    n = len(ordered)
    return ordered[n // 2] / 1000, ordered[min(n - 1, (n * 99) // 100)] / 1000


def time_calls(call: Call, keys: list[str]) -> list[int]:
    """Each call's duration (ns). The collector runs before, not during."""
    gc.collect()
    out = []
    clock = time.perf_counter_ns
    for key in keys:
        started = clock()
        call(key, PAYLOAD)
        out.append(clock() - started)
    return out


def run_case(call: Call, case: str, sizes: Sizes, runs: Callable[[], int]) -> tuple[float, float]:
    """One run of ``case`` (``"new"`` or ``"repeated"``) on fresh keys: (p50, p99) in us.
    Checks the handler ran once per new key, and never for a repeated one."""
    tag = uuid.uuid4().hex[:10]
    for i in range(sizes.warmup):
        call(f"warm-{tag}-{i}", PAYLOAD)
    if case == "new":
        keys = [f"order-{tag}-{i}" for i in range(sizes.calls)]
    else:
        keys = [f"order-{tag}"] * sizes.calls
        call(keys[0], PAYLOAD)
    before = runs()
    ns = time_calls(call, keys)
    ran = runs() - before
    expected = sizes.calls if case == "new" else 0
    if ran != expected:
        raise AssertionError(f"the handler ran {ran} times in a {case}-key run, not {expected}")
    return percentiles(ns)


class Ours:
    """unbundled's ``Idempotency.call`` with a trivial handler on one backend."""

    def __init__(self, name: str, idem: Idempotency) -> None:
        self.name = name
        self.idem = idem
        self.runs = 0

    def handler(self, attempt: Any) -> dict[str, Any]:
        self.runs += 1
        return {"charged": PAYLOAD["amount"], "order": attempt.key}

    def call(self, key: str, payload: dict[str, Any]) -> Any:
        return self.idem.call(key, payload, self.handler)

    def close(self) -> None:
        backend: Any = self.idem.backend
        client = getattr(backend, "client", None)
        if client is not None:  # Redis: delete this run's keys
            keys = list(client.scan_iter(match=backend.prefix + "*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        self.idem.close()


@contextmanager
def opened_sides(
    parent: Path | None, rival: Any, redis_at: tuple[str, int] | None
) -> Iterator[list[tuple[str, Call, Callable[[], int]]]]:
    """Every side, as (line name, call, handler-runs counter), closed after."""
    with scratch_dir(parent, "idempotency") as d:
        closers: list[Callable[[], None]] = []
        sides: list[tuple[str, Call, Callable[[], int]]] = []

        def add(side: Any, name: str) -> None:
            closers.append(side.close)
            sides.append((name, side.call, lambda: side.runs))

        try:
            if rival is not None and redis_at is not None:
                add(rival.Side(*redis_at), f"Powertools {rival.VERSION}, Redis")
            if redis_at is not None:
                host, port = redis_at
                url = f"redis://{host}:{port}/0?prefix={REDIS_PREFIX}{uuid.uuid4().hex[:12]}:"
                add(Ours("redis", Idempotency.open(url)), "unbundled, Redis")
            add(Ours("sqlite", Idempotency.open(d / "idem.db", sync="full")), SQLITE_NAME)
            add(Ours("memory", Idempotency.open("memory://")), "unbundled, memory")
            yield sides
        finally:
            for close in closers:
                close()


SQLITE_NAME = 'unbundled, SQLite (sync="full")'
REDIS_PREFIX = "bench:unbundled:"  # each run adds its own id below it


def bench_idempotency(
    parent: Path | None, sizes: Sizes, rival: Any, redis_at: tuple[str, int] | None
) -> list[LatencyRow]:
    """Every side, new and repeated keys, interleaved repetition by repetition."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with opened_sides(parent, rival, redis_at) as sides:
        for _ in range(sizes.repeats):
            for case in ("new", "repeated"):
                for name, call, runs in sides:
                    samples.setdefault((case, name), []).append(run_case(call, case, sizes, runs))
        rtt = redis_round_trips(redis_at, sizes) if redis_at is not None else None
    return rows_of(samples, rival, rtt, sizes)


def redis_round_trips(redis_at: tuple[str, int], sizes: Sizes) -> list[tuple[float, float]]:
    """Context: a bare redis-py round trip (PING) on the same server, per run."""
    import redis

    client = redis.Redis(host=redis_at[0], port=redis_at[1])
    try:
        out = []
        for _ in range(sizes.repeats):
            for _ in range(sizes.warmup):
                client.ping()
            out.append(percentiles(time_calls(lambda k, p: client.ping(), [""] * sizes.calls)))
        return out
    finally:
        client.close()


def rows_of(
    samples: dict[tuple[str, str], list[tuple[float, float]]],
    rival: Any,
    rtt: list[tuple[float, float]] | None,
    sizes: Sizes,
) -> list[LatencyRow]:
    rows: list[LatencyRow] = []
    floors = {"new": Floor(1.0), "repeated": Floor(2.5)}
    for number, case in (("1", "new"), ("2", "repeated")):
        baseline: LatencyRow | None = None
        for (kind, name), runs in samples.items():
            if kind != case:
                continue
            row = LatencyRow(
                number,
                f"{name}: {case} key",
                tuple(p50 for p50, _ in runs),
                tuple(p99 for _, p99 in runs),
                note=f"{sizes.calls:,} calls per run",
            )
            if name.startswith("Powertools"):
                baseline = LatencyRow(
                    row.case, row.name, row.p50s, row.p99s, verdict="baseline", note=row.note
                )
                rows.append(baseline)
                continue
            floor = floors[case] if name == "unbundled, Redis" else None
            rows.append(judged(row, baseline, floor))
    if rtt is not None:
        rows.append(
            LatencyRow(
                "3",
                "redis-py PING round trip (the floor of any Redis call)",
                tuple(p50 for p50, _ in rtt),
                tuple(p99 for _, p99 in rtt),
                note=f"{sizes.calls:,} calls per run",
            )
        )
    return rows


# --- report ---------------------------------------------------------------------------

HEADERS = ["#", "measured", "p50 us", "p99 us", "p50 min to max", "ratio", "floor", "result"]
HEADERS += ["notes"]


def cells(row: LatencyRow) -> list[str]:
    ratio = row.ratio
    return [
        row.case,
        row.name,
        f"{row.p50:,.1f}",
        f"{row.p99:,.1f}",
        f"{min(row.p50s):,.1f} to {max(row.p50s):,.1f}",
        f"{ratio:.2f}x" if ratio is not None else "",
        row.floor.describe() if row.floor is not None else "",
        row.verdict,
        row.note,
    ]


CASES = [
    "New key: `idem.call(key, payload, handler)` with a key never seen (unbundled: one claim "
    "script, the handler, one complete script on Redis; SQLite: two durable group commits); "
    "Powertools: `@idempotent_function` on a request whose `key` is new (SET NX of the "
    "in-progress record, the handler, SET of the result).",
    "Repeated key: the same call again after it completed, answered from the stored result "
    "without running the handler (unbundled on Redis: one script that also checks the "
    "fingerprint; Powertools: SET NX fails, GET, then GET again for the record).",
    "Context: a bare redis-py `PING` on the same server, the cost of one round trip.",
]


def machine_facts(sizes: Sizes, rival: Any, redis_at: tuple[str, int] | None) -> list[Any]:
    from bench.common import git_commit

    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("commit", git_commit()),
        ("CPUs", str(os.cpu_count())),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("Redis", redis_facts(redis_at)),
        ("redis-py", importlib.metadata.version("redis")),
        ("Powertools", rival.VERSION if rival is not None else "not installed"),
        (
            "runs",
            f"each line: median over {sizes.repeats} runs of each run's p50 / p99 over "
            f"{sizes.calls:,} timed calls (after {sizes.warmup} untimed); ratio = the "
            "baseline's p50 / the line's p50",
        ),
        (
            "settings",
            "unbundled checks the payload's fingerprint (its default); Powertools runs "
            "without payload validation (its default; with it, its Redis layer cannot "
            "replay: see bench/powertools_side.py); no local cache; 1 hour retention; "
            "leases of 30 s (Powertools: the in-progress expiry from a stand-in Lambda "
            "context's remaining time)",
        ),
    ]


def redis_facts(redis_at: tuple[str, int] | None) -> str:
    if redis_at is None:
        return "not reachable: Redis lines skipped"
    import redis

    client = redis.Redis(host=redis_at[0], port=redis_at[1])
    try:
        info = client.info("server")
        aof = client.config_get("appendonly").get("appendonly", "?")
        save = client.config_get("save").get("save", "?") or "off"
    finally:
        client.close()
    return (
        f"{info['redis_version']} on {redis_at[0]}:{redis_at[1]} (loopback, same machine); "
        f"appendonly={aof}, save={save}"
    )


def markdown(facts: list[Any], rows: list[LatencyRow], notes: list[str]) -> str:
    from bench.common import markdown_table

    parts = [
        "# Idempotency benchmarks",
        "",
        "Written by `make bench` (`bench/run.py --only idempotency`, which runs "
        "`bench/idempotency_bench.py` in `bench/.venv`). unbundled and Powertools for AWS "
        "Lambda's idempotency utility were measured side by side, repetition by repetition, "
        "in one run on this machine, on the same local Redis.",
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


def load_rival() -> Any | None:
    """The competitor's module, or None where Powertools is not installed."""
    if importlib.util.find_spec("aws_lambda_powertools") is None:
        return None
    return importlib.import_module("bench.powertools_side")


def reachable(at: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(at, timeout=2.0):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)

    from rich.console import Console

    from bench.common import scratch_parent

    sizes = QUICK if args.quick else FULL
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    rival = load_rival()
    redis_at = REDIS_AT if reachable(REDIS_AT) else None
    notes: list[str] = []
    if rival is None:
        notes.append("Powertools is not installed here: unbundled's lines have no baseline")
    if redis_at is None:
        notes.append(f"Redis is not reachable at {REDIS_AT[0]}:{REDIS_AT[1]}: no Redis lines")
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with console.status("idempotency: new and repeated keys, every side"):
        rows = bench_idempotency(scratch_parent(), sizes, rival, redis_at)
    facts = machine_facts(sizes, rival, redis_at)
    facts.append(
        (
            "load average",
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute; 2 = both "
            "CPUs busy)",
        )
    )
    notes += [
        "The SQLite and memory lines are context: the same calls on another store (SQLite "
        'with sync="full" fsyncs each commit), their ratios to Powertools on Redis.',
        "Powertools' Redis layer cannot replay a completed key when payload validation is "
        "on (every retry raises IdempotencyValidationError: completing the record drops its "
        "validation hash), so it runs without; unbundled checks the fingerprint every call.",
    ]
    if args.quick:
        notes.append("--quick run: tiny sizes, the numbers are not comparable to a full run.")
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")

    from bench.common import show_results, write_results

    show_results(
        console,
        "unbundled idempotency keys vs Powertools (per-call overhead)",
        HEADERS,
        lambda header: header.startswith(("p", "ratio")),
        [(cells(r), r.verdict.startswith("BELOW")) for r in rows],
        facts,
        notes,
    )
    write_results(console, output, markdown(facts, rows, notes))
    return 0


def run_in_venv(*, quick: bool) -> int:
    """Run this file's :func:`main` in ``bench/.venv`` (made or updated first)."""
    from bench.bench_venv import ensure_venv

    python = ensure_venv()
    command = [str(python), str(Path(__file__).resolve()), *(["--quick"] if quick else [])]
    return subprocess.run(command, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "FULL",
    "QUICK",
    "LatencyRow",
    "Sizes",
    "bench_idempotency",
    "main",
    "markdown",
    "run_in_venv",
]
