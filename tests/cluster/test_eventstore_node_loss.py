"""The event store on a three-node NATS JetStream cluster loses no
acknowledged event when the leader of its stream is SIGKILLed, with its
appends pipelined (docs/explanation/eventstore.md, N4).

Tasks of one process append to streams of their own with exact expected
versions; a call that fails with ``Timeout`` or ``Unavailable`` (outcome
unknown) is retried with the same event ids and expected version, which
finds an append that had landed (N5). The leader of the events stream is
killed mid-way and started again. Afterwards positions are dense, every
acknowledged event is stored once where its append said, and every
stream's versions are dense.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from tests.cluster.test_log_node_loss import kill_and_restart
from unbundled.errors import Timeout, Unavailable
from unbundled.eventstore import NO_STREAM, EventStore
from unbundled.eventstore.aio import AsyncEventStore
from unbundled.testing.eventstore_contract import everything, new_event
from unbundled.testing.natscluster import NatsCluster

pytestmark = pytest.mark.nats

TASKS = 16
APPENDS = 40  # per task
RETRIES_MAX = 200
RETRY_S = 0.1


def test_events_stream_leader_killed_during_pipelined_appends(nats_cluster: NatsCluster) -> None:
    url = f"{nats_cluster.url}?bucket=esloss_{uuid.uuid4().hex[:8]}&replicas=3"
    acked: list[tuple[Any, list[str]]] = []
    errors: list[str] = []
    started = threading.Event()

    async def work(store: AsyncEventStore, t: int) -> None:
        version = NO_STREAM
        for i in range(APPENDS):
            events = [new_event() for _ in range(1 + (t + i) % 2)]
            for _ in range(RETRIES_MAX):
                try:
                    result = await store.append(f"acct-{t}", events, version)
                    break
                except (Timeout, Unavailable) as exc:
                    errors.append(type(exc).__name__)
                    await asyncio.sleep(RETRY_S)
            else:
                raise AssertionError(f"task {t} could not append after {RETRIES_MAX} tries")
            version = result.last_version
            acked.append((result, [e.id for e in events]))
            started.set()
            await asyncio.sleep(0.02)  # the run lasts through the kill

    async def appends() -> None:
        async with await AsyncEventStore.open(url, timeout_s=2.0) as store:
            await asyncio.gather(*(work(store, t) for t in range(TASKS)))

    runner = threading.Thread(target=lambda: asyncio.run(appends()))
    runner.start()
    assert started.wait(30), "no append landed"
    streams = nats_cluster.streams()
    assert all(view.replicas == 3 for view in streams.values()), streams
    at_kill = len(acked)
    kill_and_restart(nats_cluster)
    assert at_kill < TASKS * APPENDS, "the appends were over before the kill"
    runner.join(180)
    assert not runner.is_alive(), "the appends hung"
    assert len(acked) == TASKS * APPENDS, "a task failed: see its error above"

    deadline = time.monotonic() + 60
    while True:
        try:
            with EventStore.open(url, timeout_s=2.0) as store:
                stored = everything(store)
            break
        except (Timeout, Unavailable):
            assert time.monotonic() < deadline, "the store did not come back"
            time.sleep(0.5)
    assert [e.position for e in stored] == list(range(1, len(stored) + 1))
    by_id = {e.id: e for e in stored}
    assert len(by_id) == len(stored), "an event stored twice"
    for result, ids in acked:
        assert [by_id[i].position for i in ids] == list(result.positions)
    assert sum(len(ids) for _, ids in acked) == len(stored), "an event nobody acknowledged"
    for t in range(TASKS):
        versions = [e.version for e in stored if e.stream == f"acct-{t}"]
        assert versions == list(range(len(versions))), t
    print(f"{len(stored)} events, errors retried: {len(errors)} ({set(errors)})")
