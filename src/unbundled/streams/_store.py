"""Where a flow's state lives and how outputs are encoded: KV keys, restore, heartbeats.

State keys: ``streams/<flow>/<partition>/m`` (the manifest) and
``streams/<flow>/<partition>/<operator>/<bucket>`` for the source's segment;
a downstream segment's are under ``streams/<flow>/by-<n>/<partition>/...``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec

from ..errors import CorruptionError, NotFound, UsageError
from ..log._protocol import Headers, Message, TopicPartition
from ._flow import Flow
from ._ops import TIME_HEADER, TIME_KEY
from ._task import Manifest, Task, _check_ts

_json = msgspec.json.Encoder()


def group_name(flow: Flow | str, segment: int = 0) -> str:
    """The consumer group of a flow's segment."""
    name = flow if isinstance(flow, str) else flow.name
    return f"streams.{name}" if segment == 0 else f"streams.{name}.by-{segment}"


def _prefix(flow_name: str, partition: int, segment: int) -> str:
    if segment == 0:
        return f"streams/{flow_name}/{partition}"
    return f"streams/{flow_name}/by-{segment}/{partition}"


def manifest_key(flow_name: str, partition: int, segment: int = 0) -> str:
    return f"{_prefix(flow_name, partition, segment)}/m"


def bucket_key(flow_name: str, partition: int, node_id: int, bucket: int, segment: int = 0) -> str:
    return f"{_prefix(flow_name, partition, segment)}/{node_id}/{bucket}"


def late_topic(flow: Flow) -> str:
    return f"{flow.name}.late"


def dead_topic(flow: Flow) -> str:
    return f"{flow.name}.dead"


def late_value(source_decode: Any, value: Any) -> bytes | None:
    """A late event's record value: the source's value as the source read it
    (bytes for a ``"raw"`` source, else JSON). Sinks encode their own values
    (``_ops.sink_encoder``)."""
    return value if source_decode == "raw" else _json.encode(value)


def restore(db: Any, flow: Flow, partition: int, segment: int = 0, sources: int = 1) -> Task | None:
    """The task of ``partition`` as its last epoch stored it (None: no state yet)."""
    task = Task(flow, partition, segment, sources)
    got = db.kv.read(manifest_key(flow.name, partition, segment))
    if got is None:
        return None
    where = _prefix(flow.name, partition, segment)
    manifest = Task.read_manifest(got.value, where)
    blobs = {}
    for node_id, bucket in manifest.stored:
        blob = db.kv.read(bucket_key(flow.name, partition, node_id, bucket, segment))
        if blob is None:
            raise CorruptionError(
                f"stream state {where}: bucket {node_id}/{bucket} named by the manifest is missing"
            )
        blobs[(node_id, bucket)] = blob.value
    task.load(manifest, blobs, where)
    return task


def read_manifest(db: Any, flow_name: str, partition: int, segment: int = 0) -> Manifest | None:
    """A task's stored progress (None: it has committed no epoch)."""
    got = db.kv.read(manifest_key(flow_name, partition, segment))
    where = _prefix(flow_name, partition, segment)
    return None if got is None else Task.read_manifest(got.value, where)


def heartbeat(
    log: Any, topic: str, now_ms: int | None = None, *, partitions: Iterable[int] | None = None
) -> None:
    """Write a heartbeat record of event time ``now_ms`` (default: the
    wall clock) into every partition of ``topic`` (or ``partitions``): each
    partition's watermark moves as if an event of that time had arrived, so
    windows of idle partitions close. Being in the log, it replays identically."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        _check_ts(ms)
    except ValueError as exc:
        raise UsageError(str(exc), value=now_ms) from None
    n = len(log.describe_topic(topic).partitions)
    targets = range(n) if partitions is None else sorted(set(partitions))
    for p in targets:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < n:
            raise UsageError(f"topic {topic!r} has partitions 0..{n - 1}, not {p!r}", value=p)
    header: Headers = ((TIME_HEADER, str(ms).encode()),)
    # Keyed, so compacted topics (tables) take it; compaction keeps the newest.
    log.append_batch(topic, [Message(b"", TIME_KEY, header, ms, p) for p in targets])


def segments(db: Any, flow_name: str) -> list[int]:
    """The segments of flow ``flow_name`` as its topics show them: 0, and the
    ``n`` of each repartition topic ``<flow>.by-<n>``."""
    prefix = f"{flow_name}.by-"
    found = [t[len(prefix) :] for t in db.log.topics() if t.startswith(prefix)]
    return [0, *sorted(int(n) for n in found if n.isdigit())]


def reset(db: Any, flow_name: str) -> tuple[int, int]:
    """Forget flow ``flow_name``'s progress in one transaction: delete every
    segment's state (manifests and buckets); rewind the source's group to the
    start of each partition and move the repartition topics' groups to their
    end (what is there is superseded by the rerun's records). Returns
    (state keys deleted, partitions moved). Workers must be stopped first."""
    deleted = moved = 0
    with db.transaction() as tx:
        for g in segments(db, flow_name):
            group = group_name(flow_name, g)
            try:
                lag = db.log.lag(group)
            except NotFound:
                continue
            offsets: dict[TopicPartition, int] = {}
            for tp, (_committed, end, _lag) in lag.items():
                manifest = read_manifest(db, flow_name, tp.partition, g)
                if manifest is not None:
                    for node_id, bucket in manifest.stored:
                        tx.kv.delete(bucket_key(flow_name, tp.partition, node_id, bucket, g))
                    tx.kv.delete(manifest_key(flow_name, tp.partition, g))
                    deleted += 1 + len(manifest.stored)
                if g == 0:
                    info = db.log.describe_topic(tp.topic).partitions[tp.partition]
                    offsets[tp] = info.start_offset
                else:
                    offsets[tp] = end
            if offsets:
                tx.commit_offsets(group=group, offsets=offsets)
                moved += len(offsets)
    return deleted, moved
