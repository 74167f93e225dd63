"""Power cuts of every durable part on SQLite (issue 13): the writers, the
checkers and the cut loop, shared by ``tests/lazyfs/test_power_cut_parts.py``
(50 cuts) and ``bench/powercut_bench.py`` (1,000).

A *case* is one part (``log``, ``events``, ``idempotency``, ``kv``, ``unit``)
at one sync level (``full``, ``normal``) on one LazyFS mount, cut again and
again: start a writer, let it acknowledge a seeded number of writes, SIGKILL
it a seeded moment later, cut the power (seeded ``tear`` and ``reorder``),
remount, reopen with ``unbundled.open`` and check, then write more on the
same file and cut again.

The writer (``python -m bench.powercut write PART DB SYNC SEED ROUND``)
prints ``try <json>`` before each write and ``ack <json>`` once it returned
(one ``write(2)`` per line), so the checker knows every acknowledged write
and the one in flight. Each part has a model: the state a prefix of the
writes leaves (records in order, batches whole, offsets, versions, keys).
The reopened file must show the model's state of some prefix that holds
every write known before (what a previous check saw) and, under ``full``,
every acknowledged one; at most the write in flight may be there too.
Under ``normal`` a suffix of acknowledged writes may be missing (counted as
``lost``), never a middle part. Opening must not raise ``CorruptionError``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import unbundled
from unbundled import NotFound, TopicPartition
from unbundled.database import Database
from unbundled.eventstore import NewEvent, Projection
from unbundled.eventstore.read_models import Documents
from unbundled.testing.child import ChildProcess
from unbundled.testing.lazyfs import LazyFS

REPO = Path(__file__).resolve().parent.parent
PARTS = ("log", "events", "idempotency", "kv", "unit")
SYNCS = ("full", "normal")
WRITES_MAX = 10_000  # per writer; far more than a cut lets it make
LIFETIME_S = 120.0  # a writer the parent forgot exits on its own
ACK_TIMEOUT_S = 30.0

Sync = Literal["full", "normal"]
Op = dict[str, Any]
State = Any


class PowerCutFailure(AssertionError):
    """A guarantee did not hold; the message names the seeds that replay it."""


# --- the writers ------------------------------------------------------------------------


def say(word: str, op: Op) -> None:
    os.write(1, f"{word} {json.dumps(op, sort_keys=True)}\n".encode())


def event(tag: str, i: int, n: int) -> NewEvent:
    data = json.dumps({"tag": tag, "i": i, "n": n}).encode()
    return NewEvent(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}:{i}")), type="T", data=data)


COUNTS = Documents("counts", dict)


class Counter(Projection):
    """Counts events: ``counts/n`` is how many it applied."""

    name = "counter"
    collections = ("counts",)

    def handle(self, event: Any, txn: Any) -> None:
        doc = COUNTS.get(txn, "n") or {"n": 0}
        COUNTS.put(txn, "n", {"n": doc["n"] + 1})


def write_log(db: Database, rng: random.Random, r: int) -> None:
    log = db.log
    log.create_topic("t", exist_ok=True)
    log.create_topic("u", exist_ok=True)
    producer = log.producer("p")
    try:
        txs = log.describe_group("g").committed.get(TopicPartition("t", 0), 0)
    except NotFound:
        txs = 0
    for n in range(WRITES_MAX):
        tag = f"{r}.{n}"
        kind = rng.choice(["append", "batch", "tx", "producer"])
        size = rng.randint(2, 5) if kind in ("batch", "producer") else 1
        op = {"tag": tag, "kind": kind, "n": size}
        say("try", op)
        values = [f"{tag}:{i}/{size}".encode() for i in range(size)]
        if kind == "append":
            log.append("t", values[0])
        elif kind == "batch":
            log.append_batch("t", values)
        elif kind == "producer":
            producer.append_batch("t", values)
        else:
            txs += 1
            with log.transaction() as tx:
                tx.append("t", f"{tag}:0/2".encode())
                tx.append("u", f"{tag}:1/2".encode())
                tx.commit_offsets(group="g", offsets={TopicPartition("t", 0): txs})
        say("ack", op)


def write_events(db: Database, rng: random.Random, r: int) -> None:
    runner = db.events.projections(Counter())
    for n in range(WRITES_MAX):
        tag = f"{r}.{n}"
        kind = rng.choice(["append", "append", "many", "project"])
        size = rng.randint(1, 3)
        op: Op = {"tag": tag, "kind": kind, "n": size, "stream": f"s{rng.randrange(3)}"}
        say("try", op)
        if kind == "append":
            db.events.append(op["stream"], [event(tag, i, size) for i in range(size)])
        elif kind == "many":
            db.events.append_many(
                [("a", [event(tag, 0, 2)], unbundled.ANY), ("b", [event(tag, 1, 2)], unbundled.ANY)]
            )
        else:
            op["checkpoint"] = runner.catch_up()
        say("ack", op)


def write_idempotency(db: Database, rng: random.Random, r: int) -> None:
    idem = db.idempotency
    for n in range(WRITES_MAX):
        tag = f"{r}.{n}"
        claim = {"tag": f"{tag}c", "kind": "claim", "key": f"k{tag}"}
        say("try", claim)
        attempt = idem.attempt(claim["key"], {"tag": tag, "pad": "x" * rng.randrange(2000)})
        assert not attempt.replayed, attempt.record
        say("ack", claim)
        done = {"tag": f"{tag}d", "kind": "complete", "key": f"k{tag}", "result": tag}
        say("try", done)
        idem.complete(attempt, {"tag": tag})
        say("ack", done)


def write_kv(db: Database, rng: random.Random, r: int) -> None:
    kv = db.kv
    keys = [f"k{i}" for i in range(5)]
    versions = {}
    for key in keys:
        found = kv.read(key)
        versions[key] = 0 if found is None else found[1]
    for n in range(WRITES_MAX):
        tag = f"{r}.{n}"
        key = rng.choice(keys)
        kind = rng.choice(["write", "cas"])
        value = f"{tag}:" + "v" * rng.randrange(3000)
        op = {"tag": tag, "kind": kind, "key": key, "value": value}
        say("try", op)
        if kind == "write":
            versions[key] = kv.write(key, value.encode())
        else:
            ok = kv.compare_and_set(key, new=value.encode(), expected_version=versions[key])
            assert ok, f"compare_and_set of {key} at version {versions[key]} failed"
            versions[key] += 1
        say("ack", op)


def write_unit(db: Database, rng: random.Random, r: int) -> None:
    db.log.create_topic("out", exist_ok=True)
    found = db.kv.read("count")
    count = 0 if found is None else int(found[0])
    for n in range(WRITES_MAX):
        tag = f"{r}.{n}"
        claim = {"tag": f"{tag}c", "kind": "claim", "key": f"k{tag}"}
        say("try", claim)
        attempt = db.idempotency.attempt(claim["key"], tag)
        say("ack", claim)
        unit = {"tag": f"{tag}u", "kind": "unit", "key": f"k{tag}", "result": f"{tag}u"}
        say("try", unit)
        with db.transaction() as tx:
            tx.append("out", f"{tag}u".encode() + b"x" * rng.randrange(1500))
            tx.append_events("acc", [event(f"{tag}u", 0, 1)], count - 1 if count else -1)
            tx.complete(attempt, {"tag": f"{tag}u"})
            tx.kv.compare_and_set(
                "count", new=b"%d" % (count + 1), expected_value=b"%d" % count if count else None
            )
            tx.commit_offsets(group="g", offsets={TopicPartition("out", 0): count + 1})
        count += 1
        say("ack", unit)


WRITERS: dict[str, Callable[[Database, random.Random, int], None]] = {
    "log": write_log,
    "events": write_events,
    "idempotency": write_idempotency,
    "kv": write_kv,
    "unit": write_unit,
}


def level(sync: str) -> Sync:
    if sync == "full":
        return "full"
    if sync == "normal":
        return "normal"
    raise ValueError(f"sync must be 'full' or 'normal', got {sync!r}")


def write(part: str, path: str, sync: str, seed: int, r: int) -> None:
    with unbundled.open(path, sync=level(sync)) as db:
        WRITERS[part](db, random.Random(seed), r)
    os.write(1, b"done\n")
    time.sleep(LIFETIME_S)


# --- the models and what the reopened file shows ------------------------------------------


def _split(value: bytes | None) -> tuple[str, int, int]:
    assert value is not None
    tag, _, rest = value.decode().partition(":")
    i, _, n = rest.partition("/")
    return tag, int(i), int(n)


def _records(db: Database, topic: str) -> list[tuple[str, int, int]]:
    try:
        return [_split(r.value) for r in db.log.read(topic, 0, 0, records_max=100_000)]
    except NotFound:
        return []


def _committed(db: Database, group: str, tp: TopicPartition) -> int:
    try:
        return db.log.describe_group(group).committed.get(tp, 0)
    except NotFound:
        return 0


def observe_log(db: Database) -> State:
    producer = db.log.producer("p").last_sequence if "t" in db.log.topics() else -1
    return {
        "t": _records(db, "t"),
        "u": _records(db, "u"),
        "g": _committed(db, "g", TopicPartition("t", 0)),
        "producer": producer,
    }


def model_log(ops: list[Op]) -> State:
    t = []
    for op in ops:
        n = 2 if op["kind"] == "tx" else op["n"]
        t += [(op["tag"], i, n) for i in range(1 if op["kind"] == "tx" else n)]
    txs = [op for op in ops if op["kind"] == "tx"]
    return {
        "t": t,
        "u": [(op["tag"], 1, 2) for op in txs],
        "g": len(txs),
        "producer": sum(op["kind"] == "producer" for op in ops) - 1,
    }


def observe_events(db: Database) -> State:
    raw = db.events.read_all_raw(0, limit=100_000)
    events = []
    for e in raw:
        data = json.loads(e.data)
        events.append((e.stream, e.version, data["tag"], data["i"], data["n"]))
    checkpoint = db.events.projections(Counter()).status()["counter"].checkpoint
    applied = sum(e.position <= checkpoint for e in raw)
    count = (COUNTS.load(db.events, "n") or {"n": 0})["n"]
    if count != applied:  # the read model and its checkpoint commit together
        raise PowerCutFailure(f"the projection counted {count} events, its checkpoint {applied}")
    return {"events": events, "projected": count}


def model_events(ops: list[Op]) -> State:
    events: list[tuple[str, int, str, int, int]] = []
    versions: dict[str, int] = {}
    projected = 0

    def add(stream: str, tag: str, i: int, n: int) -> None:
        versions[stream] = versions.get(stream, -1) + 1
        events.append((stream, versions[stream], tag, i, n))

    for op in ops:
        if op["kind"] == "append":
            for i in range(op["n"]):
                add(op["stream"], op["tag"], i, op["n"])
        elif op["kind"] == "many":
            add("a", op["tag"], 0, 2)
            add("b", op["tag"], 1, 2)
        else:
            projected = len(events)
    return {"events": events, "projected": projected}


def observe_idempotency(db: Database) -> State:
    state = {}
    for record in db.idempotency.records(limit=100_000):
        result = None if record.result is None else json.loads(record.result)
        state[record.key] = (record.state, result)
    return state


def model_idempotency(ops: list[Op]) -> State:
    state: dict[str, Any] = {}
    for op in ops:
        if op["kind"] == "claim":
            state[op["key"]] = ("in_progress", None)
        else:
            state[op["key"]] = ("completed", {"tag": op["result"]})  # complete, unit
    return state


def observe_kv(db: Database) -> State:
    state = {}
    for i in range(5):
        found = db.kv.read(f"k{i}")
        if found is not None:
            state[f"k{i}"] = (found[0].decode(), found[1])
    return state


def model_kv(ops: list[Op]) -> State:
    state: dict[str, tuple[str, int]] = {}
    for op in ops:
        version = state.get(op["key"], ("", 0))[1]
        state[op["key"]] = (op["value"], version + 1)
    return state


def observe_unit(db: Database) -> State:
    try:
        events = [json.loads(e.data)["tag"] for e in db.events.read_raw("acc", limit=100_000)]
    except NotFound:
        events = []
    count = db.kv.read("count")
    return {
        "out": [value.rstrip("x") for value in _records_raw(db, "out")],
        "acc": events,
        "keys": observe_idempotency(db),
        "count": None if count is None else (int(count[0]), count[1]),
        "g": _committed(db, "g", TopicPartition("out", 0)),
    }


def _records_raw(db: Database, topic: str) -> list[str]:
    try:
        records = db.log.read(topic, 0, 0, records_max=100_000)
    except NotFound:
        return []
    return [(r.value or b"").decode() for r in records]


def model_unit(ops: list[Op]) -> State:
    units = [op["tag"] for op in ops if op["kind"] == "unit"]
    return {
        "out": units,
        "acc": units,
        "keys": model_idempotency(ops),
        "count": (len(units), len(units)) if units else None,
        "g": len(units),
    }


MODELS: dict[str, tuple[Callable[[Database], State], Callable[[list[Op]], State]]] = {
    "log": (observe_log, model_log),
    "events": (observe_events, model_events),
    "idempotency": (observe_idempotency, model_idempotency),
    "kv": (observe_kv, model_kv),
    "unit": (observe_unit, model_unit),
}


# --- the cut loop ---------------------------------------------------------------------------


@dataclass
class CaseResult:
    """What one case checked: cuts made, acknowledged writes found, those
    lost under ``normal`` (always a suffix), and the seconds it took."""

    part: str
    sync: str
    seed: int
    cuts: int = 0
    checked: int = 0
    lost: int = 0
    seconds: float = 0.0
    cut_seeds: list[int] = field(default_factory=list)


def parse(lines: list[str]) -> tuple[list[Op], Op | None]:
    """The acknowledged writes, in order, and the one in flight (or None)."""
    acked: list[Op] = []
    pending: Op | None = None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "try":
            pending = json.loads(rest)
        elif word == "ack":
            acked.append(json.loads(rest))
            pending = None
    return acked, pending


def run_writer(
    part: str, path: Path, sync: str, seed: int, r: int, acks: int, delay_s: float
) -> list[str]:
    """Start a writer, read until it acknowledged ``acks`` writes, wait
    ``delay_s`` more, SIGKILL it and return every line it wrote."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    args = ["-m", "bench.powercut", "write", part, str(path), sync, str(seed), str(r)]
    lines: list[str] = []
    with ChildProcess(args, cwd=REPO, env=env) as child:
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while sum(line.startswith("ack ") for line in lines) < acks:
            lines += child.read_lines(max(0.0, deadline - time.monotonic()))
            if child.eof or time.monotonic() > deadline:
                child.kill()
                raise PowerCutFailure(
                    f"the {part} writer (sync={sync}) stopped after {len(lines)} lines: "
                    f"{child.stderr_text()}"
                )
        time.sleep(delay_s)
        child.kill()
        lines += child.drain(5.0)
    return lines


def short(state: State, chars: int = 1500) -> str:
    text = repr(state)
    return text if len(text) <= chars else text[:chars] + f"... ({len(text)} chars)"


class Checker:
    """One case's knowledge: the writes a previous check found on the file."""

    def __init__(self, part: str, sync: str) -> None:
        self.part = part
        self.sync = sync
        self.survivors: list[Op] = []

    def check(self, path: Path, lines: list[str]) -> tuple[int, int]:
        """Reopen and match; return (acknowledged writes checked, lost)."""
        acked, pending = parse(lines)
        base = self.survivors
        candidates = base + acked + ([pending] if pending is not None else [])
        observe, model = MODELS[self.part]
        with unbundled.open(path, sync=level(self.sync)) as db:  # CorruptionError fails the case
            found = observe(db)
        low = len(base) + (len(acked) if self.sync == "full" else 0)
        for k in range(len(candidates), low - 1, -1):
            if model(candidates[:k]) == found:
                self.survivors = candidates[:k]
                return len(acked), max(0, len(base) + len(acked) - k)
        raise PowerCutFailure(
            f"{self.part} sync={self.sync}: the file shows no allowed prefix of the "
            f"{len(base)} known + {len(acked)} acknowledged writes (+ {int(pending is not None)} "
            f"in flight), at least {low}; found {short(found)}, "
            f"wanted {short(model(candidates[:low]))}"
        )


def run_case(
    part: str,
    sync: str,
    cuts: int,
    seed: int,
    workdir: Path,
    on_cut: Callable[[CaseResult], None] | None = None,
) -> CaseResult:
    """``cuts`` power cuts of ``part`` at ``sync`` on one mount; raises
    PowerCutFailure (naming the case seed and the cut's) at the first broken
    guarantee."""
    rng = random.Random(seed)
    result = CaseResult(part, sync, seed)
    checker = Checker(part, sync)
    fs = LazyFS(workdir / "disk", workdir / "mnt", seed=seed)
    path = fs.mount / "x.db"
    started = time.monotonic()
    fs.start()
    try:
        for r in range(cuts):
            cut_seed = rng.randrange(2**31)
            result.cut_seeds.append(cut_seed)
            cut = random.Random(cut_seed)
            try:
                lines = run_writer(
                    part, path, sync, cut_seed, r, cut.randint(1, 12), cut.uniform(0, 0.02)
                )
                fs.power_cut(tear=cut.random() < 0.5, reorder=cut.random() < 0.5, seed=cut_seed)
                fs.remount()
                checked, lost = checker.check(path, lines)
            except Exception as exc:
                raise PowerCutFailure(
                    f"{exc}\n[powercut case part={part} sync={sync} seed={seed}: "
                    f"cut {r} (cut seed {cut_seed}) failed; replay with "
                    f"UNBUNDLED_POWERCUT_SEED={seed}]"
                ) from exc
            result.cuts += 1
            result.checked += checked
            result.lost += lost
            result.seconds = time.monotonic() - started
            if on_cut is not None:
                on_cut(result)
    finally:
        fs.close()
    return result


def main(argv: list[str]) -> None:
    command, part, path, sync, seed, r = argv
    assert command == "write", command
    try:
        write(part, path, sync, int(seed), int(r))
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)


if __name__ == "__main__":
    main(sys.argv[1:])
