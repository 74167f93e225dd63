"""Idempotency keys on the PostgreSQL backend against the real server: every
transition, fencing, the one-statement claim under contention (threads and
processes), effects committing with the result, and NOTIFY wake-ups."""

from __future__ import annotations

import contextlib
import json
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from unbundled.backends.memory import MemoryBackend
from unbundled.backends.postgres import PostgresBackend
from unbundled.errors import (
    Closed,
    Error,
    RequestInProgress,
    StaleToken,
    UsageError,
    WrongExpectedVersion,
)
from unbundled.eventstore import ANY, NO_STREAM, AppendResult, NewEvent, StreamWrite
from unbundled.idempotency import EffectsTxn, Idempotency, IdempotencyRecord
from unbundled.testing.clock import SimClock

from ._idem_children import KEY as CHILD_KEY

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[3]
HOWTO = ROOT / "docs" / "how-to" / "idempotency-postgres.md"
LEASE, RETENTION = 30_000, 3_600_000


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A statement on a connection of the test's own, outside the backend."""
    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description is not None else []


@pytest.fixture
def sim() -> SimClock:
    return SimClock()


@pytest.fixture
def clocked(pg_url: str, sim: SimClock) -> Iterator[PostgresBackend]:
    """A backend that decides time by ``sim`` instead of the server's clock."""
    opened = PostgresBackend(pg_url, sync="normal", clock=sim)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def ledger(pg_url: str, backend: PostgresBackend) -> str:
    """A table of the test's schema for the effects' own SQL."""
    table = f'"{schema_of(pg_url)}".ledger'
    sql(pg_url, f"CREATE TABLE {table} (key text NOT NULL, amount int NOT NULL)")
    return table


def event(kind: str = "Charged") -> NewEvent:
    return NewEvent(str(uuid.uuid4()), kind, b"{}")


# --- every transition ---------------------------------------------------------------


def test_claim_complete_and_repeats(clocked: PostgresBackend, sim: SimClock) -> None:
    now = sim()
    claim = clocked.claim("k-1", "fp", LEASE, RETENTION)
    fresh = IdempotencyRecord("k-1", "fp", "in_progress", 1, now + LEASE, now + RETENTION, now, now)
    assert claim.outcome == "claimed" and claim.record == fresh
    assert clocked.claim("k-1", "fp", LEASE, RETENTION) == ("in_progress", fresh)
    assert clocked.claim("k-1", "other", LEASE, RETENTION) == ("mismatch", fresh)
    sim.advance(5)
    done = clocked.complete("k-1", 1, b"\x00result\xff", False, RETENTION)
    assert done.state == "completed" and done.result == b"\x00result\xff"
    assert (done.lease_until_ms, done.expires_ms, done.updated_ms) == (
        0,
        now + 5 + RETENTION,
        now + 5,
    )
    assert clocked.get("k-1") == done
    assert clocked.claim("k-1", "fp", LEASE, RETENTION) == ("completed", done)
    assert clocked.claim("k-1", "other", LEASE, RETENTION) == ("mismatch", done)
    with pytest.raises(StaleToken) as err:
        clocked.complete("k-1", 1, b"again", False, RETENTION)
    assert "completed with token 1" in str(err.value)
    # A stored deterministic error is a completion with the flag.
    clocked.claim("k-2", "fp", LEASE, RETENTION)
    failed = clocked.complete("k-2", 1, b'{"kind":"x"}', True, RETENTION)
    assert failed.error and clocked.claim("k-2", "fp", LEASE, RETENTION) == ("completed", failed)


def test_take_over_keeps_phases_and_fences_the_old_token(
    clocked: PostgresBackend, sim: SimClock, ledger: str
) -> None:
    start = sim()
    clocked.claim("k", "fp", LEASE, RETENTION)
    clocked.record_phase("k", 1, "reserve", b"\x00\x01 bytes")
    clocked.record_phase("k", 1, "charge", b"")
    sim.advance(LEASE)  # the lease ends at start + LEASE: now expired
    taken = clocked.claim("k", "fp", LEASE, RETENTION)
    assert taken.outcome == "claimed" and taken.record.token == 2
    assert taken.record.phases == {"reserve": b"\x00\x01 bytes", "charge": b""}
    assert taken.record.created_ms == start and taken.record.lease_until_ms == sim() + LEASE
    assert taken.record.expires_ms == sim() + RETENTION  # max(old expiry, now + retention)
    ran: list[int] = []

    def effects(tx: EffectsTxn) -> None:
        ran.append(1)

    for stale in (
        lambda: clocked.complete("k", 1, b"late", False, RETENTION),
        lambda: clocked.complete("k", 1, b"late", False, RETENTION, effects),
        lambda: clocked.record_phase("k", 1, "ship", b"late"),
    ):
        with pytest.raises(StaleToken) as err:
            stale()
        assert err.value.details == {"key": "k", "token": 1}
        assert "in_progress with token 2" in str(err.value)
    assert ran == [], "a stale completion ran its effects"
    clocked.release("k", 1)  # the old holder's release: a no-op
    assert clocked.get("k") == taken.record
    # The new holder's late phase and completion (lease expired, nobody took over) still count.
    sim.advance(LEASE * 2)
    clocked.record_phase("k", 2, "ship", b"3")
    done = clocked.complete("k", 2, b"shipped", False, RETENTION)
    assert done.token == 2 and set(done.phases) == {"reserve", "charge", "ship"}


def test_release(clocked: PostgresBackend, sim: SimClock) -> None:
    clocked.claim("plain", "fp", LEASE, RETENTION)
    clocked.release("plain", 7)  # not the holder: no-op
    assert clocked.get("plain") is not None
    clocked.release("plain", 1)
    assert clocked.get("plain") is None
    assert clocked.claim("plain", "other", LEASE, RETENTION).record.token == 1
    # With phases recorded, only the lease goes: the retry resumes after them.
    clocked.claim("phased", "fp", LEASE, RETENTION)
    clocked.record_phase("phased", 1, "reserve", b"r")
    sim.advance(3)
    clocked.release("phased", 1)
    kept = clocked.get("phased")
    assert kept is not None and kept.state == "in_progress"
    assert kept.lease_until_ms == kept.updated_ms == sim()
    resumed = clocked.claim("phased", "fp", LEASE, RETENTION)
    assert resumed.outcome == "claimed" and resumed.record.token == 2
    assert resumed.record.phases == {"reserve": b"r"}


def test_expiry_list_and_purge(clocked: PostgresBackend, sim: SimClock) -> None:
    keys = ["b", "B", "_x", "a.1", "a-2", "Z~"]
    for key in keys:
        clocked.claim(key, "fp", LEASE, RETENTION)
    clocked.complete("b", 1, b"r", False, RETENTION)
    assert [r.key for r in clocked.list_records(None, "", 100)] == sorted(keys)  # bytewise
    assert [r.key for r in clocked.list_records("completed", "", 100)] == ["b"]
    assert [r.key for r in clocked.list_records("in_progress", "B", 2)] == sorted(keys)[1:3]
    assert clocked.purge_expired() == 0
    sim.advance(RETENTION)
    assert clocked.get("b") is None and clocked.list_records(None, "", 100) == []
    # An expired record counts as absent: another payload starts afresh.
    fresh = clocked.claim("b", "another", LEASE, RETENTION)
    assert fresh.outcome == "claimed" and fresh.record.token == 1 and fresh.record.result is None
    assert clocked.purge_expired() == len(keys) - 1
    assert [r.key for r in clocked.list_records(None, "", 100)] == ["b"]


def test_the_same_decisions_as_the_memory_model(clocked: PostgresBackend, sim: SimClock) -> None:
    """Random operations on both backends with one clock: the same answers,
    the same records, the same errors."""
    model = MemoryBackend(clock=sim)
    rng = random.Random(4)
    keys, lease, retention = ["a", "b", "c"], 200, 1_000
    for step in range(400):
        key, token = rng.choice(keys), rng.randint(1, 4)
        kind = rng.choice(["claim", "claim", "complete", "phase", "release", "advance", "purge"])
        if kind == "advance":
            sim.advance(rng.choice([1, 50, 150, 400]))
            continue
        args: tuple[Any, ...] = {
            "claim": (key, rng.choice(["fp", "fp", "other"]), lease, retention),
            "complete": (key, token, rng.randbytes(3), False, retention),
            "phase": (key, token, rng.choice(["p1", "p2"]), rng.randbytes(2)),
            "release": (key, token),
            "purge": (),
        }[kind]
        answers = []
        for backend in (model, clocked):
            method = {"phase": "record_phase", "purge": "purge_expired"}.get(kind, kind)
            try:
                answer = getattr(backend, method)(*args)
                answers.append(tuple(answer) if kind == "claim" else answer)
            except Error as exc:
                answers.append(type(exc))
        assert answers[0] == answers[1], (step, kind, key, token)
        assert [model.get(k) for k in keys] == [clocked.get(k) for k in keys], step
        assert model.list_records(None, "", 10) == clocked.list_records(None, "", 10)


def test_a_repeated_key_is_one_read_that_writes_and_locks_nothing(
    backend: PostgresBackend, pg_url: str
) -> None:
    table = f'"{schema_of(pg_url)}".idempotency'

    def row_version() -> list[tuple[Any, ...]]:
        return sql(pg_url, f"SELECT xmin::text, xmax::text FROM {table} WHERE key = 'k'")

    backend.claim("k", "fp", LEASE, RETENTION)
    held = row_version()
    for fp in ("fp", "other"):  # in flight, and a mismatch
        assert backend.claim("k", fp, LEASE, RETENTION).outcome in ("in_progress", "mismatch")
    assert row_version() == held
    backend.complete("k", 1, b"r", False, RETENTION)
    done = row_version()
    assert done[0][1] == "0"
    for fp in ("fp", "other", "fp"):
        assert backend.claim("k", fp, LEASE, RETENTION).outcome in ("completed", "mismatch")
    assert row_version() == done, "a repeated claim wrote or locked the row"


# --- contention: threads and processes -------------------------------------------------


def test_sixteen_connections_claim_one_key_once(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, sync="normal", pool_size=16)
    try:
        for round_ in range(10):
            key = f"race-{round_}"
            barrier = threading.Barrier(16)
            outcomes: list[tuple[str, int]] = []

            def claim(
                key: str = key,
                barrier: threading.Barrier = barrier,
                outcomes: list[tuple[str, int]] = outcomes,
            ) -> None:
                barrier.wait(10)
                got = backend.claim(key, "fp", LEASE, RETENTION)
                outcomes.append((got.outcome, got.record.token))

            threads = [threading.Thread(target=claim) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(outcomes) == [("claimed", 1)] + [("in_progress", 1)] * 15, outcomes
        # And through the facade: the handler runs once, every caller gets its result.
        idem = Idempotency(backend)
        runs: list[int] = []
        answers: list[Any] = []
        barrier = threading.Barrier(16)

        def call(n: int) -> None:
            barrier.wait(10)

            def handler(attempt: Any) -> dict[str, int]:
                runs.append(n)
                time.sleep(0.05)  # widens the race; never asserted on
                return {"by": n}

            try:
                answers.append(idem.call("race-call", {"q": 1}, handler, wait_s=20))
            except RequestInProgress:
                answers.append("busy")

        threads = [threading.Thread(target=call, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(runs) == 1 and answers == [{"by": runs[0]}] * 16, (runs, answers)
    finally:
        backend.close()


def test_four_processes_claim_one_key_once(pg_url: str, backend: PostgresBackend) -> None:
    schema = schema_of(pg_url)
    sql(pg_url, f'CREATE TABLE "{schema}".runs (caller text NOT NULL)')
    sql(pg_url, f'CREATE TABLE "{schema}".ledger (key text NOT NULL, amount int NOT NULL)')
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.backends.postgres._idem_children",
                "caller",
                pg_url,
                schema,
                f"p{n}",
                "4",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == b"ready\n", child.stderr.read() if child.stderr else b""
        for child in children:  # as close to together as four pipes allow
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        answers = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err.decode()
            answers += json.loads(out.decode().strip().splitlines()[-1])["answers"]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    runs = sql(pg_url, f'SELECT caller FROM "{schema}".runs')
    assert len(runs) == 1, f"the handler ran {len(runs)} times"
    assert answers == [{"by": runs[0][0]}] * 16, answers
    assert sql(pg_url, f'SELECT key, amount FROM "{schema}".ledger') == [(CHILD_KEY, 42)]
    assert [e.type for e in backend.read_all(0, 10)] == ["Transferred"]


# --- effects in the result's transaction ------------------------------------------------


def test_effects_commit_sql_and_events_with_the_result(
    backend: PostgresBackend, ledger: str
) -> None:
    opened, audit = [event("Opened"), event("Deposited")], event("Audited")
    returned: list[list[AppendResult]] = []
    during: list[int] = []
    token = backend.events_change_token()
    backend.claim("pay-1", "fp", LEASE, RETENTION)

    def effects(tx: EffectsTxn) -> None:
        tx.sql.execute(f"INSERT INTO {ledger} VALUES (%s, %s)", ("pay-1", 10))
        first = tx.append_events(
            [StreamWrite("account-1", NO_STREAM, opened), StreamWrite("audit-1", ANY, [audit])]
        )
        # A second append in the same transaction follows the first one's versions.
        second = tx.append_events([StreamWrite("account-1", 1, [event("Withdrawn")])])
        with pytest.raises(WrongExpectedVersion):
            tx.append_events([StreamWrite("account-1", 5, [event()])])
        with pytest.raises(UsageError):  # after ANY, only commit knows the version
            tx.append_events([StreamWrite("audit-1", 5, [event()])])
        during.extend([len(first), len(second)])
        returned.extend([first, second])

    done = backend.complete("pay-1", 1, b'{"ok":true}', False, RETENTION, effects)
    assert done.state == "completed" and backend.get("pay-1") == done
    assert during == [0, 0], "append results are known only after the commit"
    stored = backend.read_all(0, 10)
    # One transaction: a stream's appends are one write (unbundled.transaction).
    assert [(e.stream, e.version, e.type) for e in stored] == [
        ("account-1", 0, "Opened"),
        ("account-1", 1, "Deposited"),
        ("account-1", 2, "Withdrawn"),
        ("audit-1", 0, "Audited"),
    ]
    positions = [e.position for e in stored]
    assert returned == [
        [
            AppendResult("account-1", 0, 1, tuple(positions[:2])),
            AppendResult("audit-1", 0, 0, (positions[3],)),
        ],
        [AppendResult("account-1", 2, 2, (positions[2],))],
    ]
    assert sql(backend.url, f"SELECT key, amount FROM {ledger}") == [("pay-1", 10)]
    assert backend.events_change_token() != token
    assert backend.stream_state("audit-1").version == 0


def test_failed_effects_roll_back_together(backend: PostgresBackend, ledger: str) -> None:
    backend.claim("pay-2", "fp", LEASE, RETENTION)
    backend.claim("pay-0", "fp", LEASE, RETENTION)

    def opens(tx: EffectsTxn) -> None:
        tx.append_events([StreamWrite("account-0", NO_STREAM, [event()])])

    backend.complete("pay-0", 1, b"0", False, RETENTION, opens)
    boom = ValueError("the bank said no")

    def fails(tx: EffectsTxn) -> None:
        tx.sql.execute(f"INSERT INTO {ledger} VALUES ('pay-2', 1)")
        tx.append_events([StreamWrite("account-2", NO_STREAM, [event()])])
        raise boom

    def conflicts(tx: EffectsTxn) -> None:
        tx.sql.execute(f"INSERT INTO {ledger} VALUES ('pay-2', 2)")
        tx.append_events([StreamWrite("account-2", NO_STREAM, [event()])])
        tx.append_events([StreamWrite("account-0", NO_STREAM, [event()])])

    def swallows_an_sql_error(tx: EffectsTxn) -> None:
        tx.append_events([StreamWrite("account-2", NO_STREAM, [event()])])
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            tx.sql.execute("SELECT 1 / 0")
        # ... and goes on: the transaction is aborted all the same

    def bad_sql(tx: EffectsTxn) -> None:
        tx.sql.execute("SELECT no_such_column FROM no_such_table")

    for effects, error in (
        (fails, ValueError),
        (conflicts, WrongExpectedVersion),
        (swallows_an_sql_error, UsageError),
        (bad_sql, psycopg.errors.UndefinedTable),  # the effects' own error, as it is
    ):
        with pytest.raises(error) as raised:
            backend.complete("pay-2", 1, b"r", False, RETENTION, effects)
        if effects is fails:
            assert raised.value is boom
        record = backend.get("pay-2")
        assert record is not None and record.state == "in_progress" and record.token == 1
        assert sql(backend.url, f"SELECT * FROM {ledger}") == []
        assert [e.stream for e in backend.read_all(0, 10)] == ["account-0"]
        assert backend.stream_state("account-2").version == NO_STREAM
        assert backend.list_streams("", 10) == ["account-0"]  # no placeholder left behind
    # The holder can still complete.
    assert backend.complete("pay-2", 1, b"r", False, RETENTION).state == "completed"


def test_zombie_completion_is_rejected_after_a_take_over(
    backend: PostgresBackend, ledger: str
) -> None:
    """Real time on the server's clock: a 150 ms lease runs out."""
    idem = Idempotency(backend, lease_ms=150, retention_ms=60_000)
    ran: list[str] = []

    def effects(who: str) -> Callable[[EffectsTxn], None]:
        def run(tx: EffectsTxn) -> None:
            ran.append(who)
            tx.sql.execute(f"INSERT INTO {ledger} VALUES (%s, 1)", (who,))

        return run

    block = idem.run("slow", {"n": 1})
    zombie = block.__enter__()  # and never leaves: it stalls, its lease runs out
    # Waiting returns when the lease runs out (no notification for that).
    waited = backend.wait_for_key("slow", 10)
    assert waited is not None and waited.state == "in_progress" and waited.token == 1
    with idem.run("slow", {"n": 1}) as heir:
        assert heir.token == 2 and not heir.replayed
        with pytest.raises(StaleToken):
            idem.complete(zombie, "zombie", effects=effects("zombie"))
        assert ran == [], "the zombie's effects ran"
        idem.complete(heir, "heir", effects=effects("heir"))
    assert ran == ["heir"]
    with pytest.raises(StaleToken):
        idem.complete(zombie, "zombie")
    assert sql(backend.url, f"SELECT key FROM {ledger}") == [("heir",)]
    assert idem.call("slow", {"n": 1}, lambda attempt: "never") == "heir"


# --- waiting -------------------------------------------------------------------------------


def test_wait_for_key_wakes_on_notify_from_another_process(pg_url: str) -> None:
    holder = PostgresBackend(pg_url, sync="normal")
    waiter = PostgresBackend(pg_url, sync="normal")
    try:
        for finish in ("complete", "release"):
            key = f"w-{finish}"
            holder.claim(key, "fp", LEASE, RETENTION)
            keys = waiter._notifier.keys_token()  # starts listening
            events = waiter.events_change_token()
            got: list[IdempotencyRecord | None] = []
            thread = threading.Thread(
                target=lambda k=key, got=got: got.append(waiter.wait_for_key(k, 20))
            )
            thread.start()
            if finish == "complete":
                holder.complete(key, 1, b"done", False, RETENTION)
            else:
                holder.release(key, 1)
            thread.join(25)
            expected = holder.get(key)
            assert got == [expected] and (expected is None) == (finish == "release")
            # The listener heard it (only a NOTIFY moves the waiter's token:
            # it changed nothing itself), and event subscribers did not wake.
            waiter._notifier.wait_keys(keys, 10)
            assert waiter._notifier.keys_token() != keys
            assert waiter.events_change_token() == events
        # A waiter that runs out of time gets the in-progress record.
        holder.claim("w-held", "fp", LEASE, RETENTION)
        started = time.monotonic()
        held = waiter.wait_for_key("w-held", 0.3)
        assert held is not None and held.state == "in_progress"
        assert time.monotonic() - started >= 0.25
    finally:
        holder.close()
        waiter.close()


def test_closed(backend: PostgresBackend) -> None:
    backend.close()
    for call in (
        lambda: backend.claim("k", "fp", LEASE, RETENTION),
        lambda: backend.get("k"),
        lambda: backend.complete("k", 1, b"", False, RETENTION),
        backend.purge_expired,
    ):
        with pytest.raises(Closed):
            call()


def test_the_howto_examples_run(pg_url: str) -> None:
    schema = schema_of(pg_url)
    blocks = re.findall(r"^```py\n(.*?)^```", HOWTO.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    try:
        for number, block in enumerate(blocks, 1):
            source = re.sub(r"\bshop\b", schema, block)
            exec(compile(source, f"{HOWTO.name}:block{number}", "exec"), namespace)
    finally:
        idem = namespace.get("idem")
        if isinstance(idem, Idempotency):
            idem.close()
    events = sql(pg_url, f'SELECT stream, type FROM "{schema}".events')
    assert events == [("account-alice", "Withdrawn")]
