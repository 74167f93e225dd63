"""A consumer group whose members run on three "hosts" (network namespaces)
survives a member's death, a member cut off past its lease, and its return.

Members consume ``in`` and write each record to ``out``
(``tests/cluster/_groupworker``). One member is SIGKILLed (its partitions
move after its lease); another is cut off from the server longer than its
lease and let back: a write it makes for partitions it lost meanwhile is
rejected (fenced, not applied).

* PostgreSQL: per poll, outputs and offsets in one transaction, so every
  input appears in ``out`` exactly once, however the group rebalances.
* NATS JetStream (one ``nats-server`` listening on ``0.0.0.0``, reached
  through each namespace's ``host_addr``): records and offsets cannot
  commit together (docs/explanation/log.md, N3), so members write through
  an idempotent producer per input partition numbered by the input offsets,
  then commit (effectively-once, N5). The test compares distinct values
  (every input is in ``out``) and counts duplicates: within JetStream's
  duplicate window (two minutes, longer than the test) redone work lands
  once, so it asserts none. A cut-off call fails within a few request
  timeouts (``timeout_s``; nats-py's pings, every two minutes, notice
  nothing this short); back, the member is fenced, ``ProducerFenced`` if
  the cut caught it appending, ``StaleGeneration`` if committing (if
  polling, its next poll rejoins): no commit of its old assignment lands.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster._logcheck import log_or_skip
from tests.cluster._workers import Worker
from tests.cluster.conftest import require, shm_or_tmp
from tests.cluster.test_netns import FAST_FAILURE
from unbundled import Log
from unbundled.testing.natscluster import NatsCluster, nats_server_unavailable
from unbundled.testing.netns import Namespace, NetNamespaces
from unbundled.testing.pginstance import PostgresInstance

INPUTS = 400
PARTITIONS = 6
LEASE_MS = 2_000
DONE_S = 90.0
MODULE = "tests.cluster._groupworker"
CALL_FAILED_S_MAX = 10.0  # a cut-off NATS call: a few request timeouts (the worker's 1 s)


@pytest.mark.postgres
def test_group_members_on_three_hosts_killed_and_cut_off(nets: NetNamespaces) -> None:
    hosts = [nets.add(f"h{i}") for i in range(3)]
    listen = ("127.0.0.1", *(ns.host_addr for ns in hosts))
    with PostgresInstance(listen=listen, parent=shm_or_tmp()) as pg:
        query = f"schema=groups&{FAST_FAILURE}"
        with log_or_skip(f"{pg.url}?{query}") as log:
            run = _kill_one_cut_one(
                nets, hosts, log, lambda ns: f"{pg.url_at(ns.host_addr)}?{query}"
            )
            # Exactly once: every input once in ``out``, none twice, nothing else.
            counts = Counter(run.outputs)
            assert set(counts) == _inputs(), f"{len(counts)} distinct; {run.summary()}"
            twice = [v for v, c in counts.items() if c > 1][:10]
            assert not twice, f"{twice}; {run.summary()}"
            # The group moved on without the dead member; the cut-off one rejoined.
            assert log.describe_group("across").generation >= 3
            assert len(log.describe_group("across").members) == 2


@pytest.mark.nats
def test_group_members_on_three_hosts_killed_and_cut_off_on_nats(
    nets: NetNamespaces, tmp_path: Path
) -> None:
    require(nats_server_unavailable())
    hosts = [nets.add(f"h{i}") for i in range(3)]
    # One server (node loss is test_log_node_loss's); the server's default
    # sync_interval: this test kills clients, never the server or the machine.
    with NatsCluster(tmp_path / "nats", nodes=1, sync_interval=None, listen="0.0.0.0") as nats:
        server = nats.nodes[0]
        with log_or_skip(f"{server.url}?bucket=groups") as log:
            run = _kill_one_cut_one(
                nets, hosts, log, lambda ns: f"{server.url_at(ns.host_addr)}?bucket=groups"
            )
            counts = Counter(run.outputs)
            duplicates = {v: c for v, c in counts.items() if c > 1}
            print(f"{len(duplicates)} duplicated; {run.summary()}")  # for -s
            # Every input is in ``out``, nothing else.
            assert set(counts) == _inputs(), f"{len(counts)} distinct; {run.summary()}"
            # Effectively once (N5): redone work lands once within the
            # duplicate window, which outlasts the test.
            assert not duplicates, f"{list(duplicates.items())[:10]}; {run.summary()}"

            # Cut off, the member's calls failed in bounded time (request
            # timeouts: nats-py's pings notice nothing this short), typed
            # and retryable, and it went on retrying.
            cut_off = [r for r in run.workers[1].seen if r["t"] > run.cut_at]
            errors = [r for r in cut_off if "error" in r]
            assert errors and errors[0]["t"] - run.cut_at < CALL_FAILED_S_MAX, cut_off[:5]
            assert all(r["retryable"] and r["s"] < CALL_FAILED_S_MAX for r in errors), errors
            # Back, its writes for the partitions it lost were refused
            # (``ProducerFenced`` for an append, ``StaleGeneration`` for a
            # commit; neither if the cut caught it polling): each commit it
            # made after the cut was under an assignment newer than the cut.
            done = [r for r in run.workers[1].seen if "done" in r]
            before = max((r["generation"] for r in done if r["t"] < run.cut_at), default=0)
            after = [r for r in done if r["t"] > run.cut_at]
            assert all(r["generation"] > before for r in after), (before, after)
            assert log.describe_group("across").generation >= 3
            assert len(log.describe_group("across").members) == 2


@dataclass
class Run:
    """What :func:`_kill_one_cut_one` saw: ``out``'s values, the workers, and
    when (``time.monotonic()``, as the workers' reports' ``t``) the member
    was cut off, let back, and reported its new partitions."""

    outputs: list[bytes]
    workers: list[Worker]
    cut_at: float
    restored_at: float
    rejoined_at: float

    def summary(self) -> str:
        reports = [r for worker in self.workers for r in worker.seen]
        fenced = {
            worker.ns.label: dict(Counter(r["fenced"] for r in worker.seen if "fenced" in r))
            for worker in self.workers
        }
        return (
            f"{len(self.outputs)} outputs, {len(set(self.outputs))} distinct; fenced {fenced}; "
            f"errors {dict(Counter(r['error'] for r in reports if 'error' in r))}; "
            f"skipped as written {sum(r.get('skipped', 0) for r in reports)}; "
            f"the cut-off member back {self.rejoined_at - self.restored_at:.1f} s "
            "after the restore"
        )


def _kill_one_cut_one(
    nets: NetNamespaces, hosts: list[Namespace], log: Log, url_at: Callable[[Namespace], str]
) -> Run:
    """Three members, one per host, through ``url_at(host)``; half the
    inputs; one member killed, one cut off past its lease while the other
    half arrives, then let back. Returns once ``out`` holds every input
    and the cut-off member has rejoined (or ``DONE_S`` passed)."""
    log.create_topic("in", partitions=PARTITIONS)
    log.create_topic("out", partitions=1)
    workers = [Worker(nets, ns, MODULE, url_at(ns), str(LEASE_MS)) for ns in hosts]
    # The group settles with every member holding partitions.
    deadline = time.monotonic() + 30
    while not all(_holds_partitions(worker) for worker in workers):
        assert time.monotonic() < deadline, [w.seen[-3:] for w in workers]
        for worker in workers:
            worker.drain(0.1)

    for n in range(INPUTS // 2):
        log.append("in", f"in:{n}".encode(), key=b"k%d" % n)
    while len(set(_outputs(log))) < INPUTS // 4:  # work in progress everywhere
        assert time.monotonic() < deadline + 30, "the group processes nothing"
        time.sleep(0.1)

    workers[0].process.kill()  # a member dies
    nets.cut(hosts[1])  # another is cut off past its lease
    cut_at = time.monotonic()
    time.sleep(LEASE_MS / 1000 * 2)
    for n in range(INPUTS // 2, INPUTS):  # the group goes on meanwhile
        log.append("in", f"in:{n}".encode(), key=b"k%d" % n)
    nets.restore(hosts[1])
    restored_at = time.monotonic()

    deadline = restored_at + DONE_S
    # Back, the member rejoins: the partitions are shared by two now.
    rejoined = workers[1].wait_for(
        lambda r: r["t"] > restored_at and r.get("assigned") == PARTITIONS // 2, DONE_S
    )
    assert rejoined is not None, f"not back: {workers[1].seen[-10:]}; {workers[1].stderr()}"
    while len(set(outputs := _outputs(log))) < INPUTS and time.monotonic() < deadline:
        time.sleep(0.5)
    for worker in workers[1:]:
        worker.drain(0.5)
    return Run(outputs, workers, cut_at, restored_at, rejoined["t"])


def _inputs() -> set[bytes]:
    return {f"in:{n}".encode() for n in range(INPUTS)}


def _holds_partitions(worker: Worker) -> bool:
    """Whether the worker's latest assignment report names some partitions."""
    reports = [r["assigned"] for r in worker.seen if "assigned" in r]
    return bool(reports) and reports[-1] > 0


def _outputs(log: Log) -> list[bytes]:
    found: list[bytes] = []
    offset = 0
    while batch := log.read("out", 0, offset, records_max=1000):
        found += [r.value or b"" for r in batch]
        offset = batch[-1].offset + 1
    return found
