"""The Redis backend of idempotency keys on the real server: every transition
of the Lua scripts, fencing, expiry by Redis itself, the server's clock,
recovery from NOSCRIPT, and what it refuses (effects, the log, the event store).

Leases here are short and real (the server's clock cannot be simulated);
waits poll for the state they need with a deadline, never assert on timing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from unbundled import AsyncEventStore, EventStore, Log
from unbundled.backends import open_backend
from unbundled.backends.redis import RedisBackend, parse_url
from unbundled.backends.redis._idempotency import decode_reply
from unbundled.backends.redis._scripts import EXPIRY_GRACE_MS
from unbundled.errors import (
    BackendError,
    Closed,
    CorruptionError,
    IdempotencyKeyReused,
    NotSupported,
    RequestInProgress,
    StaleToken,
    Unavailable,
    UsageError,
)
from unbundled.idempotency import Idempotency
from unbundled.idempotency._protocol import IdempotencyRecord
from unbundled.testing import SimClock

from .conftest import server_url

pytestmark = pytest.mark.redis

LEASE = 150  # ms: short real leases (limits.lease_ms_min is 100)
KEEP = 60_000


def server_now(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def eventually(probe: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    """Poll ``probe`` until it returns something truthy (a lease or a TTL
    running out on the server's clock); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "the expected state never came"
        time.sleep(0.02)


def take_over(backend: RedisBackend, key: str, fp: str = "fp") -> IdempotencyRecord:
    """Claim ``key`` again once its lease has run out; the new record."""

    def attempt() -> IdempotencyRecord | None:
        claim = backend.claim(key, fp, LEASE, KEEP)
        return claim.record if claim.outcome == "claimed" else None

    record: IdempotencyRecord = eventually(attempt)
    return record


# --- claim ------------------------------------------------------------------------


def test_a_first_claim_creates_the_record_on_the_server_clock(
    backend: RedisBackend, client: redis.Redis, redis_prefix: str
) -> None:
    before = server_now(client)
    claim = backend.claim("order-1", "fp", 30_000, KEEP)
    after = server_now(client)
    record = claim.record
    assert claim.outcome == "claimed"
    assert (record.key, record.fingerprint, record.state, record.token) == (
        "order-1",
        "fp",
        "in_progress",
        1,
    )
    assert before <= record.created_ms == record.updated_ms <= after
    assert record.lease_until_ms == record.created_ms + 30_000
    assert record.expires_ms == record.created_ms + KEEP
    assert (record.result, record.error, record.phases) == (None, False, {})
    # One hash under the prefix; Redis expires it when the record does.
    assert client.type(redis_prefix + "order-1") == b"hash"
    assert client.pexpiretime(redis_prefix + "order-1") == record.expires_ms + EXPIRY_GRACE_MS
    assert backend.get("order-1") == record


def test_a_repeated_claim_reports_what_is_there(backend: RedisBackend) -> None:
    first = backend.claim("k", "fp", 30_000, KEEP).record
    busy = backend.claim("k", "fp", 30_000, KEEP)
    assert busy == ("in_progress", first)
    assert backend.claim("k", "other", 30_000, KEEP) == ("mismatch", first)
    done = backend.complete("k", 1, b'{"ok":1}', False, KEEP)
    assert (done.state, done.result, done.token, done.lease_until_ms) == (
        "completed",
        b'{"ok":1}',
        1,
        0,
    )
    assert backend.claim("k", "fp", 30_000, KEEP) == ("completed", done)
    assert backend.claim("k", "other", 30_000, KEEP) == ("mismatch", done)


def test_an_expired_lease_is_taken_over_with_the_next_token(backend: RedisBackend) -> None:
    first = backend.claim("k", "fp", LEASE, KEEP).record
    backend.record_phase("k", 1, "reserved", b"r-1")
    second = take_over(backend, "k")
    assert second.token == 2
    assert second.created_ms == first.created_ms
    assert second.updated_ms > first.updated_ms
    assert second.lease_until_ms == second.updated_ms + LEASE
    assert second.expires_ms == max(first.expires_ms, second.updated_ms + KEEP)
    assert second.phases == {"reserved": b"r-1"}  # recovery points survive a take-over
    # Another payload is refused whatever the lease.
    assert backend.claim("k", "other", LEASE, KEEP) == ("mismatch", second)


# --- fencing ----------------------------------------------------------------------


def test_a_zombie_cannot_complete_record_or_release_after_a_take_over(
    backend: RedisBackend,
) -> None:
    backend.claim("k", "fp", LEASE, KEEP)
    take_over(backend, "k")  # token 2 holds the key now
    with pytest.raises(StaleToken, match="now in_progress with token 2") as stale:
        backend.complete("k", 1, b"late", False, KEEP)
    assert (stale.value.key, stale.value.token) == ("k", 1)
    with pytest.raises(StaleToken):
        backend.record_phase("k", 1, "charged", b"x")
    with pytest.raises(StaleToken):  # stale first, as everywhere: not NotSupported
        backend.complete("k", 1, b"late", False, KEEP, effects=lambda tx: None)
    backend.release("k", 1)  # a no-op: not held with token 1
    record = backend.get("k")
    assert record is not None and (record.state, record.token, record.phases) == (
        "in_progress",
        2,
        {},
    )
    done = backend.complete("k", 2, b"winner", False, KEEP)
    assert (done.result, done.token) == (b"winner", 2)
    with pytest.raises(StaleToken, match="now completed with token 2"):
        backend.complete("k", 2, b"again", False, KEEP)  # completing twice is stale too
    with pytest.raises(StaleToken, match="now nobody"):
        backend.complete("absent", 1, b"x", False, KEEP)
    assert backend.get("k") == done


def test_release_keeps_a_record_with_recovery_points(backend: RedisBackend) -> None:
    backend.claim("k", "fp", 30_000, KEEP)
    backend.record_phase("k", 1, "reserve", b"r-1")
    backend.release("k", 1)  # a transient error after phase 1
    kept = backend.get("k")
    assert kept is not None and kept.state == "in_progress"
    assert kept.lease_until_ms == kept.updated_ms  # the lease is given up at once
    heir = backend.claim("k", "fp", 30_000, KEEP)
    assert (heir.outcome, heir.record.token, heir.record.phases) == (
        "claimed",
        2,
        {"reserve": b"r-1"},
    )


def test_release_deletes_only_the_holders_record(
    backend: RedisBackend, client: redis.Redis, redis_prefix: str
) -> None:
    backend.claim("k", "fp", 30_000, KEEP)
    backend.release("k", 7)
    assert backend.get("k") is not None
    backend.release("k", 1)
    assert backend.get("k") is None
    assert client.exists(redis_prefix + "k") == 0
    again = backend.claim("k", "other", 30_000, KEEP)  # a fresh start: new payload, token 1
    assert (again.outcome, again.record.token) == ("claimed", 1)
    backend.complete("k", 1, b"r", False, KEEP)
    backend.release("k", 1)  # completed records are never released
    assert backend.claim("k", "other", 30_000, KEEP).outcome == "completed"


def test_phases_results_and_fingerprints_keep_any_bytes(backend: RedisBackend) -> None:
    odd = bytes(range(256)) + b"\n \n"
    backend.claim("k", "fp with spaces\nand a newline", 30_000, KEEP)
    backend.record_phase("k", 1, "1. reserve stock", b"")
    backend.record_phase("k", 1, "p:nested ünïcode", odd)
    backend.record_phase("k", 1, "1. reserve stock", b"overwritten")
    done = backend.complete("k", 1, odd * 3, True, KEEP)
    assert done.fingerprint == "fp with spaces\nand a newline"
    assert (done.result, done.error) == (odd * 3, True)
    assert done.phases == {"1. reserve stock": b"overwritten", "p:nested ünïcode": odd}
    assert backend.get("k") == done


def test_threads_claiming_one_key_at_once_get_one_claim(redis_url: str) -> None:
    backends = [RedisBackend(redis_url) for _ in range(4)]  # four "app servers"
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def work(n: int) -> None:
        start.wait()
        outcome = backends[n % 4].claim("hot", "fp", 30_000, KEEP).outcome
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b in backends:
        b.close()
    assert sorted(outcomes) == ["claimed"] + ["in_progress"] * 15


def test_a_forked_child_opens_its_own_connections(backend: RedisBackend) -> None:
    backend.claim("parent", "fp", 30_000, KEEP)  # leaves a connection idle
    assert backend._idle
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 if it kept off the parent's sockets
        status = 1
        try:
            if not backend._idle:
                claim = backend.claim("child", "fp", 30_000, KEEP)
                backend.complete("child", claim.record.token, b"from the child", False, KEEP)
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = backend.get("child")
    assert child is not None and child.result == b"from the child"
    assert backend.claim("parent", "fp", 30_000, KEEP).outcome == "in_progress"


# --- time and expiry --------------------------------------------------------------


def test_expired_records_are_absent_and_redis_deletes_them(
    backend: RedisBackend, client: redis.Redis
) -> None:
    def redis_expiry(key: str) -> int:
        return int(client.pexpiretime(backend.prefix + key))

    claimed = backend.claim("short", "fp", LEASE, 300).record
    assert redis_expiry("short") == claimed.expires_ms + EXPIRY_GRACE_MS
    taken = take_over(backend, "short")
    assert redis_expiry("short") == taken.expires_ms + EXPIRY_GRACE_MS
    done = backend.complete("short", 2, b"r", False, 300)
    assert redis_expiry("short") == done.expires_ms + EXPIRY_GRACE_MS
    backend.claim("long", "fp", 30_000, KEEP)
    assert backend.purge_expired() == 0
    # Expired is absent at once, to every operation; Redis keeps the hash
    # for the grace period, and purge_expired deletes it sooner.
    eventually(lambda: backend.get("short") is None)
    assert client.exists(backend.prefix + "short") == 1
    assert [r.key for r in backend.list_records(None, "", 10)] == ["long"]
    assert backend.wait_for_key("short", 1.0) is None
    with pytest.raises(StaleToken, match="now nobody"):
        backend.complete("short", 2, b"late", False, KEEP)
    assert backend.purge_expired() == 1
    assert client.exists(backend.prefix + "short") == 0
    assert backend.purge_expired() == 0
    assert backend.get("long") is not None
    # An expired record that Redis still keeps is replaced by a new claim.
    backend.claim("again", "fp", LEASE, LEASE)
    eventually(lambda: backend.get("again") is None)
    fresh = backend.claim("again", "another payload", 30_000, KEEP)
    assert (fresh.outcome, fresh.record.token, fresh.record.fingerprint) == (
        "claimed",
        1,
        "another payload",
    )


def test_times_come_from_the_server_not_this_process(
    backend: RedisBackend, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wall clock a day ahead (a skewed app server) changes nothing.
    skew_s = 86_400.0
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + skew_s)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(skew_s * 1e9))
    before = server_now(client)
    record = backend.claim("k", "fp", 30_000, KEEP).record
    after = server_now(client)
    assert before <= record.created_ms <= after
    assert backend.claim("k", "fp", 30_000, KEEP).outcome == "in_progress"
    with pytest.raises(NotSupported, match="server's clock"):
        open_backend(backend.url, clock=SimClock())


def test_wait_for_key_returns_when_the_holder_completes(backend: RedisBackend) -> None:
    backend.claim("k", "fp", 30_000, KEEP)
    timed_out = backend.wait_for_key("k", 0.05)
    assert timed_out is not None and timed_out.state == "in_progress"
    finisher = threading.Timer(0.1, lambda: backend.complete("k", 1, b"r", False, KEEP))
    finisher.start()
    try:
        record = backend.wait_for_key("k", 10.0)
    finally:
        finisher.join()
    assert record is not None and (record.state, record.result) == ("completed", b"r")
    assert backend.wait_for_key("absent", 10.0) is None


def test_wait_for_key_returns_when_the_lease_runs_out(backend: RedisBackend) -> None:
    backend.claim("k", "fp", LEASE, KEEP)
    record = backend.wait_for_key("k", 10.0)
    assert record is not None and record.state == "in_progress"
    assert backend.claim("k", "fp", LEASE, KEEP).outcome == "claimed"  # taken over


# --- scripts and errors ------------------------------------------------------------


def test_scripts_are_loaded_again_after_script_flush(
    backend: RedisBackend, client: redis.Redis
) -> None:
    backend.claim("a", "fp", 30_000, KEEP)
    operations: list[Callable[[], Any]] = [
        lambda: backend.claim("b", "fp", 30_000, KEEP),
        lambda: backend.record_phase("b", 1, "one", b"1"),
        lambda: backend.complete("b", 1, b"r", False, KEEP),
        lambda: backend.release("a", 1),
        lambda: backend.get("b"),
        lambda: backend.list_records(None, "", 10),
        lambda: backend.wait_for_key("b", 1.0),
    ]
    for operation in operations:
        client.script_flush()
        operation()
    record = backend.get("b")
    assert record is not None and (record.state, record.phases) == ("completed", {"one": b"1"})
    assert backend.get("a") is None
    client.script_flush()
    assert [r.key for r in backend.list_records("completed", "", 10)] == ["b"]


def test_list_records_is_sorted_paged_and_filtered(
    backend: RedisBackend, redis_url: str, client: redis.Redis
) -> None:
    for n in (5, 3, 9, 1, 7):
        backend.claim(f"k{n}", "fp", 30_000, KEEP)
        if n % 3:
            backend.complete(f"k{n}", 1, b"r", False, KEEP)
    client.set("unrelated:k0", b"x")  # outside the prefix: never listed
    try:
        assert [r.key for r in backend.list_records(None, "", 100)] == [
            "k1",
            "k3",
            "k5",
            "k7",
            "k9",
        ]
        assert [r.key for r in backend.list_records(None, "k3", 2)] == ["k5", "k7"]
        assert [r.key for r in backend.list_records("in_progress", "", 100)] == ["k3", "k9"]
        assert [r.key for r in backend.list_records("completed", "k1", 1)] == ["k5"]
        other = RedisBackend(redis_url.replace("?prefix=", "?prefix=other:"))
        try:
            assert other.list_records(None, "", 100) == []
        finally:
            other.close()
    finally:
        client.delete("unrelated:k0")


def test_effects_are_not_supported_and_store_nothing(backend: RedisBackend) -> None:
    backend.claim("k", "fp", 30_000, KEEP)
    ran: list[object] = []
    with pytest.raises(NotSupported, match="derived_key") as refused:
        backend.complete("k", 1, b"r", False, KEEP, effects=ran.append)
    assert "cannot share a transaction" in str(refused.value)
    assert ran == []
    record = backend.get("k")
    assert record is not None and (record.state, record.token) == ("in_progress", 1)
    idem = Idempotency(backend)
    with pytest.raises(NotSupported), idem.run("order", {"n": 1}) as attempt:
        idem.complete(attempt, {"ok": True}, effects=ran.append)
    assert ran == [] and backend.get("order") is None  # released: a retry runs again


def test_the_facade_on_a_redis_url(redis_url: str) -> None:
    runs: list[int] = []

    def charge(attempt: Any) -> dict[str, int]:
        runs.append(attempt.token)
        return {"charged": 10}

    with Idempotency.open(redis_url, lease_ms=30_000) as idem:
        assert isinstance(idem.backend, RedisBackend)
        assert idem.call("order-7", {"amount": 10}, charge) == {"charged": 10}
        assert idem.call("order-7", {"amount": 10}, charge) == {"charged": 10}
        assert runs == [1]
        with pytest.raises(IdempotencyKeyReused):
            idem.call("order-7", {"amount": 11}, charge)
        with idem.run("order-8", {"amount": 1}) as attempt:
            with pytest.raises(RequestInProgress):
                idem.call("order-8", {"amount": 1}, charge)
            idem.complete(attempt, {"charged": 1})
        assert idem.call("order-8", {"amount": 1}, charge) == {"charged": 1}
        assert [r.key for r in idem.records(state="completed")] == ["order-7", "order-8"]


def test_a_record_that_is_not_ours_is_reported(
    backend: RedisBackend, client: redis.Redis, redis_prefix: str
) -> None:
    client.set(redis_prefix + "string", b"x")
    with pytest.raises(BackendError, match="WRONGTYPE"):
        backend.claim("string", "fp", 30_000, KEEP)
    client.hset(redis_prefix + "hash", mapping={"e": str(server_now(client) + KEEP), "f": "fp"})
    with pytest.raises(CorruptionError, match="not an idempotency record"):
        backend.get("hash")
    with pytest.raises(CorruptionError):
        decode_reply("k", b"live 5 in_progress 1 2 3 4 5 0 2 -1\nfpEXTRA")


def test_urls_errors_and_close(redis_url: str, redis_prefix: str) -> None:
    assert parse_url("redis://h:1/2?prefix=a:b:&db=3") == ("redis://h:1/2?db=3", "a:b:")
    assert parse_url("redis://h") == ("redis://h", None)
    with pytest.raises(UsageError, match="prefix"):
        RedisBackend(redis_url + "&prefix=again")
    with pytest.raises(UsageError):
        RedisBackend(redis_url, sync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as raised:
        RedisBackend("redis://:secret@127.0.0.1:1/0")
    assert "secret" not in str(raised.value)
    assert isinstance(raised.value.__cause__, redis.ConnectionError)
    backend = RedisBackend(server_url())
    assert backend.prefix == "unbundled:idem:"
    backend.close()
    backend.close()
    with pytest.raises(Closed):
        backend.get("k")
    opened = open_backend(redis_url)
    assert isinstance(opened, RedisBackend) and opened.prefix == redis_prefix
    opened.close()


def test_the_log_and_the_event_store_refuse_a_redis_url(redis_url: str) -> None:
    with pytest.raises(NotSupported, match="serves idempotency keys, not the log"):
        Log.open(redis_url)
    with pytest.raises(NotSupported, match="not the event store"):
        EventStore.open(redis_url)
    with pytest.raises(NotSupported, match="not the event store"):
        asyncio.run(AsyncEventStore.open(redis_url))


def test_without_redis_py_the_url_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['redis'] = None\n"
        "from unbundled import NotSupported\n"
        "from unbundled.idempotency import Idempotency\n"
        "try:\n"
        "    Idempotency.open('redis://127.0.0.1:1/0')\n"
        "except NotSupported as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'unbundled[redis]'" in out.stdout, out.stderr
