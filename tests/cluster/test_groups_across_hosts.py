"""A consumer group whose members run on three "hosts" (network namespaces)
survives a member's death, a member cut off past its lease, and its return.

Members consume ``in`` and, per poll, append to ``out`` and commit their
offsets in one transaction (``tests/cluster/_groupworker``): on PostgreSQL
both commit together, so every input appears in ``out`` exactly once,
however the group rebalances. One member is SIGKILLed (its partitions move
after its lease); another is cut off from the database longer than its
lease and let back: a commit it makes for partitions it lost meanwhile is
rejected (``StaleGeneration``: fenced, not applied), so it duplicates nothing.

For NATS the same test would apply with at-least-once plus dedupe by id
(JetStream cannot commit records and offsets together): compare distinct
values there, not counts. It is not written yet.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.cluster._logcheck import log_or_skip
from tests.cluster._workers import Worker
from tests.cluster.conftest import shm_or_tmp
from tests.cluster.test_netns import FAST_FAILURE
from unbundled import Log
from unbundled.testing.netns import NetNamespaces
from unbundled.testing.pginstance import PostgresInstance

pytestmark = pytest.mark.postgres

INPUTS = 400
PARTITIONS = 6
LEASE_MS = 2_000
DONE_S = 90.0
MODULE = "tests.cluster._groupworker"


def test_group_members_on_three_hosts_killed_and_cut_off(nets: NetNamespaces) -> None:
    hosts = [nets.add(f"h{i}") for i in range(3)]
    listen = ("127.0.0.1", *(ns.host_addr for ns in hosts))
    with PostgresInstance(listen=listen, parent=shm_or_tmp()) as pg:
        query = f"schema=groups&{FAST_FAILURE}"
        with log_or_skip(f"{pg.url}?{query}") as log:
            log.create_topic("in", partitions=PARTITIONS)
            log.create_topic("out", partitions=1)
            workers = [
                Worker(nets, ns, MODULE, f"{pg.url_at(ns.host_addr)}?{query}", str(LEASE_MS))
                for ns in hosts
            ]
            # The group settles with every member holding partitions.
            deadline = time.monotonic() + 30
            while not all(_holds_partitions(worker) for worker in workers):
                assert time.monotonic() < deadline, [w.seen[-3:] for w in workers]
                for worker in workers:
                    worker.drain(0.1)

            for n in range(INPUTS // 2):
                log.append("in", f"in:{n}".encode(), key=b"k%d" % n)
            while len(_outputs(log)) < INPUTS // 4:  # work in progress everywhere
                assert time.monotonic() < deadline + 30, "the group processes nothing"
                time.sleep(0.1)

            workers[0].process.kill()  # a member dies
            nets.cut(hosts[1])  # another is cut off past its lease
            time.sleep(LEASE_MS / 1000 * 2)
            for n in range(INPUTS // 2, INPUTS):  # the group goes on meanwhile
                log.append("in", f"in:{n}".encode(), key=b"k%d" % n)
            nets.restore(hosts[1])

            deadline = time.monotonic() + DONE_S
            while len(outputs := _outputs(log)) < INPUTS and time.monotonic() < deadline:
                time.sleep(0.5)
            for worker in workers[1:]:
                worker.drain(0.5)

            # Exactly once: every input once in ``out``, none twice, nothing else.
            counts = Counter(outputs)
            assert set(counts) == {f"in:{n}".encode() for n in range(INPUTS)}, len(counts)
            assert max(counts.values()) == 1, [v for v, c in counts.items() if c > 1][:10]
            # The group moved on without the dead member; the cut-off one rejoined.
            assert log.describe_group("across").generation >= 3
            assert len(log.describe_group("across").members) == 2


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
