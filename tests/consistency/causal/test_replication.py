"""Replication through a real log: replicas in one process on each backend,
and three replica processes on one SQLite file, one of them SIGKILLed
mid-write and restarted. Timeouts only bound the waits."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unbundled import (
    CorruptionError,
    Log,
    ProducerFenced,
    SessionBehind,
    Timeout,
    TopicExists,
    Unavailable,
    UsageError,
    limits,
)
from unbundled.consistency.causal import Replica, Session
from unbundled.consistency.causal._core import merge
from unbundled.testing.child import ChildProcess

ROOT = Path(__file__).resolve().parents[3]
NAMES = ["a", "b", "c"]


# --- replicas in one process, on each backend -----------------------------------------------


def test_replicas_replicate_siblings_and_resolutions_through_the_log(log: Log) -> None:
    a, b, c = (Replica(log, name, NAMES) for name in NAMES)
    a.put("cart", b"apple")
    b.put("cart", b"pear")  # b has not read a's write: concurrent
    for replica in (a, b, c):
        replica.sync()
    seen = c.get("cart")
    assert sorted(seen.values) == [b"apple", b"pear"] and seen.conflict
    c.put("cart", b"apple,pear", context=seen.context)
    for replica in (a, b):
        replica.sync()
    assert a.get("cart").values == b.get("cart").values == (b"apple,pear",)
    assert a.digest() == b.digest() == c.digest()
    assert a.applied == {"a": 1, "b": 1, "c": 1}
    assert log.end_offsets("causal") == {0: 1, 1: 1, 2: 1}


def test_a_session_reads_its_writes_on_a_replica_that_lags(log: Log) -> None:
    a, b = Replica(log, "a", NAMES), Replica(log, "b", NAMES)
    me = Session()
    a.put("profile", b"v1", session=me)
    a.put("profile", b"v2", context=a.get("profile").context, session=me)
    assert b.applied == {}  # b has not read the log since
    assert b.get("profile", session=me).values == (b"v2",)  # it catches up first
    # Without a session, a lagging replica may answer from the past.
    c = Replica(log, "c", NAMES)
    a.put("profile", b"v3", context=a.get("profile").context)
    assert c.get("profile").values == (b"v2",)
    # A session ahead of everything in the log is refused after the timeout.
    with pytest.raises(SessionBehind) as refused:
        c.get("profile", session=Session({"a": 99}), timeout_s=0.05)
    assert refused.value.details["missing"] == {"a": 99}


def test_an_update_waits_in_the_log_for_its_cause_from_another_partition(log: Log) -> None:
    a, b, c = (Replica(log, name, NAMES) for name in NAMES)
    b.put("question", b"how?")
    a.sync()
    seen = a.get("question")
    a.put("answer", b"so", session=None)
    a.put("question", b"answered", context=seen.context)
    # c reads partition 0 (a's, whose updates depend on b's) before partition 1.
    assert c.sync() == 3
    assert c.get("question").values == (b"answered",)
    assert c.digest() == a.digest()


def test_a_reopened_replica_replays_the_log_and_continues(log: Log) -> None:
    a, b = Replica(log, "a", NAMES), Replica(log, "b", NAMES)
    for n in range(30):
        replica = a if n % 2 else b
        replica.sync()
        replica.put(f"k{n % 4}", b"%d" % n, context=replica.get(f"k{n % 4}").context)
    b.sync()
    again = Replica(log, "a", NAMES)  # a new process would do this: replay
    assert again.digest() == b.digest()
    again.put("k0", b"after", context=again.get("k0").context)
    assert again.applied["a"] == 16
    b.sync()
    assert b.get("k0").values == (b"after",)


def test_a_second_instance_of_a_replica_fences_the_first(log: Log) -> None:
    old = Replica(log, "a", NAMES)
    new = Replica(log, "a", NAMES)
    with pytest.raises(ProducerFenced):
        old.put("k", b"zombie")
    new.put("k", b"live")
    assert Replica(log, "b", NAMES).get("k").values == (b"live",)


def test_a_write_whose_append_outcome_is_unknown_is_applied_iff_it_landed(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = Replica(log, "a", NAMES)
    append = a._producer.append

    def lost(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("injected: the append never reached the log")

    def landed(*args: Any, **kwargs: Any) -> Any:
        append(*args, **kwargs)
        raise Timeout("injected: the append landed but its answer was lost")

    monkeypatch.setattr(a._producer, "append", lost)
    with pytest.raises(Unavailable):
        a.put("k", b"lost")
    assert a.applied == {} and a.peek("k").values == ()
    monkeypatch.setattr(a._producer, "append", landed)
    with pytest.raises(Timeout):
        a.put("k", b"landed")
    assert a.applied == {"a": 1} and a.peek("k").values == (b"landed",)
    monkeypatch.setattr(a._producer, "append", append)
    a.put("k", b"next", context=a.get("k").context)
    assert log.end_offsets("causal")[0] == 2
    assert Replica(log, "b", NAMES).get("k").values == (b"next",)


def test_the_follower_thread_applies_without_being_asked(log: Log) -> None:
    a = Replica(log, "a", NAMES)
    with Replica(log, "b", NAMES) as b:
        b.start(poll_s=0.05)
        a.put("k", b"v")
        deadline = time.monotonic() + 10
        while b.applied != {"a": 1} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.peek("k").values == (b"v",)
        # What stops the follower is raised to the next caller, not swallowed.
        log.append("causal", b"garbage", partition=2)
        deadline = time.monotonic() + 10
        while b._failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(CorruptionError):
            b.get("k")


def test_the_log_is_checked_and_the_membership_too(log: Log) -> None:
    with pytest.raises(UsageError):
        Replica(log, "z", NAMES)
    with pytest.raises(UsageError):
        Replica(log, "a", ["a", "a"])
    Replica(log, "a", NAMES)
    with pytest.raises(TopicExists):
        Replica(log, "a", ["a", "b"])  # the topic has three partitions
    log.append("causal", b"not an update", partition=1)
    with pytest.raises(CorruptionError):
        Replica(log, "c", NAMES)


def test_a_topic_that_cannot_hold_an_update_is_refused_at_open(log: Log) -> None:
    """A topic made by hand with the default record limit could not take the
    largest update: refused when the replica opens, not at that write."""
    log.create_topic("causal", 3)
    with pytest.raises(UsageError, match="takes records of up to 1,048,576 bytes"):
        Replica(log, "a", NAMES)
    log.create_topic("roomy", 3, record_bytes_max=limits.causal_update_bytes_max * 2)
    Replica(log, "a", NAMES, topic="roomy")  # other settings are fine if they fit


# --- three replica processes on one SQLite file -------------------------------------------------


def replica_child(db: Path, name: str) -> ChildProcess:
    """Replica ``name`` of NAMES in a child process (``tests.consistency.causal._child``)."""
    return ChildProcess(
        ["-m", "tests.consistency.causal._child", str(db), name, ",".join(NAMES)],
        cwd=ROOT,
        stdin=True,
    )


class ReplicaProcess:
    """A replica in a child process, spoken to in JSON lines."""

    def __init__(self, db: Path, name: str) -> None:
        self.name = name
        self.child = replica_child(db, name)
        self.answers: dict[int, dict[str, Any]] = {}
        self._next = 0
        line = self.child.wait_for(lambda text: '"ready"' in text, 60.0)
        assert line is not None, f"{name} did not start: {self.child.stderr_text()}"
        self.ready: dict[str, Any] = json.loads(line)

    def send(self, **command: Any) -> int:
        self._next += 1
        self.child.send(json.dumps({**command, "id": self._next}))
        return self._next

    def collect(self, timeout_s: float) -> None:
        for line in self.child.read_lines(timeout_s):
            answer = json.loads(line)
            self.answers[answer["id"]] = answer

    def answer(self, ident: int, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while ident not in self.answers:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and self.child.proc.poll() is None, (
                f"{self.name}: no answer to {ident}: {self.child.stderr_text()}"
            )
            self.collect(remaining)
        answer = self.answers.pop(ident)
        assert "error" not in answer, answer
        return answer

    def call(self, **command: Any) -> dict[str, Any]:
        return self.answer(self.send(**command))


@contextlib.contextmanager
def replica_processes() -> Iterator[dict[str, ReplicaProcess]]:
    started: dict[str, ReplicaProcess] = {}
    try:
        yield started
    finally:
        for process in started.values():
            process.child.close()


def joined(*tokens: str) -> str:
    vector: dict[str, int] = {}
    for token in tokens:
        vector = merge(vector, Session.from_token(token).vector)
    return Session(vector).token()


def converged(processes: dict[str, ReplicaProcess], timeout_s: float) -> dict[str, Any]:
    """Poll the replicas' states until all are equal; return that state."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {name: p.call(op="state") for name, p in processes.items()}
        if len({s["digest"] for s in states.values()}) == 1:
            return states["a"]
        assert time.monotonic() < deadline, f"no convergence: {states}"
        time.sleep(0.05)


def test_replica_processes_started_at_once_share_one_topic(tmp_path: Path) -> None:
    """No file and no topic beforehand: three processes open their replicas
    at the same moment; one creates the topic, the others find it."""
    db = tmp_path / "fresh.db"
    children = [replica_child(db, name) for name in NAMES]
    try:
        for child in children:
            line = child.wait_for(lambda text: '"ready"' in text, 60.0)
            assert line is not None, child.stderr_text()
    finally:
        for child in children:
            child.close()
    with Log.open(db) as log:
        assert log.describe_topic("causal").config.partitions == len(NAMES)


def test_replica_processes_converge_after_one_is_killed_and_restarted(tmp_path: Path) -> None:
    db = tmp_path / "causal.db"
    with Log.open(db) as log:  # created up front so the children do not race for it
        log.create_topic("causal", 3, record_bytes_max=2 * 1024 * 1024)
    with replica_processes() as procs:
        for name in NAMES:
            procs[name] = ReplicaProcess(db, name)
        a, b = procs["a"], procs["b"]

        # A client moving between processes reads its writes, monotonically.
        alice = a.call(op="put", key="profile", value="v1", session=Session().token())["session"]
        for name in ("b", "c", "a"):
            got = procs[name].call(op="get", key="profile", session=alice)
            assert got["values"] == ["v1"], name
            alice = got["session"]

        # Concurrent writes on two processes are siblings everywhere, until resolved.
        one = a.call(op="put", key="cart", value="apple", session=Session().token())
        two = b.call(op="put", key="cart", value="pear", session=Session().token())
        both = joined(one["session"], two["session"])
        seen = procs["c"].call(op="get", key="cart", session=both)
        assert seen["values"] == ["apple", "pear"]
        fixed = procs["c"].call(
            op="put", key="cart", value="apple+pear", context=seen["context"], session=both
        )
        for name in NAMES:
            got = procs[name].call(op="get", key="cart", session=fixed["session"])
            assert got["values"] == ["apple+pear"], name

        # Kill c with writes in flight; a and b write on while it is dead.
        c = procs["c"]
        burst = [c.send(op="put", key=f"c{i}", value=f"c-{i}") for i in range(40)]
        deadline = time.monotonic() + 30
        while len(c.answers) < 10 and time.monotonic() < deadline:
            c.collect(deadline - time.monotonic())
        c.child.signal(signal.SIGKILL)
        c.child.kill()
        c.collect(0.5)
        acknowledged = {i for i, ident in enumerate(burst) if ident in c.answers}
        c.child.close()
        assert len(acknowledged) >= 10
        for i in range(30):
            writer = a if i % 2 else b
            writer.call(op="put", key=f"x{i % 5}", value=f"x-{i}")

        # The restarted c replays the log: its acknowledged writes, and the news.
        procs["c"] = c = ReplicaProcess(db, "c")
        assert c.ready["applied"]["a"] >= 16 and c.ready["applied"]["b"] >= 16
        assert c.ready["applied"].get("c", 0) >= 1 + len(acknowledged)
        more = c.call(op="put", key="after", value="restart", session=Session().token())
        assert a.call(op="get", key="after", session=more["session"])["values"] == ["restart"]

        state = converged(procs, 60.0)
        data = state["data"]
        # c served the burst in order: the log holds a prefix of it, at least
        # every acknowledged write, maybe a few whose answers the kill cut off.
        landed = [i for i in range(len(burst)) if f"c{i}" in data]
        assert landed == list(range(len(landed))) and acknowledged <= set(landed)
        assert all(data[f"c{i}"] == [f"c-{i}"] for i in landed)
        print(f"burst: {len(acknowledged)} acknowledged, {len(landed)} landed, 40 sent")
        assert data["cart"] == ["apple+pear"] and data["profile"] == ["v1"]
        assert sorted(len(data[f"x{k}"]) for k in range(5)) == [6] * 5  # blind writes: siblings
    with Log.open(db) as log:
        ends = log.end_offsets("causal")
    assert {name: ends[i] for i, name in enumerate(NAMES)} == state["applied"]
