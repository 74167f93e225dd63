"""Every history of the key-value store is linearizable, on every backend.

Eight concurrent clients do random reads, writes, compare-and-sets (by value
and by version) and deletes on three keys; the history they record (each
operation's call time, return time, input and output) is checked with the
linearizability checker (``unbundled.consistency.checker``) against the
store's sequential model (``unbundled.consistency.kv.model``: values *and*
versions, partitioned per key). Clients are

* threads of one process sharing one store (memory, sqlite, postgres, nats),
  and on SQLite also threads with a store each (eight writers on one file;
  on NATS, eight connections: ``test_kv_nats``);
* processes (sqlite, postgres, nats; a memory store lives in one process), four of
  which are SIGKILLed mid-run: two at a random moment, two right after an
  operation took effect and before its answer was reported. The last
  operation a killed client invoked has an unknown outcome (it never
  returned): the checker may place it anywhere after its call, or nowhere.

The negative control: the same clients against a deliberately broken store
(each client's reads served from its own cache, refreshed only by its own
writes) give histories the checker rejects, so these tests have teeth.

``UNBUNDLED_KV_SEED`` replays a seed printed by a failure (the seed fixes the
clients' choices; the interleaving is the machine's). A failing check writes
the picture of the violation next to the test's temporary files.
"""

from __future__ import annotations

import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consistency.kv._workload import KEYS, run_processes, run_threads
from unbundled.consistency import KV, Versioned
from unbundled.consistency.checker import History, Recorder, Verdict, check
from unbundled.consistency.kv import Expect
from unbundled.consistency.kv.model import model

SEED = int(os.environ.get("UNBUNDLED_KV_SEED", random.SystemRandom().randrange(2**31)))
CLIENTS = 8
THREAD_OPS = 150  # per client
PROCESS_OPS = 250  # per client; a replacement for a killed client does half
BUDGET_S = 30.0  # the checker's; these histories take it milliseconds


@pytest.fixture
def interleaved() -> Iterator[None]:
    """Switch threads every 10 µs instead of 5 ms: with Python's default a
    thread runs many operations in a row and the history has little overlap."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def assert_linearizable(history: History, tmp_path: Path, what: str) -> None:
    result = check(history, model(), budget_s=BUDGET_S)
    if not result.ok:
        picture = tmp_path / "violation.html"
        if result.violation is not None:
            result.write_html(picture)
        pytest.fail(
            f"{what}: {result.verdict.value} (seed {SEED}: UNBUNDLED_KV_SEED={SEED} replays "
            f"the clients' choices); picture: {picture}; violation: {result.violation}"
        )
    assert result.partitions == len(KEYS)


def assert_busy(history: History) -> None:
    """The history exercises what it should: swaps won and lost, and reads of
    other clients' writes (so the clients really shared the store)."""
    cas = [op.output for op in history if op.input[0] == "cas" and op.known]
    assert cas.count(True) >= 5 and cas.count(False) >= 5, cas
    foreign = [
        op
        for op in history
        if op.input[0] == "read"
        and isinstance(op.output, tuple)
        and not op.output[0].startswith(f"{op.client}.")
    ]
    assert len(foreign) >= 10


@pytest.mark.usefixtures("interleaved")
def test_threads_sharing_a_store(store_url: str, tmp_path: Path) -> None:
    with KV.open(store_url, sync="normal", **_pool(store_url)) as kv:
        history = run_threads(kv, clients=CLIENTS, ops=THREAD_OPS, seed=SEED)
    assert len(history) == CLIENTS * THREAD_OPS + len(KEYS)
    assert_busy(history)
    assert_linearizable(history, tmp_path, f"{CLIENTS} threads on {store_url}")


@pytest.mark.usefixtures("interleaved")
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_threads_with_a_store_each_on_one_sqlite_file(store_url: str, tmp_path: Path) -> None:
    stores = [KV.open(store_url, sync="normal") for _ in range(CLIENTS)]
    try:
        history = run_threads(stores, clients=CLIENTS, ops=THREAD_OPS, seed=SEED)
    finally:
        for kv in stores:
            kv.close()
    assert_busy(history)
    assert_linearizable(history, tmp_path, f"{CLIENTS} stores on one file")


@pytest.mark.parametrize(
    "store_url", ["sqlite", "postgres", pytest.param("nats", marks=pytest.mark.nats)], indirect=True
)
def test_processes_some_killed_mid_operation(store_url: str, tmp_path: Path) -> None:
    run = run_processes(
        store_url, clients=CLIENTS, ops=PROCESS_OPS, seed=SEED, random_kills=2, stalled_kills=2
    )
    assert not run.errors, run.errors
    assert run.kills == 4 and run.stalled_kills == 2
    assert run.clients == CLIENTS + 4  # each killed client was replaced
    # Each stalled client's last call never returned though it took effect;
    # a randomly killed one usually dies inside a call too.
    never_returned = [op for op in run.history if not op.returned]
    assert len(never_returned) == run.unknown >= 2
    assert_busy(run.history)
    assert_linearizable(run.history, tmp_path, f"{run.clients} processes on {store_url}")


# --- the negative control --------------------------------------------------------------


class StaleReads:
    """A broken store: a client's (thread's) reads come from its own cache,
    filled by its first read of a key and refreshed only by its own changes.
    Each client sees its own writes, so it looks fine to a single client."""

    def __init__(self, inner: KV) -> None:
        self.inner = inner.backend
        self.url = f"stale-cache+{getattr(self.inner, 'url', '?')}"
        self._local = threading.local()

    def _cache(self) -> dict[str, Versioned | None]:
        cache: dict[str, Versioned | None] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        return cache

    def kv_read(self, key: str) -> Versioned | None:
        cache = self._cache()
        if key not in cache:
            cache[key] = self.inner.kv_read(key)
        return cache[key]

    def kv_write(self, key: str, value: bytes) -> int:
        version = self.inner.kv_write(key, value)
        self._cache()[key] = Versioned(value, version)
        return version

    def kv_compare_and_set(self, key: str, expected: Expect, new: bytes) -> int | None:
        version = self.inner.kv_compare_and_set(key, expected, new)
        if version is not None:
            self._cache()[key] = Versioned(new, version)
        return version

    def kv_delete(self, key: str) -> bool:
        self._cache()[key] = None
        return self.inner.kv_delete(key)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def test_stale_read_is_rejected_with_its_culprit(tmp_path: Path) -> None:
    """The smallest case: a read that starts after a write returned, and
    misses it."""
    kv = KV(StaleReads(KV.open("memory://")))
    rec = Recorder()
    reader_cache: list[Versioned | None] = []

    def reader(then: threading.Event, done: threading.Event) -> None:
        with rec.call("reader", ("read", "x")) as call:
            call.ok(None if (got := kv.read("x")) is None else (got.value.decode(), got.version))
        then.set()
        assert done.wait(10)
        with rec.call("reader", ("read", "x")) as call:
            got = kv.read("x")
            reader_cache.append(got)
            call.ok(None if got is None else (got.value.decode(), got.version))

    first, written = threading.Event(), threading.Event()
    thread = threading.Thread(target=reader, args=(first, written))
    thread.start()
    assert first.wait(10)
    with rec.call("writer", ("write", "x", "new")) as call:
        call.ok(kv.write("x", b"new"))
    written.set()
    thread.join()
    kv.close()
    assert reader_cache == [None]  # the broken store did serve the stale value
    result = check(rec.history(), model(), budget_s=BUDGET_S)
    assert result.verdict is Verdict.NOT_LINEARIZABLE
    assert result.violation is not None
    assert result.violation.culprit.client == "reader"
    assert result.violation.culprit.input == ("read", "x")
    result.write_html(tmp_path / "stale.html")
    assert (tmp_path / "stale.html").stat().st_size > 0


def test_random_clients_of_a_stale_cache_are_caught(store_url: str) -> None:
    """The same workload as above, on the broken store over each backend, in
    lockstep: between two reads of one client the others each complete an
    operation, so a stale read is all but certain to be visible."""
    inner = KV.open(store_url, sync="normal", **_pool(store_url))
    with KV(StaleReads(inner)) as kv:
        history = run_threads(kv, clients=CLIENTS, ops=THREAD_OPS, seed=SEED, lockstep=True)
    result = check(history, model(), budget_s=BUDGET_S)
    assert result.verdict is Verdict.NOT_LINEARIZABLE, f"seed {SEED}: {result.verdict}"
    assert result.violation is not None
    # The reads are to blame: without them the history is linearizable. (The
    # culprit -- the return after which no order exists -- is often a stale
    # read, but may be a later operation whose outcome no order of a stale
    # read placed early can explain: which one depends on the threads' timing.)
    assert any(op.input[0] == "read" for op in result.violation.operations)
    others = [op for op in history if op.input[0] != "read"]
    assert check(others, model(), budget_s=BUDGET_S).verdict is Verdict.LINEARIZABLE


def _pool(url: str) -> dict[str, int]:
    """A PostgreSQL connection per client thread, so that none waits for one."""
    return {"pool_size": CLIENTS} if url.startswith("postgresql") else {}
