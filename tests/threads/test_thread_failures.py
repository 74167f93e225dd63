"""A background thread that fails is never silent (issue 9, item 4).

A failure is injected into each background thread: the SQLite writer (in a
commit, and in the maintenance it runs between batches), the PostgreSQL
writer and listener, a subscription worker and the causal follower. Each
test checks that the callers waiting on the thread get a typed
``ThreadFailed`` naming the cause within a second, that later calls get it
at once, and, for the writers, that another process can write at once (the
failed thread released its locks). ``test_cli_consumer_*`` runs the whole
scenario of the issue in a real process and ends it with SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.crash._helpers import ROOT, wait_until
from unbundled import EventStore, Log, ThreadFailed
from unbundled._waiters import SyncWaiter
from unbundled.backends.postgres import PostgresBackend
from unbundled.backends.postgres import _writer as pg_writer
from unbundled.backends.sqlite import _log as sqlite_log
from unbundled.backends.sqlite._log_stage import Stage
from unbundled.consistency.causal import Replica
from unbundled.eventstore import ANY, Event, NewEvent, StreamWrite

# How soon a caller must hear of the failure. It hears in milliseconds on an
# idle machine (the issue asks for under a second); the bound is loose so a
# loaded CI machine does not fail it, while the bug it guards against (a
# caller waiting forever on a dead thread) still fails it.
PROMPT_S = 5.0


class Fault:
    """An injected failure: its thread blocks in it until :attr:`release`
    is set, then raises ``RuntimeError('injected fault')``."""

    def __init__(self, *, released: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        if released:
            self.release.set()
        self.raised_at = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.release.wait(30)
        self.raised_at = time.monotonic()
        raise RuntimeError("injected fault")


class Caller(threading.Thread):
    """Runs one call on its own thread and keeps its error and end time."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.error: BaseException | None = None
        self.ended_at = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.call()
        except BaseException as exc:
            self.error = exc
        self.ended_at = time.monotonic()


def assert_told(caller: Caller, since: float) -> None:
    """The caller got ThreadFailed, caused by the fault, within PROMPT_S of ``since``."""
    caller.join(10)
    assert not caller.is_alive(), "the caller still waits for a thread that died"
    assert isinstance(caller.error, ThreadFailed), caller.error
    assert isinstance(caller.error.__cause__, RuntimeError)
    assert "injected fault" in str(caller.error) and caller.error.thread
    assert caller.ended_at - since < PROMPT_S


def assert_fails_at_once(call: Callable[[], object]) -> None:
    start = time.monotonic()
    with pytest.raises(ThreadFailed, match="injected fault"):
        call()
    assert time.monotonic() - start < PROMPT_S


def run_child(code: str, *args: str) -> None:
    """Run ``code`` in a fresh interpreter; it must finish in time (a write
    lock still held would keep it waiting for a minute)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


APPEND_TO_LOG = (
    "import sys; from unbundled import Log\n"
    "with Log.open(sys.argv[1], sync='normal') as log: log.append('t', b'other process')"
)


# --- the SQLite writer --------------------------------------------------------


@pytest.mark.parametrize("where", ["maintenance", "commit"])
def test_a_failing_sqlite_writer_fails_its_callers_and_frees_the_file(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "log.db")
    fault = Fault()
    interval = 0.01 if where == "maintenance" else None
    with Log.open(path, sync="normal", maintenance_interval_s=interval) as log:
        log.create_topic("t")
        producer = log.producer("p")  # its appends always go through the writer thread
        callers = []
        if where == "maintenance":
            monkeypatch.setattr(sqlite_log, "_maintain", fault)
        else:
            monkeypatch.setattr(Stage, "flush", fault)
            callers.append(Caller(lambda: producer.append("t", b"first")))
        assert fault.entered.wait(10), "the writer never reached the fault"
        # The writer holds the write lock (inside BEGIN IMMEDIATE) and is stuck:
        # a second caller queues behind it.
        callers.append(Caller(lambda: log.append("t", b"queued")))
        queue = log.backend._writer._queue  # type: ignore[attr-defined]
        wait_until(lambda: len(queue) > 0, 10, "the second append to queue")
        released = time.monotonic()
        fault.release.set()
        for caller in callers:
            assert_told(caller, released)
        assert_fails_at_once(lambda: log.append("t", b"later"))
        assert_fails_at_once(lambda: producer.append("t", b"later"))
        run_child(APPEND_TO_LOG, path)  # the lock was released
    with Log.open(path, sync="normal") as log:  # nothing of the failed batch was written
        assert [r.value for r in log.read("t")] == [b"other process"]


# --- the PostgreSQL writer and listener -----------------------------------------


def new_write(stream: str) -> list[StreamWrite]:
    return [StreamWrite(stream, ANY, [NewEvent(str(uuid.uuid4()), "Happened", b"{}")])]


def append(backend: PostgresBackend, stream: str) -> object:
    waiter = SyncWaiter()
    backend.submit_events(new_write(stream), waiter)
    return waiter.wait()


APPEND_TO_PG = (
    "import sys, uuid\n"
    "from unbundled._waiters import SyncWaiter\n"
    "from unbundled.backends.postgres import PostgresBackend\n"
    "from unbundled.eventstore import ANY, NewEvent, StreamWrite\n"
    "backend = PostgresBackend(sys.argv[1], sync='normal')\n"
    "waiter = SyncWaiter()\n"
    "event = NewEvent(str(uuid.uuid4()), 'Happened', b'{}')\n"
    "backend.submit_events([StreamWrite('s', ANY, [event])], waiter)\n"
    "waiter.wait(); backend.close()"
)


@pytest.mark.postgres
def test_a_failing_postgres_writer_fails_its_callers(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = PostgresBackend(pg_url, sync="normal")
    try:
        append(backend, "s")  # the schema exists and the writer is warm
        fault = Fault()
        monkeypatch.setattr(pg_writer, "decide", fault)
        first = Caller(lambda: append(backend, "s"))
        assert fault.entered.wait(10), "the writer never reached the fault"
        second = Caller(lambda: append(backend, "s"))
        queue = backend._writer._queue
        wait_until(lambda: len(queue) > 0, 10, "the second append to queue")
        released = time.monotonic()
        fault.release.set()
        assert_told(first, released)
        assert_told(second, released)
        assert_fails_at_once(lambda: append(backend, "s"))
        monkeypatch.undo()  # the other process is not faulty
        run_child(APPEND_TO_PG, pg_url)
        assert len(backend.read_all(0, 10)) == 2  # the one before, and the other process's
    finally:
        backend.close()


@pytest.mark.postgres
def test_a_failing_listener_fails_its_waiters(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = PostgresBackend(pg_url, sync="normal")
    writer = PostgresBackend(pg_url, sync="normal")
    try:
        token = reader.events_change_token()  # starts the listener
        assert reader._notifier._listening
        fault = Fault(released=True)
        # The listener calls bump() for another process's commit (the
        # reader's own writer holds the bound method it was given).
        monkeypatch.setattr(reader._notifier, "bump", fault)
        waiting = Caller(lambda: reader.wait_for_events(token, 30))
        append(writer, "s")
        assert fault.entered.wait(10), "the listener never heard the commit"
        assert_told(waiting, fault.raised_at or time.monotonic())
        assert_fails_at_once(lambda: reader.wait_for_events(token, 30))
        assert_fails_at_once(reader.events_change_token)
        append(writer, "s")  # writes go on
    finally:
        reader.close()
        writer.close()


# --- threads above the backends ----------------------------------------------------


class Happened(Event, frozen=True):
    n: int


def test_a_subscription_worker_whose_reads_fail_reports_it_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EventStore.open(tmp_path / "es.db", sync="normal", events=[Happened]) as store:
        store.append("s", [Happened(n=1)])
        seen: list[int] = []
        fault = Fault(released=True)
        worker = store.subscribe(handler=lambda e: seen.append(e.position))
        wait_until(lambda: seen == [1], 10, "the first event")
        monkeypatch.setattr(store.backend, "read_all", fault)
        store.append("s", [Happened(n=2)])  # wakes the worker, whose next read fails
        assert fault.entered.wait(10)
        stopped = Caller(lambda: worker.join(10))
        assert_told(stopped, fault.raised_at or time.monotonic())
        assert isinstance(worker.error, ThreadFailed) and not worker.running
        assert_fails_at_once(worker.stop)


def test_a_failing_causal_follower_fails_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Log.open(tmp_path / "causal.db", sync="normal") as log:
        replica = Replica(log, "a", ["a", "b"])
        fault = Fault(released=True)
        monkeypatch.setattr(replica, "sync", fault)
        replica.start(poll_s=0.01)
        assert fault.entered.wait(10)
        thread = replica._thread
        assert thread is not None
        thread.join(10)
        assert_fails_at_once(lambda: replica.get("k"))
        replica.close()


# --- the scenario, in a real process ------------------------------------------


@pytest.fixture
def child_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, UNBUNDLED_FAULT_MARKER=str(tmp_path / "fault-fired"))
    env.pop("UNBUNDLED_URL", None)
    yield env


def test_cli_consumer_whose_writer_fails_frees_the_file_and_stops(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """The scenario of the issue: maintenance fails in the writer of a
    long-lived ``consume --group --follow``, and another process can write at
    once. A group consumer needs the writer (heartbeats, commits): it reports
    the failure and exits 7 by itself, with no traceback. (A consumer without
    a group opens the file read-only and has no writer to fail.)"""
    path = str(tmp_path / "cli.db")
    with Log.open(path, sync="normal") as log:
        log.create_topic("t")
    marker = Path(child_env["UNBUNDLED_FAULT_MARKER"])
    consume = ["consume", "t", "--follow", "--group", "g"]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.threads._child", "--db", path, *consume],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(marker.exists, 20, "the injected maintenance failure")
        run_child(APPEND_TO_LOG, path)  # within a minute: the lock is free
        _, stderr = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert "Traceback" not in stderr, stderr
    assert child.returncode == 7, (child.returncode, stderr)
    assert "failed with OverflowError: injected fault" in stderr, stderr
