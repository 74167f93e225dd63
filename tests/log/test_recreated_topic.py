"""A Log caches topic configs; if another Log (or process) deletes a topic and
creates it again with another partition count, a stale append must be refused,
not written to the partition the old count chose."""

from __future__ import annotations

from pathlib import Path

import pytest

from unbundled import Log, PartitionNotFound
from unbundled.backends import MemoryBackend


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_append_partitioned_for_a_recreated_topic_is_refused(backend: str, tmp_path: Path) -> None:
    if backend == "memory":
        shared = MemoryBackend()
        stale, admin = Log(shared), Log(shared)
    else:
        stale, admin = Log.open(tmp_path / "log.db"), Log.open(tmp_path / "log.db")
    try:
        stale.create_topic("t", partitions=2)
        stale.append("t", b"before", key=b"k")  # caches partitions=2
        admin.delete_topic("t")
        admin.create_topic("t", partitions=5)
        with pytest.raises(PartitionNotFound, match="created again") as caught:
            stale.append("t", b"stale", key=b"k")
        assert caught.value.details["recreated"] is True
        assert sum(p.records for p in admin.describe_topic("t").partitions) == 0
        # The cache was dropped: the retry partitions for 5 and lands.
        position = stale.append("t", b"retried", key=b"k")
        assert [r.value for r in admin.read("t", position.partition)] == [b"retried"]
    finally:
        stale.close()
        admin.close()
