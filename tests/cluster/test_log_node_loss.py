"""The log on a three-node NATS JetStream cluster loses no acknowledged append
when a node dies.

Each test starts its own cluster (``sync_interval: always``) and opens the
log with ``Log.open`` on it, its streams replicated three times. Then:

* **during appends**: idempotent producers (one per thread, explicit
  sequences, a failed append retried with the same sequence) and a group
  consumer run while the node leading most of the log's streams is
  SIGKILLed, and later started again;
* **during consumption**: records are appended and acknowledged first; a
  group consumer reads them and the leader is SIGKILLed mid-way.

Afterwards every acknowledged record is in the log exactly once, at the
position its append returned; producers and the consumer went on after the
new leaders were elected; the consumer saw every acknowledged record (at
least once: a failover may redeliver what was read but not committed).

The streams must be R3: :func:`log_url` asks for three replicas with the
URL's ``replicas=3`` (the bucket and every record stream), and
:func:`assert_replicated` fails a test whose streams are not.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest

from tests.cluster._logcheck import (
    TOPIC,
    LogRun,
    consume_until,
    log_or_skip,
    run_producers_through,
)
from unbundled.testing.natscluster import NatsCluster, Node

pytestmark = pytest.mark.nats

REPLICAS_QUERY = "replicas=3"  # how the NATS log is asked for R3 streams
RECORDS_BEFORE = 600  # for the consumption test
RETRY_S = 0.1
OUTAGE_S = 1.0  # an append this slow waited through the failover


def log_url(cluster: NatsCluster) -> str:
    return f"{cluster.url}?bucket=nodeloss_{uuid.uuid4().hex[:8]}&{REPLICAS_QUERY}"


def assert_replicated(cluster: NatsCluster) -> None:
    """Every stream of the cluster (the log's partitions and metadata) has
    three replicas: else losing one node would test nothing."""
    streams = cluster.streams()
    assert streams, "the log made no stream"
    single = sorted(name for name, view in streams.items() if view.replicas < 3)
    assert not single, f"streams with fewer than 3 replicas: {single}; see REPLICAS_QUERY"


def busiest_leader(cluster: NatsCluster) -> Node:
    """The node leading most streams (every leader, if one leads all)."""
    leaders = Counter(view.leader for view in cluster.streams().values() if view.leader)
    assert leaders, "no stream has a leader"
    return cluster.node(leaders.most_common(1)[0][0])


def kill_and_restart(cluster: NatsCluster) -> None:
    """SIGKILL the busiest leader, wait for every stream to lead elsewhere,
    then start the node again."""
    victim = busiest_leader(cluster)
    led = [name for name, view in cluster.streams().items() if view.leader == victim.name]
    cluster.kill(victim.index)
    for stream in led:
        cluster.wait_stream_leader(stream, other_than=victim)
    time.sleep(1.0)  # work on under the new leaders, with a node down
    cluster.restart(victim.index)


def test_leader_killed_during_appends(nats_cluster: NatsCluster) -> None:
    with log_or_skip(log_url(nats_cluster)) as log:
        log.create_topic(TOPIC, partitions=3, exist_ok=True)
        assert_replicated(nats_cluster)
        run = run_producers_through(
            log, lambda: kill_and_restart(nats_cluster), consume=True, after_s=2.0
        )
        print(run.summary())
        run.assert_no_loss_no_duplicates(consumed=True)
    assert len(run.acked) >= 50, run.summary()
    # The outage was felt, and only so: as retryable errors, or as an append
    # held until a new leader took it (the client waits through a short
    # election: CI once saw no error and a 5 s append). Appends take
    # milliseconds otherwise, so a second marks an append that spanned it.
    assert run.errors or run.slowest_s > OUTAGE_S, (
        f"no producer saw the node's death: {run.summary()}"
    )
    assert set(run.errors) <= {"Unavailable", "Timeout"}, run.summary()


def test_leader_killed_during_consumption(nats_cluster: NatsCluster) -> None:
    with log_or_skip(log_url(nats_cluster)) as log:
        log.create_topic(TOPIC, partitions=3, exist_ok=True)
        assert_replicated(nats_cluster)
        run = LogRun(log)
        producer = log.producer("before")
        for n in range(RECORDS_BEFORE):
            value = f"before:{n}".encode()
            position = producer.append(TOPIC, value, key=b"k%d" % (n % 7), sequence=n)
            run.acked[value] = (position.partition, position.offset)

        done = threading.Event()
        consumer = threading.Thread(
            target=consume_until,
            args=(run, done.is_set),
            kwargs={"records_max": 20, "pause_s": 0.05},  # slow: the kill lands mid-way
            daemon=True,
        )
        consumer.start()
        deadline = time.monotonic() + 30
        while sum(run.consumed.values()) < RECORDS_BEFORE // 4:  # mid-way
            assert time.monotonic() < deadline, f"the consumer is stuck: {run.summary()}"
            time.sleep(0.01)
        kill_and_restart(nats_cluster)
        done.set()
        consumer.join(90)
        assert not consumer.is_alive(), f"the consumer hung: {run.summary()}"
        print(run.summary())
        run.assert_no_loss_no_duplicates(consumed=True)
    assert set(run.consumer_errors) <= {"Unavailable", "Timeout"}, run.summary()
