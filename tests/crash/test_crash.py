"""Crash tests with real SIGKILL.

1. A writer killed at random moments loses nothing it acknowledged and a
   retry after restart writes nothing twice (``unbundled.testing.crash``).
2. A consumer-group member killed while consuming-transforming-producing in
   ``log.transaction()`` leaves output holding every input exactly once.

Set ``UNBUNDLED_CRASH_SEED`` to replay a seed printed by a failure.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from unbundled import Log, Message, TopicPartition
from unbundled.testing.crash import TOPIC, CrashReport, _Checker, run_crash_test, unit_records

from ._helpers import check_alive, reaped, spawn, wait_until

SEED = int(os.environ.get("UNBUNDLED_CRASH_SEED", random.SystemRandom().randrange(2**32)))


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    kills: list[int] = []
    report = run_crash_test(tmp_path, 60, seed=SEED, progress=kills.append)
    assert report.ok, report.summary()
    assert report.kills == 60 and kills == list(range(1, 61))
    assert report.lost == 0 and report.duplicates == 0, report.summary()
    assert report.present == report.acknowledged > 0, report.summary()
    # The children did retry after restarts, and every retry was deduplicated.
    assert report.retries > 0, report.summary()


# --- the harness can fail: it is not a test that always passes ----------------------------


def _fresh(tmp_path: Path) -> Path:
    db = tmp_path / "crash.db"
    with Log.open(db, sync="off") as log:
        log.create_topic(TOPIC, 4)
    return db


def test_the_checker_reports_a_lost_acknowledged_record(tmp_path: Path) -> None:
    checker = _Checker(_fresh(tmp_path), seed=5)
    checker.absorb(["ack 0 2:0"], kill=1)  # acknowledged, never written
    checker.verify(1, full=True)
    report = checker.report(1, 0.0)
    assert not report.ok and report.lost == 1
    assert "seed=5" in report.summary() and "--seed 5" in report.summary()


def test_the_checker_reports_a_duplicate(tmp_path: Path) -> None:
    db = _fresh(tmp_path)
    key, value, headers = unit_records(1)[0]
    with Log.open(db, sync="off") as log:
        first = log.append(TOPIC, value, key=key, headers=headers)
        log.append(TOPIC, value, key=key, headers=headers)  # a retry without a producer
    checker = _Checker(db, seed=6)
    checker.absorb([f"ack 1 {first.partition}:{first.offset}"], kill=1)
    checker.verify(1, full=True)
    report = checker.report(1, 0.0)
    assert not report.ok and report.duplicates == 1


def test_the_checker_reports_a_batch_stored_in_part(tmp_path: Path) -> None:
    db = _fresh(tmp_path)
    unit = 6  # a batch of two records
    assert len(unit_records(unit)) == 2
    key, value, headers = unit_records(unit)[0]
    with Log.open(db, sync="off") as log:
        log.append(TOPIC, value, key=key, headers=headers)  # only the first one
    checker = _Checker(db, seed=8)
    checker.verify(1, full=True)
    assert any("stored in part" in failure for failure in checker.failures)


def test_the_checker_reports_a_retry_that_moved(tmp_path: Path) -> None:
    checker = _Checker(_fresh(tmp_path), seed=7)
    checker.absorb(["ack 1 0:0", "ack 1 0:1"], kill=1)
    assert any("written twice" in failure for failure in checker.failures)


def test_crash_report_summary_names_the_seed() -> None:
    report = CrashReport(kills=3, acknowledged=2, present=1, duplicates=0, lost=1, seed=42)
    assert not report.ok
    assert "seed=42" in report.summary()


# --- exactly-once consume-transform-produce across SIGKILL --------------------------------

IN_PARTITIONS = 3


def _produce(log: Log, start: int, count: int) -> None:
    # Keys repeat, so each key has many inputs whose order the output must keep.
    log.append_batch(
        "in", [Message(b"%d" % i, key=b"k%d" % (i % 17)) for i in range(start, start + count)]
    )


def test_consume_transform_produce_is_exactly_once_across_sigkill(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "eos.db"
    group, lease_ms = "etl", 600
    with Log.open(db, sync="normal") as log, reaped() as children:
        log.create_topic("in", IN_PARTITIONS)
        log.create_topic("out", IN_PARTITIONS)
        _produce(log, 0, 300)
        total = 300
        ids = {"a": 0, "b": 0}
        members = {name: spawn("eos", db, group, f"{name}-0", lease_ms) for name in ids}
        children.extend(members.values())
        transactions = {name: 0 for name in ids}

        def pump() -> None:
            for name, child in members.items():
                transactions[name] += sum(line.startswith("tx ") for line in child.read_lines(0))
                check_alive(child, f"member {name}")

        kills = 0
        for _ in range(12):
            _produce(log, total, 400)
            total += 400
            victim = rng.choice(sorted(ids))
            # Kill once the victim has committed a few transactions of this
            # round's work, a moment into the next one (or anyway, soon).
            wanted = transactions[victim] + rng.randint(0, 4)

            def reached(v: str = victim, w: int = wanted) -> bool:
                return transactions[v] >= w

            wait_until(reached, 1.0, "", pump, fail=False)
            time.sleep(rng.uniform(0.0, 0.004))
            members[victim].kill()  # SIGKILL, whatever it was doing
            kills += 1
            # Half the time the member restarts as a static member of instance
            # id `victim` (after a static predecessor, it takes its partitions
            # straight back), else as a new dynamic member (after the lease).
            ids[victim] += 1
            static = victim if rng.random() < 0.5 else ""
            members[victim] = spawn("eos", db, group, f"{victim}-{ids[victim]}", lease_ms, static)
            children.append(members[victim])
        assert kills >= 10
        assert sum(transactions.values()) > 0

        def drained() -> bool:
            lag = log.lag(group)
            return len(lag) == IN_PARTITIONS and all(left == 0 for _, _, left in lag.values())

        wait_until(drained, 60, "the members to process every input", pump)
        for child in members.values():
            child.kill()

        outputs: list[tuple[int, int, bytes | None, int]] = []
        for partition in range(IN_PARTITIONS):
            records = list(log.scan("out", partition))
            assert [r.offset for r in records] == list(range(len(records))), "offsets not dense"
            for r in records:
                assert r.value is not None and r.value.startswith(b"out:")
                outputs.append((partition, r.offset, r.key, int(r.value[4:])))
        produced = sorted(i for _, _, _, i in outputs)
        assert len(produced) == len(set(produced)), f"seed={SEED}: an input was output twice"
        assert produced == list(range(total)), f"seed={SEED}: an input was never output"
        # Per key, the outputs keep the input order (a key stays in one partition).
        per_key: dict[bytes | None, list[int]] = {}
        for _, _, key, i in sorted(outputs):
            per_key.setdefault(key, []).append(i)
        for key, order in per_key.items():
            assert order == sorted(order), f"seed={SEED}: key {key!r} out of order"
        committed = log.describe_group(group).committed
        ends = log.end_offsets("in")
        assert committed == {TopicPartition("in", p): ends[p] for p in range(IN_PARTITIONS)}
        assert sum(ends.values()) == total


# --- resuming a numbered input with an idempotent producer ------------------------------


def test_a_numbered_import_resumes_exactly_once_across_sigkill(tmp_path: Path) -> None:
    """The resume recipe of docs/how-to/exactly-once.md, for many more
    requests than the producer's window of 64: the importer is SIGKILLed at
    random moments and restarted; each run skips up to ``last_sequence``
    (never below what it acknowledged) and the topic ends up holding every
    line exactly once, in order."""
    rng = random.Random(SEED)
    db = tmp_path / "import.db"
    count, kills = 1000, 6
    with Log.open(db, sync="normal") as log, reaped() as children:
        log.create_topic("lines")
        acked, resumed = -1, []
        for run in range(kills + 1):
            child = spawn("importer", db, count)
            children.append(child)
            seen: list[str] = []
            line = child.wait_for(lambda text: text.startswith("resume "), 60, seen)
            assert line is not None, f"seed={SEED}: {child.stderr_text()}"
            resumed.append(int(line.split(" ")[1]))
            assert resumed[-1] >= acked, f"seed={SEED}: resumed below an acknowledged line"
            if run < kills:
                wanted = rng.randint(1, 25)  # batches to let through before the kill

                def enough(_: str, seen: list[str] = seen, wanted: int = wanted) -> bool:
                    return sum(x.startswith("ack ") for x in seen) >= wanted

                child.wait_for(enough, 30, seen)
                time.sleep(rng.uniform(0.0, 0.004))  # often lands mid-commit
                child.kill()
                seen += child.drain()
            else:
                assert child.wait_for("done".__eq__, 60, seen), (
                    f"seed={SEED}: {child.stderr_text()}"
                )
                assert child.wait(30) == 0, child.stderr_text()
            acks = [int(x.split(" ")[1]) for x in seen if x.startswith("ack ")]
            acked = max([acked, *acks])
        assert acked == count - 1 and resumed[0] == -1
        assert sorted(set(resumed)) == resumed, f"seed={SEED}: every restart made progress"
        stored = [r.value for r in log.scan("lines")]
        assert stored == [b"line-%d" % n for n in range(count)], f"seed={SEED}: lost or doubled"


def test_a_log_killed_while_being_created_opens_again(tmp_path: Path) -> None:
    """SIGKILL a process while it creates a fresh file (schema, first topic,
    first append): the file then opens, and holds whatever was acknowledged."""
    rng = random.Random(SEED)
    window_s = 0.06  # how long opening to acknowledgement takes; learnt as we go
    for attempt in range(12):
        db = tmp_path / f"fresh-{attempt}.db"
        lines: list[str] = []
        with reaped() as children:
            child = spawn("create", db, 0)
            children.append(child)
            assert child.wait_for("opening".__eq__, 60, lines) is not None, child.stderr_text()
            opened = time.monotonic()
            # Kill somewhere in opening, creating the schema and the topic,
            # appending (each with an fsync), or just after.
            if child.wait_for(
                lambda line: line.startswith("ack "), rng.uniform(0, window_s), lines
            ):
                window_s = 1.3 * (time.monotonic() - opened)
            child.kill()
            lines.extend(child.drain())
        with Log.open(db, sync="full") as log:
            log.create_topic("t", 2, exist_ok=True)
            stored = {r.value: (r.partition, r.offset) for p in range(2) for r in log.scan("t", p)}
            for line in lines:
                if line.startswith("ack "):
                    _, pid, where = line.split(" ")
                    partition, offset = where.split(":")
                    assert stored[pid.encode()] == (int(partition), int(offset)), f"seed={SEED}"
            assert log.append("t", b"after", partition=0).offset == sum(
                1 for position in stored.values() if position[0] == 0
            )
