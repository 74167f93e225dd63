"""Random clients of the key-value store, and the histories they record.

A client picks operations on a few keys (reads, writes, compare-and-sets by
value and by version built from what it last read, deletes), with values
unique per client and operation so a read names the write it saw. The
history uses the input/output form of ``unbundled.consistency.kv.model``
(values as ``str``).

* :func:`run_threads`: clients as threads of one process, times from the
  ``Recorder``'s logical clock (stamped just before each call and just after
  each return, under one lock).
* :func:`run_processes`: clients as child processes (``_client``), times from
  ``time.monotonic_ns()``, one clock for every process on Linux. The parent
  SIGKILLs some of them: at a random moment, or right after an operation
  took effect and before its answer was reported (the child says ``s`` and
  stalls). A killed client's last invoked operation has an unknown outcome
  (it never returned); a fresh client takes its place.
"""

from __future__ import annotations

import json
import random
import select
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from unbundled.consistency import KV
from unbundled.consistency.history import UNKNOWN, History, Operation, Recorder
from unbundled.testing.child import ChildProcess

KEYS = ("a", "b", "c")
ROOT = Path(__file__).resolve().parents[3]
STEP_TIMEOUT_S = 30.0

Input = tuple[Any, ...]


class Client:
    """Chooses a client's next operation from what it saw last."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.count = 0
        self.seen: dict[str, tuple[str, int] | None] = {}

    def next_input(self) -> Input:
        rng = self.rng
        key = rng.choice(KEYS)
        self.count += 1
        new = f"{self.name}.{self.count}"
        roll = rng.random()
        if roll < 0.35:
            return ("read", key)
        if roll < 0.55:
            return ("write", key, new)
        if roll < 0.9:
            seen = self.seen.get(key)
            if rng.random() < 0.5:
                expected_value = None if seen is None else seen[0]
                if rng.random() < 0.1:
                    expected_value = f"{self.name}.stale"  # never matches
                return ("cas", key, "value", expected_value, new)
            expected_version = 0 if seen is None else seen[1]
            if rng.random() < 0.1:
                expected_version = rng.randrange(0, 4)
            return ("cas", key, "version", expected_version, new)
        return ("delete", key)

    def observe(self, input: Input, output: Any) -> None:
        if input[0] == "read":
            self.seen[input[1]] = output


def apply(kv: KV, input: Input) -> Any:
    """Run one operation; its output in the history's form."""
    op, key = input[0], input[1]
    if op == "read":
        got = kv.read(key)
        return None if got is None else (got.value.decode(), got.version)
    if op == "write":
        return kv.write(key, input[2].encode())
    if op == "delete":
        return kv.delete(key)
    assert op == "cas"
    _, _, by, expected, new = input
    if by == "value":
        expected_value = None if expected is None else expected.encode()
        return kv.compare_and_set(key, expected_value=expected_value, new=new.encode())
    return kv.compare_and_set(key, expected_version=expected, new=new.encode())


def run_threads(
    kv: KV | Sequence[KV], *, clients: int, ops: int, seed: int, lockstep: bool = False
) -> History:
    """``clients`` threads, ``ops`` operations each, on one shared store (or
    thread ``i`` on ``kv[i]``); returns the history. An exception fails the caller.

    ``lockstep``: every client waits for the others after each operation, so
    between two operations of one client every other client completes one
    (whatever the scheduler does: a loaded machine may otherwise run the
    threads of a fast store one after another)."""
    rec = Recorder()
    start = threading.Barrier(clients)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        store = kv if isinstance(kv, KV) else kv[index]
        client = Client(f"t{index}", random.Random(seed * 1000 + index))
        try:
            start.wait()
            for _ in range(ops):
                input = client.next_input()
                with rec.call(client.name, input) as call:
                    output = apply(store, input)
                    call.ok(output)
                client.observe(input, output)
                if lockstep:
                    start.wait()
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    # A final read of every key after all clients stopped: the end state must
    # fit the same linearization as everything before it.
    final = kv if isinstance(kv, KV) else kv[0]
    for key in KEYS:
        with rec.call("final", ("read", key)) as call:
            call.ok(apply(final, ("read", key)))
    return rec.history()


# --- processes ----------------------------------------------------------------------


@dataclass
class _Lane:
    """One client process and what it reported."""

    name: str
    child: ChildProcess
    pending: tuple[Input, int] | None = None  # invoked, not yet returned
    done: bool = False


@dataclass
class ProcessRun:
    """A history from client processes, and what happened to them."""

    history: History
    kills: int
    stalled_kills: int  # killed after an effect, before the answer: certainly unknown
    unknown: int  # operations that never returned
    clients: int
    errors: list[str] = field(default_factory=list)


def _spawn(url: str, name: str, seed: int, ops: int, stall_at: int) -> _Lane:
    args = ["-m", "tests.consistency.kv._client", url, name, str(seed), str(ops), str(stall_at)]
    child = ChildProcess(args, cwd=ROOT, stdin=True)
    return _Lane(name, child)


def run_processes(
    url: str,
    *,
    clients: int,
    ops: int,
    seed: int,
    random_kills: int,
    stalled_kills: int,
) -> ProcessRun:
    """``clients`` processes doing ``ops`` operations each; ``random_kills`` of
    them are SIGKILLed at a random point of their run and ``stalled_kills``
    right after an operation took effect; each killed one is replaced by a
    fresh client doing ``ops // 2`` operations."""
    rng = random.Random(seed)
    victims = rng.sample(range(clients), random_kills + stalled_kills)
    random_victims = set(victims[:random_kills])
    stallers = set(victims[random_kills:])
    kill_after = {i: rng.randrange(ops // 4, ops * 3 // 4) for i in random_victims}
    ops_done: dict[str, int] = {}
    operations: list[Operation] = []
    lanes: list[_Lane] = []
    run = ProcessRun(History.of([]), 0, 0, 0, 0)
    try:
        for i in range(clients):
            stall_at = rng.randrange(ops // 4, ops * 3 // 4) if i in stallers else -1
            lanes.append(_spawn(url, f"p{i}", seed * 1000 + i, ops, stall_at))
        for lane in lanes:
            if lane.child.wait_for(lambda line: line == "ready", STEP_TIMEOUT_S) is None:
                raise AssertionError(f"{lane.name} did not start: {lane.child.stderr_text()}")
        for lane in lanes:
            lane.child.send("go")
        fresh = clients
        while live := [lane for lane in lanes if not lane.done]:
            streams = {_stdout(lane): lane for lane in live}
            ready, _, _ = select.select(list(streams), [], [], STEP_TIMEOUT_S)
            if not ready:
                raise AssertionError(f"no client reported for {STEP_TIMEOUT_S} s")
            for stream in ready:
                lane = streams[stream]
                actions = {
                    _record(lane, line, operations, ops_done, run)
                    for line in lane.child.read_lines(0)
                }
                if "ready" in actions:  # a replacement client
                    lane.child.send("go")
                index = int(lane.name[1:])
                if ops_done.get(lane.name, 0) >= kill_after.get(index, ops + 1):
                    del kill_after[index]
                    actions.add("random")
                if "stalled" in actions or "random" in actions:
                    lane.child.kill()
                    _retire(lane, operations, run, stalled="stalled" in actions)
                    lanes.append(_spawn(url, f"p{fresh}", seed * 1000 + fresh, ops // 2, -1))
                    fresh += 1
                elif lane.child.eof and not lane.done:
                    raise AssertionError(f"{lane.name} died: {lane.child.stderr_text()}")
        for lane in lanes:
            status = lane.child.wait(STEP_TIMEOUT_S)
            if status not in (0, -9):
                run.errors.append(f"{lane.name} exited with {status}: {lane.child.stderr_text()}")
        # A final read of every key, after every client stopped or died: the
        # end state must fit the same linearization (a killed client's write
        # that took effect shows here).
        with KV.open(url, sync="normal") as kv:
            for key in KEYS:
                called = time.monotonic_ns()
                output = apply(kv, ("read", key))
                operations.append(
                    Operation("final", ("read", key), output, called, time.monotonic_ns())
                )
    finally:
        for lane in lanes:
            lane.child.close()
    run.history = History.of(sorted(operations, key=lambda op: op.call_time))
    run.clients = len(lanes)
    return run


def _record(
    lane: _Lane,
    line: str,
    operations: list[Operation],
    ops_done: dict[str, int],
    run: ProcessRun,
) -> str | None:
    """Take one line of a client; returns ``"stalled"`` when it must be killed
    now, ``"ready"`` when it waits for ``go``."""
    kind, _, rest = line.partition(" ")
    if kind == "i":
        assert lane.pending is None, f"{lane.name} invoked twice"
        stamp, _, text = rest.partition(" ")
        lane.pending = (_tuple(json.loads(text)), int(stamp))
    elif kind == "r":
        assert lane.pending is not None, f"{lane.name} returned without a call"
        stamp, _, text = rest.partition(" ")
        input, called = lane.pending
        output = json.loads(text)
        if isinstance(output, list):
            output = tuple(output)
        operations.append(Operation(lane.name, input, output, called, int(stamp)))
        lane.pending = None
        ops_done[lane.name] = ops_done.get(lane.name, 0) + 1
    elif kind == "x":  # an error: the outcome is unknown
        assert lane.pending is not None
        run.errors.append(f"{lane.name}: {rest}")
        _retire_pending(lane, operations, run)
    elif kind == "s":
        return "stalled"
    elif kind == "done":
        lane.done = True
    elif kind == "ready":
        return "ready"
    return None


def _tuple(value: list[Any]) -> Input:
    return tuple(value)


def _retire_pending(lane: _Lane, operations: list[Operation], run: ProcessRun) -> None:
    if lane.pending is not None:
        input, called = lane.pending
        operations.append(Operation(lane.name, input, UNKNOWN, called, None))
        lane.pending = None
        run.unknown += 1


def _retire(lane: _Lane, operations: list[Operation], run: ProcessRun, *, stalled: bool) -> None:
    """After SIGKILL: what it said before dying counts; its open call is unknown."""
    for line in lane.child.drain(STEP_TIMEOUT_S):
        _record(lane, line, operations, {}, run)
    _retire_pending(lane, operations, run)
    lane.done = True
    run.kills += 1
    run.stalled_kills += stalled


def _stdout(lane: _Lane) -> IO[bytes]:
    stream = lane.child.proc.stdout
    assert stream is not None, "client processes are started with stdout=PIPE"
    return stream
