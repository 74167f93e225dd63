"""The stream-processing benchmark: an event-time windowed count per key read from a
log topic, exactly-once, side by side with Bytewax 0.21 and a plain dict loop.

    .venv/bin/python bench/run.py --only streams             # bench/results/streams.md
    bench/.venv/bin/python bench/streams_bench.py --quick    # directly, inside bench/.venv

Bytewax is installed only in ``bench/.venv`` (``bench/requirements.txt``):
``bench/run.py`` makes that venv (``bench/bench_venv.py``) and runs this file there.

The workload (:func:`make_workload`, seeded): ``events`` click events of ``keys`` users
``k0``, ``k1``, ...; event ``i`` has time ``BASE + 2 ms * i`` minus a jitter of 0 to
2,000 ms (even milliseconds only), so event time grows on average with bounded
disorder; its value is JSON ``{"user": "k17", "n": 1}`` and its record key the user.
Every side computes the same thing and the run stops unless all agree, as a set of
``(key, window start, count)``:

1. Tumbling 10-second windows, count per key.
2. Session windows with an inactivity gap of 3 s, count per key; a session is named
   by its first event. The gap is 3,001 ms and every timestamp even, so no two events
   are exactly one gap apart: the one boundary engines define differently (Bytewax
   merges at exactly the gap) never comes up.
3. A stream-table join: each click joined with its user's row (a compacted topic)
   as of its time, then the tumbling count per (user/plan, window).

The sides, each timed from its start to its last window out, nothing else:

- unbundled: ``streams.Flow`` with ``out_of_orderness_ms=5_000`` reading a 4-partition
  topic of a SQLite file (``sync="full"``), run by ``streams.run(..., until_end=True,
  epoch_records=100_000, epoch_event_ms=1_000)`` (exactly-once: an epoch commits the
  state, the output and the input offsets in one transaction); loading the topic and a
  heartbeat 60 s past the last event (so every window closes) is not timed, nor is
  reading the results back. A fresh file for every repetition.
- Bytewax 0.21 (``bench/bytewax_side.py``): ``count_window`` over a ``TestingSource``
  of already-built ``(key, datetime)`` items, batches of 10,000, run by
  ``bytewax.testing.run_main``; its clock pinned to event time with the same 5 s bound.
  Once with recovery off, once on (SQLite recovery partition, 1 s epochs).
- The dict loop: already-decoded events from a Python list into ``{(key, start):
  count}`` (sessions: per-key open sessions merged within the gap, closed by the same
  watermark): the raw floor of the aggregation itself.

Each repetition runs every side in turn (the order rotates), so a slow moment of the
machine hurts all alike; a line's rate is the median over the repetitions.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ itself is on sys.path, not the repo
    sys.path.insert(0, str(REPO))

import unbundled  # noqa: E402
from bench.common import show_results, write_results  # noqa: E402
from bench.streams_least import least_work, load_clicks  # noqa: E402
from bench.streams_report import (  # noqa: E402
    HEADERS,
    cells,
    machine_facts,
    markdown,
)
from unbundled import streams  # noqa: E402
from unbundled.log import Message  # noqa: E402

RESULTS = REPO / "bench" / "results" / "streams.md"
SEED = 12
BASE_MS = 1_700_000_000_000  # a whole number of windows after the Unix epoch
STEP_MS = 2  # 500 events/s of event time: ~5 per key and 10 s window
JITTER_MS = 2_000
OUT_OF_ORDERNESS_MS = 5_000
WINDOW_MS = 10_000
SESSION_GAP_MS = 3_001  # a key's events are ~2 s apart: sessions of a few events
PARTITIONS = 4
EPOCH_RECORDS = 100_000
EPOCH_EVENT_MS = 1_000
HEARTBEAT_AFTER_MS = 60_000
BYTEWAX_FLOOR = 5.0
DICT_FLOOR = 0.3
QUIX_WHY = (
    "not run: Quix Streams 3.x processes only what it consumes from a Kafka broker (its "
    "Application is a Kafka consumer; its sources, too, produce into a Kafka topic "
    "first; quixio/quix-streams#921), and no broker runs here"
)

LEAST_NOTE = (
    "the same topic read from a SQLite file, every value decoded and counted per (key, "
    "window) with collections.Counter: no state, epochs, watermark or output records"
)
BYTEWAX_JOIN_WHY = (
    "not run: Bytewax's `join` keeps the latest value per side by key, with no event "
    "time: it is not the same computation as a join as of each event's time"
)

Windows = set[tuple[str, int, int]]
Decoded = list[tuple[str, int, dict[str, Any]]]

assert JITTER_MS < OUT_OF_ORDERNESS_MS  # so no event is late on any side
assert SESSION_GAP_MS % 2 == 1 and STEP_MS % 2 == 0 and BASE_MS % WINDOW_MS == 0


@dataclass(frozen=True)
class Sizes:
    repeats: int
    events: int
    keys: int


FULL = Sizes(repeats=3, events=1_000_000, keys=1_000)
QUICK = Sizes(repeats=2, events=20_000, keys=1_000)


@dataclass(frozen=True)
class Workload:
    """The events, in arrival order, as each side takes them."""

    keys: list[str]
    ts_ms: list[int]
    values: list[bytes]

    def __len__(self) -> int:
        return len(self.keys)

    def decoded(self) -> Decoded:
        return [
            (k, t, json.loads(v))
            for k, t, v in zip(self.keys, self.ts_ms, self.values, strict=True)
        ]

    def messages(self) -> list[Message]:
        return [
            Message(value=v, key=k.encode(), timestamp=t)
            for k, t, v in zip(self.keys, self.ts_ms, self.values, strict=True)
        ]


def make_workload(events: int, keys: int, seed: int = SEED) -> Workload:
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(keys)]
    chosen = [names[rng.randrange(keys)] for _ in range(events)]
    ts = [BASE_MS + STEP_MS * i - 2 * rng.randrange(JITTER_MS // 2 + 1) for i in range(events)]
    values = [json.dumps({"user": k, "n": 1}, separators=(",", ":")).encode() for k in chosen]
    return Workload(chosen, ts, values)


@dataclass(frozen=True)
class Case:
    number: str
    name: str
    kind: str  # "tumbling" or "session"
    size_ms: int  # the window's length or the session's gap

    def dict_loop(self, events: Decoded) -> tuple[float, Windows]:
        if self.kind == "tumbling":
            return dict_tumbling(events, self.size_ms)
        if self.kind == "join":
            return dict_join(events, self.size_ms)
        return dict_sessions(events, self.size_ms, OUT_OF_ORDERNESS_MS)


TUMBLING = Case("1", "tumbling 10 s count per key", "tumbling", WINDOW_MS)
SESSIONS = Case("2", "session count per key (gap 3 s)", "session", SESSION_GAP_MS)
JOIN = Case("3", "stream-table join, then tumbling 10 s count", "join", WINDOW_MS)
CASES = (TUMBLING, SESSIONS, JOIN)
PLANS = 5  # the table: one row per user, {"plan": "p<i % PLANS>"}


class Disagreement(RuntimeError):
    """Two sides computed different windows: the benchmark's numbers mean nothing."""


def check_same(case: Case, results: dict[str, Windows]) -> None:
    """Raise :class:`Disagreement` unless every side's windows equal the first's."""
    (first, expected), *others = results.items()
    for name, got in others:
        if got != expected:
            missing = sorted(expected - got)[:5]
            extra = sorted(got - expected)[:5]
            raise Disagreement(
                f"case {case.number} ({case.name}): {name} disagrees with {first}: "
                f"{len(expected - got)} windows missing (e.g. {missing}), "
                f"{len(got - expected)} extra (e.g. {extra})"
            )


# --- the dict loop ---------------------------------------------------------------------


def dict_tumbling(events: Decoded, window_ms: int) -> tuple[float, Windows]:
    started = time.perf_counter()
    counts: dict[tuple[str, int], int] = {}
    get = counts.get
    for key, ts, _value in events:
        window = (key, ts - ts % window_ms)
        counts[window] = get(window, 0) + 1
    seconds = time.perf_counter() - started
    return seconds, {(key, start, n) for (key, start), n in counts.items()}


def user_rows(keys: int) -> dict[str, dict[str, str]]:
    return {f"k{i}": {"plan": f"p{i % PLANS}"} for i in range(keys)}


def dict_join(events: Decoded, window_ms: int) -> tuple[float, Windows]:
    """The table in a dict, each event looked up, then counted per (key, plan, window)."""
    rows = user_rows(1 + max(int(key[1:]) for key, _ts, _v in events))
    started = time.perf_counter()
    counts: dict[tuple[str, int], int] = {}
    get = counts.get
    for key, ts, _value in events:
        window = (f"{key}/{rows[key]['plan']}", ts - ts % window_ms)
        counts[window] = get(window, 0) + 1
    seconds = time.perf_counter() - started
    return seconds, {(key, start, n) for (key, start), n in counts.items()}


def dict_sessions(events: Decoded, gap_ms: int, bound_ms: int) -> tuple[float, Windows]:
    """Per key, the open sessions ``[first, last, count]``, pairwise more than a gap
    apart; an event merges every session within a gap of it. Every 10,000 events the
    sessions a gap behind the watermark (largest time seen minus ``bound_ms``) close."""
    started = time.perf_counter()
    live: dict[str, list[list[int]]] = {}
    done: list[tuple[str, int, int]] = []
    newest = -(2**62)
    for at in range(0, len(events), 10_000):
        chunk = events[at : at + 10_000]
        for key, ts, _value in chunk:
            opened = live.get(key)
            if opened is None:
                live[key] = [[ts, ts, 1]]
            elif len(opened) == 1 and opened[0][0] - gap_ms <= ts <= opened[0][1] + gap_ms:
                session = opened[0]  # the usual case: one open session, extended
                if ts < session[0]:
                    session[0] = ts
                elif ts > session[1]:
                    session[1] = ts
                session[2] += 1
            else:
                merged, kept = [ts, ts, 1], []
                for s in opened:
                    if s[0] - gap_ms <= ts <= s[1] + gap_ms:
                        merged = [min(merged[0], s[0]), max(merged[1], s[1]), merged[2] + s[2]]
                    else:
                        kept.append(s)
                kept.append(merged)
                live[key] = kept
        newest = max(newest, *(ts for _key, ts, _value in chunk))
        _close_sessions(live, done, newest - bound_ms - gap_ms)
    _close_sessions(live, done, 2**62)
    seconds = time.perf_counter() - started
    return seconds, set(done)


def _close_sessions(live: dict[str, list[list[int]]], done: list[Any], before: int) -> None:
    for key in list(live):
        opened = live[key]
        kept = [s for s in opened if s[1] >= before]
        if len(kept) < len(opened):
            done.extend((key, s[0], s[2]) for s in opened if s[1] < before)
            if kept:
                live[key] = kept
            else:
                del live[key]


# --- unbundled -------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    windows: Windows
    epochs: int


def unbundled_run(parent: Path, messages: list[Message], case: Case) -> Run:
    """Load the topic (not timed), run the flow to the end of its input (timed), and
    read the windows back (not timed), in a fresh SQLite file that is then removed."""
    scratch = Path(tempfile.mkdtemp(prefix="streamsbench-", dir=parent))
    try:
        with unbundled.open(str(scratch / "streams.db")) as db:
            load_clicks(db, messages, PARTITIONS)
            last = max(m.timestamp or 0 for m in messages)
            streams.heartbeat(db.log, "clicks", now_ms=last + HEARTBEAT_AFTER_MS)
            flow = streams.Flow("counts", out_of_orderness_ms=OUT_OF_ORDERNESS_MS)
            events = flow.source("clicks")
            if case.kind == "join":
                load_users(db, 1 + max(int((m.key or b"k0")[1:]) for m in messages), last)
                joined = events.join_table("users", _with_plan)
                windowed = joined.key_by(_plan_key, repartition=False).window(
                    streams.Tumbling(case.size_ms)
                )
            elif case.kind == "tumbling":
                windowed = events.window(streams.Tumbling(case.size_ms))
            else:
                windowed = events.window(streams.Session(gap_ms=case.size_ms))
            windowed.count().to_topic("counts")
            started = time.perf_counter()
            report = streams.run(
                db,
                flow,
                until_end=True,
                epoch_records=EPOCH_RECORDS,
                epoch_event_ms=EPOCH_EVENT_MS,
            )
            seconds = time.perf_counter() - started
            if report.records_in < len(messages):
                raise Disagreement(
                    f"unbundled read {report.records_in:,} of {len(messages):,} records"
                )
            windows = read_windows(db)
        return Run(seconds, windows, report.epochs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with_plan(value: dict[str, Any], row: dict[str, str]) -> str:
    return f"{value['user']}/{row['plan']}"


def _plan_key(user_plan: str) -> str:
    return user_plan


def load_users(db: Any, keys: int, last: int) -> None:
    """The joined table: a compacted topic, co-partitioned with the clicks (keyed by
    user), every row from before the first event; a heartbeat past the last one."""
    db.log.create_topic("users", partitions=PARTITIONS, cleanup_policy="compact")
    rows = user_rows(keys)
    db.log.append_batch(
        "users",
        [
            Message(json.dumps(r).encode(), k.encode(), timestamp=BASE_MS - JITTER_MS - 1)
            for k, r in rows.items()
        ],
    )
    streams.heartbeat(db.log, "users", now_ms=last + HEARTBEAT_AFTER_MS)


def read_windows(db: Any) -> Windows:
    """The final windows of topic ``counts``; raises :class:`Disagreement` for a window
    emitted final twice (the output would not be exactly-once)."""
    windows: dict[tuple[str, int], int] = {}
    for partition in db.log.end_offsets("counts"):
        for record in db.log.scan("counts", partition):
            out = json.loads(record.value)
            if not isinstance(out, dict) or "start" not in out:
                continue
            if out.get("early") or out.get("timing", "on_time") != "on_time":
                continue  # a speculative firing; the final one follows
            key = out["key"]
            name = (key.decode() if isinstance(key, bytes) else str(key), int(out["start"]))
            if name in windows:
                raise Disagreement(f"unbundled emitted window {name} final twice")
            windows[name] = int(out["value"])
    return {(key, start, n) for (key, start), n in windows.items()}


# --- the comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One row: unbundled's rates against one competitor's, events/s per repetition
    (``theirs`` empty: the competitor did not run, ``note`` says why)."""

    case: Case
    competitor: str
    ours: tuple[float, ...]
    theirs: tuple[float, ...]
    floor: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.theirs or not self.ours:
            return None
        return statistics.median(self.ours) / statistics.median(self.theirs)

    @property
    def verdict(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return "not run"
        if self.floor is None:
            return "context"
        return "PASS" if ratio >= self.floor else "BELOW FLOOR"


def bench_case(
    parent: Path, work: Workload, case: Case, repeats: int, rival: Any | None
) -> list[Line]:
    """Every side ``repeats`` times on the same events; raises :class:`Disagreement`
    when their windows differ. ``rival`` None: unbundled and the dict loop only."""
    messages, decoded = work.messages(), work.decoded()
    inputs = rival.items(work.keys, work.ts_ms) if rival is not None else []
    rates: dict[str, list[float]] = {}
    epochs: list[int] = []
    n = len(work)

    def ours() -> Windows:
        run = unbundled_run(parent, messages, case)
        epochs.append(run.epochs)
        rates.setdefault("unbundled", []).append(n / run.seconds)
        return run.windows

    def loop() -> Windows:
        seconds, windows = case.dict_loop(decoded)
        rates.setdefault("dict", []).append(n / seconds)
        return windows

    def bytewax(recovery: bool) -> Callable[[], Windows]:
        def side() -> Windows:
            assert rival is not None
            count = rival.tumbling_counts if case.kind == "tumbling" else rival.session_counts
            scratch = Path(tempfile.mkdtemp(prefix="streamsbench-bytewax-", dir=parent))
            try:
                result: tuple[float, Windows] = count(
                    inputs, case.size_ms, OUT_OF_ORDERNESS_MS, scratch if recovery else None
                )
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            rates.setdefault(f"bytewax{recovery}", []).append(n / result[0])
            return result[1]

        return side

    def least() -> Windows:
        seconds, windows = least_work(parent, messages, case.size_ms, PARTITIONS)
        rates.setdefault("least", []).append(n / seconds)
        return windows

    sides: dict[str, Callable[[], Windows]] = {"unbundled": ours, "dict loop": loop}
    if case is TUMBLING:
        sides["least work"] = least
    if rival is not None and case.kind != "join":
        sides["Bytewax, recovery off"] = bytewax(False)
        sides["Bytewax, recovery on"] = bytewax(True)
    names = list(sides)
    for repeat in range(repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        results = {name: sides[name]() for name in order}
        check_same(case, {name: results[name] for name in names})
    mine = tuple(rates["unbundled"])
    spread = (
        f"{min(epochs):,} to {max(epochs):,}" if min(epochs) != max(epochs) else f"{epochs[0]:,}"
    )
    epoch_note = f"unbundled: {spread} epochs per run"
    floors = case is TUMBLING
    lines = []
    if rival is not None and case.kind != "join":
        for recovery, what in ((False, "recovery off"), (True, "recovery on: SQLite, 1 s epochs")):
            lines.append(
                Line(
                    case,
                    f"Bytewax {rival.VERSION}, {what}",
                    mine,
                    tuple(rates[f"bytewax{recovery}"]),
                    BYTEWAX_FLOOR if floors else None,
                    epoch_note,
                )
            )
    lines.append(
        Line(
            case,
            "dict loop (raw floor)",
            mine,
            tuple(rates["dict"]),
            DICT_FLOOR if floors else None,
            epoch_note,
        )
    )
    if case is TUMBLING:
        lines.append(
            Line(
                case,
                "least work: read + decode + Counter (the ceiling of this design)",
                mine,
                tuple(rates["least"]),
                None,
                LEAST_NOTE,
            )
        )
        lines.append(Line(case, "Quix Streams 3.x", mine, (), None, QUIX_WHY))
    if case is JOIN:
        lines.append(Line(case, "Bytewax 0.21", mine, (), None, BYTEWAX_JOIN_WHY))
    return lines


def load_rival() -> Any | None:
    """The competitor's module, or None where Bytewax is not installed."""
    if importlib.util.find_spec("bytewax") is None:
        return None
    return importlib.import_module("bench.bytewax_side")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; writes nothing")
    parser.add_argument("--events", type=int, default=None, help="events per case (1,000,000)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (3)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the table")
    args = parser.parse_args(argv)

    from rich.console import Console

    from bench.common import scratch_parent

    sizes = QUICK if args.quick else FULL
    sizes = Sizes(args.repeats or sizes.repeats, args.events or sizes.events, sizes.keys)
    if not (1 <= sizes.repeats <= 20 and 1_000 <= sizes.events <= 10_000_000):
        parser.error("--repeats must be 1 to 20 and --events 1,000 to 10,000,000")
    output = args.output if args.output is not None else (None if args.quick else RESULTS)
    console = Console() if sys.stdout.isatty() else Console(width=220)
    rival = load_rival()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = make_workload(sizes.events, sizes.keys)
    lines: list[Line] = []
    for case in CASES:
        with console.status(f"{case.number}. {case.name}: every side, {sizes.repeats} times"):
            lines += bench_case(scratch_parent(), work, case, sizes.repeats, rival)
    rows = [cells(line) for line in lines]
    workload = (
        f"{sizes.events:,} events of {sizes.keys:,} keys, seed {SEED}, event time "
        f"{STEP_MS} ms apart on average, up to {JITTER_MS:,} ms out of order"
    )
    facts = machine_facts(sizes, rival.VERSION if rival is not None else None, workload)
    facts.append(
        (
            "load average",
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute): other "
            "work on the machine slows every side alike",
        )
    )
    notes = [
        "Epochs: unbundled decides whether an epoch is due once per poll (`streams.run`'s "
        "`poll_records`, 5,000), so with 2 ms of event time per event an epoch ends at about "
        "every poll (10 s of event time), not every 1 s (the notes column gives its epochs "
        "per run); Bytewax's recovery epochs are 1 s of system time, the only kind it has.",
        "Case 3 joins each click with its user's row (a compacted topic, co-partitioned) as "
        "of the click's time, then counts per (user/plan, window); the dict loop looks the "
        "row up in a dict.",
    ]
    if rival is None:
        notes.append("Bytewax is not installed here: no Bytewax lines")
    if args.quick:
        notes.append("--quick run: tiny sizes, the numbers are not comparable to a full run.")
    if sizes.events != FULL.events:
        notes.append(f"ran with {sizes.events:,} events per case, not {FULL.events:,}.")
    notes.append(f"total time of the run: {time.perf_counter() - started:,.0f} s")
    show_results(
        console,
        "unbundled streams vs Bytewax and a dict loop (events/s)",
        HEADERS,
        lambda header: header in ("unbundled", "competitor's rate", "ratio"),
        [(row, row[7] == "BELOW FLOOR") for row in rows],
        facts,
        notes,
    )
    command = "bench/run.py --only streams" + (" --quick" if args.quick else "")
    notes.append(f"command: `.venv/bin/python {command}`")
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
