"""The key-value store on NATS stays linearizable across the loss of its leader.

A three-node JetStream cluster (``sync_interval: always``) holds an R3 KV
bucket. Six clients (threads, each with its own ``KV`` and connection,
spread over the three nodes) do random reads, writes, compare-and-sets and
deletes on three keys (``tests/consistency/kv/_workload``). Mid-run the
node leading the bucket's stream is SIGKILLed, and started again once a new
leader is elected; then the new leader is SIGKILLed, so the first victim,
caught up from the others, is one of the two nodes left.

What the history records of a failed call (``Unavailable`` or ``Timeout``):

* a read: nothing (a read changes nothing, so a failed one is left out,
  Jepsen's ``:fail``);
* a write, compare-and-set or delete: an unknown outcome (never returned,
  Jepsen's ``:info``): it may have taken effect at any moment after its
  call, or never. The client then only reads, pausing between tries, until
  a read succeeds, so each client leaves at most one unknown change per outage.

The checker (``unbundled.consistency.checker``) must find the whole history,
before, during and after the failover, linearizable against the store's
sequential model; every client must complete operations after the last
election; and a final read of each key closes the history.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster._nats import create_kv_bucket
from tests.consistency.kv._workload import KEYS, Client, apply
from unbundled.consistency import KV
from unbundled.consistency.checker import Recorder, check
from unbundled.consistency.kv.model import model
from unbundled.errors import BackendError
from unbundled.testing.natscluster import NatsCluster

pytestmark = pytest.mark.nats

SEED = int(os.environ.get("UNBUNDLED_KV_SEED", random.SystemRandom().randrange(2**31)))
CLIENTS = 6
THINK_S = 0.01  # between two operations of a client: keeps the history checkable
RETRY_S = 0.2  # between two tries of a client that met an error
BEFORE_KILL_S = 1.5
AFTER_LEADER_S = 1.5  # run on after the new leader is elected, and after the restart
FAILOVERS = 2
GO_ON_OPS = 20  # each client completes this many after the last election
GO_ON_S = 30.0  # within this
TIMEOUT_S = 2.0  # each client's request timeout
BUDGET_S = 60.0


@dataclass
class Lane:
    """What one client thread did."""

    name: str
    ok: int = 0
    unknown: int = 0
    failed_reads: int = 0
    errors: list[str] = field(default_factory=list)


def test_kv_linearizable_across_leader_failover(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    bucket = f"failover_{uuid.uuid4().hex[:8]}"
    create_kv_bucket(nats_cluster.url, bucket, replicas=3)
    stream = f"KV_{bucket}"
    nats_cluster.wait_stream_leader(stream)
    elections: list[str] = []

    rec = Recorder()
    stop = threading.Event()
    lanes = [Lane(f"t{i}") for i in range(CLIENTS)]
    crashed: list[BaseException] = []

    def work(index: int) -> None:
        lane = lanes[index]
        node = nats_cluster.nodes[index % len(nats_cluster.nodes)]
        client = Client(lane.name, random.Random(SEED * 1000 + index))
        try:
            with KV.open(f"{node.url}?bucket={bucket}", timeout_s=TIMEOUT_S) as kv:
                recovering = False
                while not stop.is_set():
                    input = ("read", random.Random().choice(KEYS)) if recovering else None
                    input = input or client.next_input()
                    rec.invoke(lane.name, input)
                    try:
                        output = apply(kv, input)
                    except BackendError as exc:
                        lane.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        if input[0] == "read":
                            rec.fail(lane.name)
                            lane.failed_reads += 1
                        else:
                            rec.info(lane.name)
                            lane.unknown += 1
                        recovering = True
                        time.sleep(RETRY_S)
                        continue
                    rec.ok(lane.name, output)
                    client.observe(input, output)
                    recovering = False
                    lane.ok += 1
                    time.sleep(THINK_S)
        except BaseException as exc:
            crashed.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(BEFORE_KILL_S)
        # Twice: the second time the first victim, restarted and caught up
        # from the others, is one of the two nodes that must hold every
        # acknowledged change.
        for failover in range(FAILOVERS):
            victim = nats_cluster.wait_stream_leader(stream)
            killed_at = time.monotonic()
            nats_cluster.kill(victim.index)
            successor = nats_cluster.wait_stream_leader(stream, other_than=victim)
            elections.append(
                f"{victim.name} killed, {successor.name} elected in "
                f"{time.monotonic() - killed_at:.1f} s"
            )
            marks = [lane.ok for lane in lanes]  # operations done by this election
            if failover < FAILOVERS - 1:
                time.sleep(AFTER_LEADER_S)
                nats_cluster.restart(victim.index)  # back to three: it catches up
                time.sleep(AFTER_LEADER_S)
        # Until every client went on under the last leader (one connected to
        # the dead node waits out its request's timeout, then reconnects).
        deadline = time.monotonic() + GO_ON_S
        while time.monotonic() < deadline and any(
            lane.ok - mark < GO_ON_OPS for lane, mark in zip(lanes, marks, strict=True)
        ):
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT_S * 3 + 10)
    assert not crashed, crashed
    assert not any(thread.is_alive() for thread in threads)

    live = next(node for node in nats_cluster.nodes if node.alive)
    with KV.open(f"{live.url}?bucket={bucket}", timeout_s=10) as kv:
        for key in KEYS:
            rec.invoke("final", ("read", key))
            rec.ok("final", apply(kv, ("read", key)))

    history = rec.history()
    summary = (
        f"seed {SEED} (UNBUNDLED_KV_SEED replays the clients' choices); "
        f"{'; '.join(elections)}; {len(history)} operations; "
        + ", ".join(
            f"{x.name}: {x.ok} ok/{x.unknown} unknown/{x.failed_reads} failed reads" for x in lanes
        )
        + f"; errors seen: {dict(Counter(e.partition(':')[0] for x in lanes for e in x.errors))}"
    )
    print(summary)  # shown with -s, and by pytest on failure
    # Every client went on after the last election.
    went_on = [lane.ok - mark for lane, mark in zip(lanes, marks, strict=True)]
    assert min(went_on) >= GO_ON_OPS, f"operations after the last election: {went_on}; {summary}"
    # The clients really met the outage (else this test proves nothing about it).
    assert sum(lane.unknown + lane.failed_reads for lane in lanes) >= 1, summary
    result = check(history, model(), budget_s=BUDGET_S)
    if not result.ok:
        picture = tmp_path / "violation.html"
        if result.violation is not None:
            result.write_html(picture)
        pytest.fail(f"{result.verdict.value}: {summary}; picture: {picture}: {result.violation}")
    cas = [op.output for op in history if op.input[0] == "cas" and op.known]
    assert cas.count(True) >= 5 and cas.count(False) >= 5, summary
