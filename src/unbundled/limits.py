"""Every bound in unbundled, in one place (TigerStyle: put a limit on everything).

Names read ``<thing>_<unit>_max``. Values that depend on each other are checked
against each other at import, so an inconsistent edit fails loudly at once.
"""

from __future__ import annotations

# Topics and partitions.
topic_name_bytes_max = 249  # Kafka's limit, so names move between the two.
partitions_max = 1024  # per topic; each partition is one table on SQLite.
topics_max = 10_000

# Records.
key_bytes_max = 64 * 1024
record_bytes_default = 1024 * 1024  # a topic's record_bytes_max unless set.
record_bytes_max = 64 * 1024 * 1024  # the largest record_bytes_max a topic may set.
header_count_max = 64
header_name_bytes_max = 256

# Appends.
batch_records_max = 100_000  # one append_batch call.
batch_bytes_max = 256 * 1024 * 1024  # one append_batch call.
commit_records_max = 200_000  # records the group-commit writer puts in one transaction.
commit_requests_max = 4096  # requests the group-commit writer puts in one transaction.

# Idempotent producers.
producer_id_bytes_max = 255
producer_window_requests_max = 64  # recent sequences remembered to answer retries.

# Consumer groups.
group_name_bytes_max = 255
member_id_bytes_max = 255
instance_id_bytes_max = 255  # a static member's stable name (Kafka's group.instance.id)
poll_records_max = 100_000
lease_ms_max = 3_600_000  # one hour.
lease_ms_min = 100

# Reads.
read_records_max = 100_000

# Event store.
stream_name_bytes_max = 1024
event_type_bytes_max = 255
event_bytes_max = 16 * 1024 * 1024  # data + metadata of one event
append_events_max = 10_000  # events of one stream in one append
read_events_max = 100_000

# Idempotency keys.
idempotency_key_chars_max = 255
# The HTTP middleware stores "<namespace>/<client's key>": a namespace this
# long still leaves a client 190 characters, room for any UUID or ULID.
idempotency_namespace_chars_max = 64
idempotency_result_bytes_max = 16 * 1024 * 1024
idempotency_lease_ms_default = 30_000
idempotency_retention_ms_default = 24 * 3600 * 1000

# Linearizable key-value store (consistency.kv).
kv_key_bytes_max = 1024
kv_value_bytes_max = 1024 * 1024  # etcd's request limit is 1.5 MiB: same order.

# Causally consistent replicated store (consistency.causal).
causal_replicas_max = 64  # replicas of one store: every update carries a vector this long.
causal_replica_id_bytes_max = 64
causal_key_bytes_max = 1024
causal_value_bytes_max = 1024 * 1024
causal_update_bytes_max = causal_value_bytes_max + 64 * 1024  # one update record in the log.
causal_pending_updates_max = 100_000  # received updates buffered until deliverable.
causal_read_records_max = 1000  # log records a replica reads per partition per pass.

# --- issue 9: every number a user sets has a bound (checked by ``_bounds``) ---
# Offsets, global positions, stream and key versions, producer sequences, and
# counts of them: what SQLite's INTEGER and PostgreSQL's bigint hold.
position_max = 2**63 - 1
timestamp_ms_max = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, as in Java's Instant.
retention_ms_max = 100 * 365 * 86_400_000  # a topic's retention_ms, tombstone_retention_ms.
retention_bytes_max = 2**50  # a topic's retention_bytes (per partition): 1 PiB.
read_bytes_max = 1 << 30  # one read call's bytes_max.
# Timeouts, waits, polling and maintenance intervals, budgets: a week. Within
# every clock API (poll(2) takes milliseconds in a C int).
wait_s_max = 7 * 86_400.0
idempotency_lease_ms_max = 24 * 3_600_000
idempotency_retention_ms_max = 366 * 86_400_000
idempotency_request_bytes_max = 256 * 1024 * 1024  # a request body the middleware buffers.
snapshot_every_events_max = 1_000_000
isolation_workers_max = 256
pool_size_max = 1000  # connections of one PostgreSQL backend.

# CDC (issue 11).
cdc_connector_chars_max = 64  # a connector's name (it names its triggers and slot).
cdc_tables_max = 1000  # tables one connector captures.
cdc_read_changes_max = 100_000  # change rows one changes() call returns.
cdc_busy_timeout_s_max = 600.0  # how long a SQLite source waits for the write lock.

# Stream processing (issue 12).
stream_window_ms_max = 366 * 86_400_000  # a window's size, slide, gap, offset; lateness bounds.
stream_windows_per_event_max = 1000  # hopping windows one event falls in (size / slide).
stream_count_window_max = 1_000_000  # events in one count window.
stream_epoch_records_max = 10_000_000  # input records between two epoch commits.
stream_nodes_max = 256  # operators in one flow.
stream_merge_items_max = 1_000_000  # items a repartition merge holds for a silent partition.
stream_name_chars_max = 64  # a flow's name (it names its consumer group and state keys).

assert record_bytes_default <= record_bytes_max
assert key_bytes_max < record_bytes_max
assert batch_records_max <= commit_records_max
assert lease_ms_min < lease_ms_max
assert idempotency_namespace_chars_max + 1 + 190 <= idempotency_key_chars_max
assert partitions_max * topics_max < 2**31
# An update's overhead: two vectors (deps, context) of replica ids and counters, and the key.
assert 2 * causal_replicas_max * (causal_replica_id_bytes_max + 9) + causal_key_bytes_max < (
    causal_update_bytes_max - causal_value_bytes_max
)
assert causal_update_bytes_max <= record_bytes_max
assert timestamp_ms_max + retention_ms_max < position_max  # "now - retention" stays in range
assert retention_bytes_max < position_max
assert wait_s_max * 1000 < 2**31 - 1
assert lease_ms_max < wait_s_max * 1000
assert lease_ms_min <= idempotency_lease_ms_default <= idempotency_lease_ms_max
assert idempotency_lease_ms_max <= idempotency_retention_ms_max
assert idempotency_retention_ms_default <= idempotency_retention_ms_max
assert read_records_max <= position_max and read_bytes_max >= record_bytes_max
assert cdc_busy_timeout_s_max <= wait_s_max

# Every bound above, computed so that a new one is exported without a second edit.
__all__ = [name for name in sorted(dir()) if not name.startswith("_") and name != "annotations"]
