"""A corruption fuzzer for the SQLite file (issue 9, item 3).

It builds one small file holding every store (log records of a plain and of
a compacted topic, with headers and values large enough to overflow a page;
events in several streams; idempotency records; key-value entries), then
damages copies of it in every way it can name (:func:`mutations`) and runs
every read through the API and the CLI on each copy. A read passes if it
returns exactly what it returns on the undamaged file, or raises
``CorruptionError`` (the CLI: exit status 6, no traceback, and only output the
undamaged file also prints). Anything else is a failure.

``tests/fuzz/test_fuzz.py`` runs a seeded sample in ``make test``;
``make fuzz`` (``bench/run.py --only fuzz``) runs the whole sweep. It lives
in bench/, below both, so that the benchmark imports no test.
"""

from __future__ import annotations

import random
import sqlite3
import struct
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from unbundled import CorruptionError, EventStore, Idempotency, Log, Message
from unbundled.backends.sqlite import SqliteBackend
from unbundled.cli import cli
from unbundled.consistency import KV
from unbundled.eventstore import NewEvent

HEADER_BYTES = 100  # the SQLite file header, at the start of page 1
PLAIN, COMPACT = "orders", "prices"
STREAMS = ("acct-1", "acct-2", "order-9")
IDEMPOTENCY_KEYS = tuple(f"req-{i:02d}" for i in range(16))
KV_KEYS = tuple(f"key-{i:02d}" for i in range(16))
# The b-trees whose every page byte the full sweep flips: one page of each
# kind the reads depend on (see select_pages).
SWEPT = (
    "sqlite_schema",
    "meta",
    "topics",
    "partitions",
    "removed_ranges",
    "heads",
    "log_1_0",
    "log_2_0",
    "events",
    "events_stream",
    "streams",
    "idempotency",
    "kv",
    "sqlite_autoindex_kv_1",
)

Outcome = tuple[str, Any]  # ("ok", value) or ("error", exception class name)


# --- the file -------------------------------------------------------------------


NOW_MS = 1_750_000_000_000  # a fixed clock: the file is the same, byte for byte, every run


def _clock() -> int:
    return NOW_MS


def _open_all(path: Path) -> tuple[SqliteBackend, Log, EventStore, Idempotency, KV]:
    backend = SqliteBackend(path, sync="off", clock=_clock, maintenance_interval_s=None)
    return backend, Log(backend), EventStore(backend), Idempotency(backend), KV(backend)


def build(path: Path) -> None:
    """Write the small file every mutation starts from (deterministic content,
    apart from timestamps and event ids)."""
    rng = random.Random(7)
    backend, log, store, idem, kv = _open_all(path)
    try:
        log.create_topic(PLAIN, partitions=2)
        log.create_topic(COMPACT, cleanup_policy="compact", tombstone_retention_ms=3_600_000)
        for i in range(240):
            size = 6000 if i % 80 == 7 else rng.randrange(10, 90)  # a few overflow pages
            message = Message(
                rng.randbytes(size),
                key=None if i % 3 == 0 else f"k{i % 17}".encode(),
                headers=(("trace", f"t{i}".encode()),) if i % 5 == 0 else (),
            )
            log.append_batch(PLAIN, [message])
        for i in range(120):
            value = None if i == 100 else str(i * 7).encode()  # one tombstone
            log.append_batch(COMPACT, [Message(value, key=f"sku-{i % 12}".encode())])
        log.maintain()  # compaction leaves gaps, recorded in removed_ranges
        for i in range(60):
            data = f'{{"n": {i}, "pad": "{"x" * rng.randrange(0, 60)}"}}'.encode()
            event = NewEvent(str(uuid.UUID(int=i + 1)), "Noted", data)
            store.append(STREAMS[i % len(STREAMS)], [event])
        for i, name in enumerate(IDEMPOTENCY_KEYS):
            if i % 4 == 0:  # in progress, as a worker that crashed left it
                backend.claim(name, f"f{i}", lease_ms=3_600_000, retention_ms=86_400_000)
                continue
            with idem.run(name, {"order": i}) as attempt:
                idem.complete(attempt, {"ok": i})
        for i, name in enumerate(KV_KEYS):
            for round_ in range(1 + i % 3):
                kv.write(name, f"v{i}.{round_}".encode())
            if i % 7 == 3:
                kv.delete(name)
    finally:
        backend.close()  # checkpoints: everything is in the main file, no WAL


# --- the reads --------------------------------------------------------------------


def _outcome(read: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", read())
    except CorruptionError:
        return ("error", "CorruptionError")
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return ("error", f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")


def _scan(log: Log, topic: str, partition: int, offset: int = 0) -> list[Any]:
    """Every record from ``offset``, read in small slices (each slice a read
    with its own range checks)."""
    out: list[Any] = []
    while True:
        batch = log.read(topic, partition, offset, records_max=37)
        if not batch:
            return out
        out.extend(batch)
        offset = batch[-1].offset + 1


def api_reads(path: Path) -> dict[str, Outcome]:
    """Every read of every store through the public API, by name."""
    try:
        backend, log, store, idem, kv = _open_all(path)
    except Exception as exc:
        failed = exc
        return {"open": _outcome(lambda: _raise(failed))}
    reads: dict[str, Callable[[], Any]] = {
        "topics": log.topics,
        "describe orders": lambda: log.describe_topic(PLAIN),
        "describe prices": lambda: log.describe_topic(COMPACT),
        "orders[0]": lambda: _scan(log, PLAIN, 0),
        "orders[1]": lambda: _scan(log, PLAIN, 1),
        "orders[1]@60": lambda: _scan(log, PLAIN, 1, 60),
        "prices[0]": lambda: _scan(log, COMPACT, 0),
        "prices[0]@50": lambda: _scan(log, COMPACT, 0, 50),
        "end offsets": lambda: log.end_offsets(PLAIN),
        "$all": lambda: store.read_all(limit=1000),
        "$all@20": lambda: store.read_all(20, limit=7),
        "safe position": store.safe_position,
        "streams": store.streams,
        "idempotency records": idem.records,
    }
    for stream in STREAMS:
        reads[f"stream {stream}"] = partial(store.read, stream)
        reads[f"stream {stream} backwards"] = partial(store.read, stream, backwards=True)
    for name in IDEMPOTENCY_KEYS:
        reads[f"idempotency {name}"] = partial(idem.get, name)
    for name in KV_KEYS:
        reads[f"kv {name}"] = partial(kv.read, name)
    try:
        return {name: _outcome(read) for name, read in reads.items()}
    finally:
        backend.close()


def _raise(exc: BaseException) -> Any:
    raise exc


CLI_COMMANDS: tuple[tuple[str, ...], ...] = (
    # --timeout 0: stop at the first empty poll (everything is there already).
    ("consume", PLAIN, COMPACT, "--from-beginning", "--json", "--timeout", "0"),
    ("topics", "describe", PLAIN, "--json"),
    ("topics", "describe", COMPACT, "--json"),
    ("events", "read", "$all", "--json"),
    ("events", "read", STREAMS[0], "--json"),
    ("idempotency", "list", "--json"),
    ("kv", "get", KV_KEYS[1]),
)


@dataclass(frozen=True)
class CliResult:
    status: int
    lines: tuple[bytes, ...]
    crashed: str | None  # a traceback, if the command raised out of click


def cli_reads(path: Path) -> dict[str, CliResult]:
    """Every CLI read, in-process (the same code path as the command, minus
    the interpreter's start-up)."""
    out = {}
    runner = CliRunner()
    for args in CLI_COMMANDS:
        result = runner.invoke(cli, ["--db", str(path), "--sync", "off", *args])
        crashed = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            crashed = "".join(traceback.format_exception(result.exception))
        lines = tuple(sorted(result.stdout_bytes.splitlines()))
        out[" ".join(args)] = CliResult(result.exit_code, lines, crashed)
    return out


# --- damage -------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    number: int  # from 1
    btree: str
    kind: str  # internal, leaf or overflow


@dataclass(frozen=True)
class Mutation:
    """One way of damaging the file: ``kind`` at byte ``at`` (a length for
    ``truncate``; a page number for ``cells`` and ``zero``), in a page of
    b-tree ``btree``."""

    kind: str
    at: int
    btree: str = ""
    value: int = 0xFF

    def apply(self, data: bytes, page_size: int) -> bytes:
        if self.kind == "truncate":
            return data[: self.at]
        damaged = bytearray(data)
        if self.kind in ("flip", "header"):
            damaged[self.at] ^= self.value
        elif self.kind == "zero":
            start = (self.at - 1) * page_size
            damaged[start : start + page_size] = bytes(page_size)
        elif self.kind == "cells":
            # The b-tree page header's cell count (after the 100-byte file
            # header on page 1): lowered, a page silently drops its last cells.
            start = (self.at - 1) * page_size + (HEADER_BYTES if self.at == 1 else 0)
            (count,) = struct.unpack_from(">H", damaged, start + 3)
            struct.pack_into(">H", damaged, start + 3, max(0, count + self.value) & 0xFFFF)
        return bytes(damaged)

    def describe(self) -> str:
        """How to name (and replay) it: ``Mutation(kind, at, btree, value)``."""
        where = f" ({self.btree})" if self.btree else ""
        if self.kind in ("flip", "header"):
            return f"{self.kind} byte {self.at} ^ {self.value:#04x}{where}"
        if self.kind == "cells":
            return f"cell count {self.value:+d} on page {self.at}{where}"
        return f"{self.kind} {self.at}{where}"


@dataclass
class Corpus:
    """The undamaged file and what every read returns on it."""

    data: bytes
    page_size: int
    pages: list[Page]
    api: dict[str, Outcome]
    cli: dict[str, CliResult]

    @classmethod
    def create(cls, directory: Path) -> Corpus:
        path = directory / "pristine.db"
        build(path)
        data = path.read_bytes()
        (page_size,) = struct.unpack_from(">H", data, 16)
        with sqlite3.connect(path) as raw:
            rows = raw.execute(
                "SELECT name, pageno, pagetype FROM dbstat ORDER BY pageno"
            ).fetchall()
        raw.close()
        pages = [Page(number, name, kind) for name, number, kind in rows]
        api = api_reads(path)
        cli_results = cli_reads(path)
        _check_pristine(api, cli_results)
        return cls(data, page_size, pages, api, cli_results)


def _check_pristine(api: dict[str, Outcome], cli_results: dict[str, CliResult]) -> None:
    """The undamaged file must read without errors: it is the oracle."""
    failed = [name for name, (status, _) in api.items() if status != "ok"]
    failed += [
        name for name, r in cli_results.items() if r.status != 0 and not name.startswith("kv")
    ]
    if failed:
        raise AssertionError(f"the undamaged file fails these reads: {failed}")


def select_pages(pages: list[Page]) -> list[Page]:
    """The pages whose every byte the sweep flips: per b-tree of ``SWEPT``, its
    last leaf, its first internal page and its first overflow page."""
    chosen: dict[tuple[str, str], Page] = {}
    for page in pages:
        if page.btree not in SWEPT:
            continue
        key = (page.btree, page.kind)
        if page.kind != "leaf" and key in chosen:
            continue
        chosen[key] = page
    return sorted(chosen.values(), key=lambda p: p.number)


def mutations(corpus: Corpus, pages: list[Page] | None = None) -> Iterator[Mutation]:
    """Every mutation of the full sweep, kind by kind."""
    size = corpus.page_size
    total = len(corpus.data) // size
    names = {p.number: p.btree for p in corpus.pages}
    for page in pages if pages is not None else select_pages(corpus.pages):
        first = (page.number - 1) * size + (HEADER_BYTES if page.number == 1 else 0)
        for at in range(first, page.number * size):
            yield Mutation("flip", at, page.btree)
    for at in range(HEADER_BYTES):
        yield Mutation("header", at, "file header")
        for bit in range(8):
            yield Mutation("header", at, "file header", 1 << bit)
    for page in corpus.pages:
        if page.kind != "overflow":
            for delta in (-1, -2, 1):
                yield Mutation("cells", page.number, page.btree, delta)
    for number in range(1, total + 1):
        yield Mutation("zero", number, names.get(number, "free"))
    for number in range(1, total):
        for inside in (0, 1, size // 2, size - 1):
            yield Mutation("truncate", number * size + inside, names.get(number + 1, "free"))


def sample(corpus: Corpus, count: int, seed: int) -> list[Mutation]:
    """``count`` mutations drawn from the full sweep's, reproducibly, plus a
    single-bit flip anywhere in the file for a tenth of them."""
    rng = random.Random(seed)
    names = {p.number: p.btree for p in corpus.pages}
    everything = list(mutations(corpus))
    chosen = rng.sample(everything, min(count, len(everything)))
    for _ in range(count // 10):
        at = rng.randrange(HEADER_BYTES, len(corpus.data))
        btree = names.get(at // corpus.page_size + 1, "free")
        chosen.append(Mutation("flip", at, btree, 1 << rng.randrange(8)))
    return chosen


# --- judging ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of a sweep, by mutation kind and verdict, and of lost keys by
    b-tree; failures in full."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, mutation: Mutation, verdict: str, problems: Iterable[str]) -> None:
        self.counts[(mutation.kind, verdict)] += 1
        if verdict == "key lost":
            self.lost[mutation.btree] += 1
        for problem in problems:
            self.failures.append(f"{mutation.describe()}: {problem}")

    def merge(self, other: Tally) -> None:
        self.counts.update(other.counts)
        self.lost.update(other.lost)
        self.failures.extend(other.failures)

    def total(self, verdict: str | None = None) -> int:
        return sum(n for (_, v), n in self.counts.items() if verdict in (None, v))


# The b-trees through which reads look keys up. SQLite keeps no checksum on
# pages and a b-tree holds no count of its keys, so when damage to one of them
# loses a key (a lowered cell count, a damaged key or divider), a lookup
# cannot tell the key from one never written: the key looks absent. Only a
# check of the whole file finds that (docs/reference/format.md, "What reads
# cannot see"). The sweep counts these apart, as "key lost".
KEY_BTREES = ("idempotency", "sqlite_autoindex_kv_1", "events_stream", "streams")


def _is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    rest = iter(whole)
    return len(part) < len(whole) and all(any(x == y for y in rest) for x in part)


def _key_lost(name: str, expected: Outcome, got: Outcome) -> bool:
    """``got`` is ``expected`` with keys missing, in the shape a lost key
    takes for this read: absent, a stream without its newest events, a
    listing without some entries."""
    status, value = got
    wanted = expected[1]
    if name.startswith(("idempotency req-", "kv ")):
        return got == ("ok", None)
    if name.startswith("stream "):
        if status == "error":
            return str(value).startswith("StreamNotFound")
        if name.endswith("backwards"):
            return len(value) < len(wanted) and value == wanted[len(wanted) - len(value) :]
        return len(value) < len(wanted) and value == wanted[: len(value)]
    if name in ("streams", "idempotency records"):
        return status == "ok" and _is_subsequence(value, wanted)
    return False


def judge_api(corpus: Corpus, mutation: Mutation, got: dict[str, Outcome]) -> tuple[str, list[str]]:
    """``exact``, ``corruption`` (some read raised CorruptionError, the rest
    were exact), ``key lost`` (see KEY_BTREES) or ``failure`` with what went wrong."""
    if "open" in got:
        value = got["open"][1]
        if value == "CorruptionError":
            return "corruption", []
        return "failure", [f"open raised {value}"]
    problems = []
    verdicts = set()
    for name, expected in corpus.api.items():
        outcome = got[name]
        if outcome == expected:
            continue
        if outcome == ("error", "CorruptionError"):
            verdicts.add("corruption")
        elif mutation.btree in KEY_BTREES and _key_lost(name, expected, outcome):
            verdicts.add("key lost")
        else:
            problems.append(f"{name}: {repr(outcome[1])[:300]}")
    if problems:
        return "failure", problems
    return _worst(verdicts), []


def judge_cli(
    corpus: Corpus, mutation: Mutation, got: dict[str, CliResult]
) -> tuple[str, list[str]]:
    """As :func:`judge_api`, for the CLI: exit 6 (and only genuine output
    before it) is a detected corruption; a traceback is always a failure."""
    problems = []
    verdicts = set()
    for name, expected in corpus.cli.items():
        result = got[name]
        extra = Counter(result.lines) - Counter(expected.lines)
        if result.crashed is not None:
            problems.append(f"CLI {name}: traceback\n{result.crashed}")
        elif result.status == expected.status and result.lines == expected.lines:
            continue
        elif result.status == 6 and not extra:
            verdicts.add("corruption")  # stopped at the damage; what it printed was genuine
        elif mutation.btree in KEY_BTREES and result.status in (0, 3) and not extra:
            verdicts.add("key lost")  # printed less, or "absent" (exit 3)
        else:
            problems.append(f"CLI {name}: exit {result.status}, {len(result.lines)} lines")
    if problems:
        return "failure", problems
    return _worst(verdicts), []


VERDICTS = ("exact", "corruption", "key lost", "failure")  # from best to worst
_RANKS = VERDICTS


def _worst(verdicts: Iterable[str]) -> str:
    return max(verdicts, key=_RANKS.index, default="exact")


def check(corpus: Corpus, mutation: Mutation, work: Path, with_cli: bool) -> tuple[str, list[str]]:
    """Damage a copy of the file with ``mutation``, run the reads, judge them."""
    path = work / "damaged.db"
    damaged = mutation.apply(corpus.data, corpus.page_size)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(damaged)
    verdict, problems = judge_api(corpus, mutation, api_reads(path))
    if not with_cli or verdict == "failure":
        return verdict, problems
    for suffix in ("", "-wal", "-shm"):  # each command starts from the damaged file
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(damaged)
    cli_verdict, cli_problems = judge_cli(corpus, mutation, cli_reads(path))
    return _worst((verdict, cli_verdict)), problems + cli_problems


def sweep(
    corpus: Corpus,
    chosen: Iterable[Mutation],
    work: Path,
    *,
    cli_every: int = 1,
    progress: Callable[[], None] | None = None,
) -> Tally:
    """Check every mutation (the CLI on every ``cli_every``-th one, and on
    every one whose API reads did not come back exact)."""
    tally = Tally()
    for index, mutation in enumerate(chosen):
        verdict, problems = check(corpus, mutation, work, with_cli=index % cli_every == 0)
        if verdict == "corruption" and index % cli_every:
            verdict, problems = check(corpus, mutation, work, with_cli=True)
        tally.add(mutation, verdict, problems)
        if progress is not None:
            progress()
    return tally


__all__ = ["Corpus", "Mutation", "Tally", "check", "mutations", "sample", "select_pages", "sweep"]
