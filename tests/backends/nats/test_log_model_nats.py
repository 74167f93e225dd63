"""Model-based test: the log on NATS JetStream must behave like the memory log.

The machines of ``tests/log/test_log_model.py`` (topics, appends,
idempotent producers, transactions, reads, retention and compaction,
consumer groups, reopening), with the real log on a fresh JetStream bucket
instead of a SQLite file. One rule differs, as documented (N3 in
docs/explanation/log.md): a transaction that appends and commits offsets
must be refused with ``NotSupported`` on NATS and leave nothing, so it is
not run on the model. Fewer and shorter runs than SQLite's: every step is
several network round trips.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from tests.backends.nats._nats import bucket_url, delete_bucket, fresh_bucket, server
from tests.log.test_log_model import (
    GROUPS,
    TOPICS,
    LogComparison,
    LogPair,
    RetentionComparison,
    outcome,
)
from unbundled import Log, TopicPartition
from unbundled._waiters import SyncWaiter
from unbundled.backends.nats import NatsBackend
from unbundled.log._protocol import AppendItem, OffsetCommit, WriteBatch

pytestmark = pytest.mark.nats
# Refused before anything is sent: the shape, a topic or partition that is
# not there, or what the facade refuses before submitting.
REFUSALS = ("NotSupported", "TopicNotFound", "PartitionNotFound", "UsageError")


class OnNats(LogPair):
    """The real log on a bucket of its own, deleted at teardown."""

    def _open_real(self) -> Log:
        if not hasattr(self, "bucket"):
            server()  # skip (or fail with CI=true) without the server
            self.bucket = fresh_bucket("test_model")
        return Log(NatsBackend(bucket_url(self.bucket), clock=self.clock))

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            delete_bucket(self.bucket)


class NatsLogComparison(OnNats, LogComparison):
    @rule(
        data=st.data(),
        topics=st.lists(st.sampled_from(TOPICS), max_size=4),
        group=st.sampled_from(GROUPS),
        offsets=st.dictionaries(
            st.tuples(st.sampled_from(TOPICS), st.integers(0, 2)), st.integers(0, 9), max_size=2
        ),
        end=st.sampled_from(["commit", "raise", "abort"]),
        with_producer=st.booleans(),
    )
    def transaction(
        self,
        data: st.DataObject,
        topics: list[str],
        group: str,
        offsets: dict[tuple[str, int], int],
        end: str,
        with_producer: bool,
    ) -> None:
        if not (topics and offsets and end == "commit"):
            LogComparison.transaction(self, data, topics, group, offsets, end, with_producer)
            return
        # Records and offsets together: refused on NATS, run on NATS alone.
        before = outcome(lambda: self.real.backend.committed(group))

        def run(log: Log) -> Any:
            with log.transaction() as tx:
                for topic in topics:
                    tx.append(topic, b"x", partition=0)
                tx.commit_offsets(
                    group=group, offsets={TopicPartition(t, p): o for (t, p), o in offsets.items()}
                )

        refused = outcome(lambda: run(self.real))
        assert refused[0] == "error" and refused[1][0] in REFUSALS, refused
        assert outcome(lambda: self.real.backend.committed(group)) == before
        # Keep the keyless round-robin in step: the model appended nothing.
        self.real._partitioner._next = self.model._partitioner._next

    @rule(
        data=st.data(),
        group=st.sampled_from(GROUPS),
        offset=st.integers(0, 9),
        stale=st.integers(0, 3).map(lambda n: n == 0),
        append=st.one_of(st.none(), st.sampled_from(TOPICS)),
    )
    def commit(
        self, data: st.DataObject, group: str, offset: int, stale: bool, append: str | None
    ) -> None:
        if append is None:
            LogComparison.commit(self, data, group, offset, stale, append)
            return
        # A commit in one batch with an append: refused on NATS, writes nothing.
        commit = OffsetCommit(group, "m1", {TopicPartition("a", 0): offset}, {})
        item = AppendItem(0, b"k1", b"committed", (), self.clock())
        waiter = SyncWaiter()
        before = outcome(lambda: self.real.backend.committed(group))
        self.real.backend.submit(WriteBatch({append: [item]}, (commit,)), waiter)
        refused = outcome(waiter.wait)
        assert refused[0] == "error" and refused[1][0] == "NotSupported", refused
        assert outcome(lambda: self.real.backend.committed(group)) == before


class NatsRetentionComparison(OnNats, RetentionComparison):
    pass


# Shrinking a failure costs thousands of steps of network round trips (and
# blew the test timeout): a failure is reported as found, every step listed.
NO_SHRINKING = [Phase.explicit, Phase.reuse, Phase.generate]

TestNatsLogModel = NatsLogComparison.TestCase
TestNatsLogModel.settings = settings(
    max_examples=6,
    stateful_step_count=25,
    deadline=None,
    phases=NO_SHRINKING,
    suppress_health_check=[HealthCheck.too_slow],
)

TestNatsRetentionModel = NatsRetentionComparison.TestCase
TestNatsRetentionModel.settings = settings(
    max_examples=10,
    stateful_step_count=25,
    deadline=None,
    phases=NO_SHRINKING,
    suppress_health_check=[HealthCheck.too_slow],
)
