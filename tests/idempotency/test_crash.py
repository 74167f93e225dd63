"""Crash tests with real SIGKILL: an effect behind an idempotency key happens
at most once, and after retries exactly once.

A child process runs ``idem.call(key, payload, handler)`` for KEYS keys on a
SQLite file; its handler writes one effect per key in one of two ways:

* ``atomic``: the effect (an event with a fresh random id, and a SQL row)
  commits with the result, in ``complete(..., effects=...)``. At every kill
  point the effect exists iff the result does.
* ``two-step``: the effect (an event whose id is derived from the key) is
  appended in its own transaction, and the result is stored in another, so
  a kill can land between them. The retry appends the same event id again,
  which the event store deduplicates: never twice, and finally once.

The parent kills the child with SIGKILL, either exactly at a marker the
child prints (it waits on its stdin after each: before the effect, between
effect and result, after the result) or at a random moment of a free run,
then restarts it with a short lease so that it takes over the dead attempts,
until every key is completed. After each kill the file is checked.

Set ``UNBUNDLED_CRASH_SEED`` to replay a seed printed by a failure. The
children are this module run as a script.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from unbundled.eventstore import ANY, EventStore, NewEvent, StreamWrite
from unbundled.idempotency import Attempt, EffectsTxn, Idempotency
from unbundled.testing.child import ChildProcess
from unbundled.testing.idempotency_contract import events_of

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("UNBUNDLED_CRASH_SEED", random.SystemRandom().randrange(2**32)))
KEYS = 40
LEASE_MS = 150  # the restarted child takes over a dead attempt this soon
KILLS = 20  # per variant: 40 in all
MARKERS = {"atomic": ["effect", "done"], "two-step": ["effect", "between", "done"]}
MARKERS["unsafe"] = MARKERS["two-step"]
STEP_TIMEOUT_S = 30.0


def _key(i: int) -> str:
    return f"charge-{i}"


def _event_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"idempotency-crash/{_key(i)}"))


# --- the child ----------------------------------------------------------------------


def child(db: str, variant: str, stepping: str) -> None:
    def marker(name: str, i: int) -> None:
        os.write(1, f"m {name} {i}\n".encode())
        if stepping == "1" and sys.stdin.readline().strip() != "go":
            os._exit(5)  # the parent is gone

    with Idempotency.open(
        db, sync="normal", lease_ms=LEASE_MS, maintenance_interval_s=None
    ) as idem:
        store = EventStore(idem.backend)  # type: ignore[arg-type]
        os.write(1, b"ready\n")
        for i in range(KEYS):

            def atomic(attempt: Attempt, i: int = i) -> dict[str, Any]:
                event_id = str(uuid.uuid4())  # random: a second run would show

                def effects(tx: EffectsTxn) -> None:
                    data = msgspec.json.encode({"i": i})
                    tx.append_events(
                        [StreamWrite(f"acct-{i}", ANY, [NewEvent(event_id, "Charged", data)])]
                    )
                    tx.sql.execute("INSERT INTO effects VALUES (?, ?)", (i, event_id))

                marker("effect", i)
                result = {"i": i, "event": event_id}
                idem.complete(attempt, result, effects=effects)
                return result

            def two_step(attempt: Attempt, i: int = i) -> dict[str, Any]:
                # "unsafe" uses a random id: the checker must catch its double effect.
                event_id = _event_id(i) if variant == "two-step" else str(uuid.uuid4())
                marker("effect", i)
                data = msgspec.json.encode({"i": i})
                store.append(f"acct-{i}", [NewEvent(event_id, "Charged", data)])
                marker("between", i)
                return {"i": i, "event": event_id}

            handler = atomic if variant == "atomic" else two_step
            idem.call(_key(i), {"i": i, "amount": 10 * i}, handler, wait_s=30)
            marker("done", i)
    os.write(1, b"finished\n")


# --- the parent's checks --------------------------------------------------------------


@dataclass
class Check:
    db: Path
    variant: str
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(f"seed={SEED} {self.variant}: {message}")

    def state(self) -> dict[int, tuple[Any, list[str], list[str]]]:
        """Per key: the stored result (None if not completed), event ids, SQL row ids."""
        out: dict[int, tuple[Any, list[str], list[str]]] = {}
        with Idempotency.open(self.db, sync="normal", maintenance_interval_s=None) as idem:
            events = events_of(idem)
            for i in range(KEYS):
                record = idem.get(_key(i))
                done = record is not None and record.state == "completed"
                result = msgspec.json.decode(record.result or b"") if done and record else None
                ids = [e.id for e in events if e.stream == f"acct-{i}"]
                out[i] = (result, ids, [])
        conn = sqlite3.connect(self.db)
        try:
            for i, event_id in conn.execute("SELECT i, event_id FROM effects"):
                out[i][2].append(event_id)
        finally:
            conn.close()
        return out

    def after_kill(
        self, kill: str, at: tuple[str, int] | None, before: dict[int, Any] | None = None
    ) -> dict[int, Any]:
        state = self.state()
        for i, (result, ids, rows) in state.items():
            where = f"after kill {kill}, key {i}"
            if len(ids) > 1:
                self.fail(f"{where}: the effect happened {len(ids)} times: {ids}")
            if result is not None:
                if len(ids) != 1:
                    self.fail(f"{where}: a result {result} without its effect")
                elif result != {"i": i, "event": ids[0]}:
                    self.fail(f"{where}: the result {result} is not the effect's {ids}")
            if self.variant == "atomic":
                if rows != ids:
                    self.fail(f"{where}: SQL rows {rows} and events {ids} disagree")
                if (result is None) != (not ids):
                    self.fail(f"{where}: effect without result (or the reverse): {ids}")
            elif self.variant == "two-step" and ids and ids != [_event_id(i)]:
                self.fail(f"{where}: an event with an unexpected id {ids}")
        if at is not None:  # a kill exactly at a marker: the state it must show
            name, i = at
            result, ids, _ = state[i]
            # Before the effect the key is as the last run left it (a two-step
            # run killed between effect and result leaves the event behind).
            had = bool(before is not None and before[i][1])
            expected = {"effect": (had, False), "between": (True, False), "done": (True, True)}
            if (bool(ids), result is not None) != expected[name]:
                self.fail(f"after kill {kill} at {name} of key {i}: events {ids}, result {result}")
        return state


# --- the parent -------------------------------------------------------------------------


def _spawn(db: Path, variant: str, stepping: bool) -> ChildProcess:
    args = ["-m", "tests.idempotency.test_crash", "child", str(db), variant, str(int(stepping))]
    return ChildProcess(args, cwd=ROOT, stdin=stepping)


def _stepped_run(db: Path, variant: str, target: tuple[str, int]) -> bool:
    """Run a child that waits after each marker; SIGKILL it at ``target``.
    False if it finished without reaching the target."""
    with _spawn(db, variant, True) as child:
        pending: list[str] = []
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not pending:
                if child.eof:
                    break
                pending.extend(child.read_lines(deadline - time.monotonic()))
                continue
            line = pending.pop(0)
            if line == "finished":
                assert child.wait(30) == 0, child.stderr_text()
                return False
            if not line.startswith("m "):
                continue
            _, name, index = line.split()
            if (name, int(index)) == target:
                child.kill()
                assert child.proc.returncode == -9
                return True
            child.send("go")
        raise AssertionError(f"seed={SEED}: the child got stuck: {child.stderr_text()}")


def _free_run(db: Path, variant: str, rng: random.Random) -> bool:
    """Run a child freely and SIGKILL it at a random moment (after a random
    number of markers, plus a random pause); False if it finished first."""
    with _spawn(db, variant, False) as child:
        ready = child.wait_for(lambda line: line == "ready", STEP_TIMEOUT_S)
        assert ready is not None, f"seed={SEED}: the child did not start: {child.stderr_text()}"
        markers = rng.randint(0, 6)
        if markers:
            seen = 0

            def enough(line: str) -> bool:
                nonlocal seen
                seen += line.startswith("m ")
                return seen >= markers

            child.wait_for(enough, STEP_TIMEOUT_S)
        time.sleep(rng.uniform(0.0, 0.003))
        finished = child.proc.poll() is not None
        child.kill()
        return not finished and child.proc.returncode == -9


def _crash_loop(db: Path, variant: str, kills: int, rng: random.Random) -> tuple[Check, int]:
    """Kill children until ``kills`` kills landed; returns the checker and the
    number of kills that landed exactly at a marker."""
    check = Check(db, variant)
    done = stepped = 0
    names = MARKERS[variant]
    attempts = 0
    while done < kills and not check.failures:
        attempts += 1
        assert attempts < 5 * kills, f"seed={SEED}: kills do not land"
        before = check.state()
        open_keys = [i for i, (result, _, _) in before.items() if result is None]
        if open_keys and attempts % 2:
            # Every other kill at a marker, cycling through them so that every
            # kind of kill point occurs; the others at random moments.
            target = (names[stepped % len(names)], rng.choice(open_keys[:3]))
            if _stepped_run(db, variant, target):
                done += 1
                stepped += 1
                check.after_kill(f"{done} at {target}", target, before)
        elif _free_run(db, variant, rng):
            done += 1
            check.after_kill(f"{done} (free)", None)
    return check, stepped


def _finish(db: Path, variant: str) -> None:
    with _spawn(db, variant, False) as child:
        status = child.wait(60)
        assert status == 0, f"seed={SEED}: the last child failed: {child.stderr_text()}"


def _fresh(tmp_path: Path) -> Path:
    db = tmp_path / "crash.db"
    Idempotency.open(db, sync="normal", maintenance_interval_s=None).close()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE effects (i INTEGER NOT NULL, event_id TEXT NOT NULL)")
    conn.commit()
    conn.close()
    return db


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["atomic", "two-step"])
def test_effects_happen_exactly_once_across_sigkills(variant: str, tmp_path: Path) -> None:
    db = _fresh(tmp_path)
    rng = random.Random(f"{SEED}-{variant}")
    check, stepped = _crash_loop(db, variant, KILLS, rng)
    assert not check.failures, "\n".join(check.failures[:10])
    assert stepped >= len(MARKERS[variant]), f"seed={SEED}: only {stepped} kills at markers"
    _finish(db, variant)
    final = check.after_kill("none (the end)", None)
    assert not check.failures, "\n".join(check.failures[:10])
    for i, (result, ids, rows) in final.items():
        assert result is not None, f"seed={SEED}: key {i} never completed"
        assert len(ids) == 1 and result == {"i": i, "event": ids[0]}, (SEED, i, result, ids)
        assert rows == (ids if variant == "atomic" else []), (SEED, i, rows)
    with Idempotency.open(db, maintenance_interval_s=None) as idem:
        assert idem.records(state="in_progress") == []
        taken_over = [r for r in idem.records() if r.token > 1]
    assert taken_over, f"seed={SEED}: no attempt was ever taken over"


@pytest.mark.slow
def test_the_checker_catches_a_doubled_effect(tmp_path: Path) -> None:
    """Without a deterministic event id, a kill between effect and result
    makes the retry apply the effect twice: the checks must say so."""
    db = _fresh(tmp_path)
    assert _stepped_run(db, "unsafe", ("between", 0))
    check = Check(db, "unsafe")
    check.after_kill("1", ("between", 0), None)
    assert check.failures == []
    _finish(db, "unsafe")
    check.after_kill("none", None)
    assert any("happened 2 times" in f for f in check.failures), check.failures


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role != "child":
        raise SystemExit(f"unknown role {role!r}")
    child(*rest)
