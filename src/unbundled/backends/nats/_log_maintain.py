"""Retention and compaction of the log on NATS, by the records' timestamps
and the backend's clock (as on the other backends), not by JetStream's
``max_age``, which would use the server's clock and arrival times.

A ``delete`` partition is purged below its new start (``purge`` keeps
sequences at and above the one given, so offsets are never reused); a
``compact`` one loses each compacted record by ``delete`` of its message,
which leaves the gaps reads skip. Both are safe to run from several
processes at once: a purge repeated changes nothing, and a message another
process deleted first is not an error.
"""

from __future__ import annotations

from nats.js import errors as js_errors

from ...log import _core
from ...log._protocol import MaintenanceReport
from ._log import NatsLogRecords
from ._log_meta import TopicEntry, stream_name

DELETED_ALREADY_CODE = 10057  # deleting a message that is not there


class NatsLogMaintenance(NatsLogRecords):
    """``maintain`` of :class:`~unbundled.backends.nats.NatsBackend`."""

    def maintain(self) -> MaintenanceReport:
        """Apply retention and compaction now (see the module docstring)."""

        async def maintain() -> MaintenanceReport:
            catalog = await self._load_catalog()
            now = self.clock()
            removed: dict[str, int] = {}
            for name, entry in catalog.topics.items():
                count = 0
                for p in range(entry.config.partitions):
                    count += await self._maintain_partition(name, entry, p, now)
                if count:
                    removed[name] = count
            if removed:
                await self._announce()
            return MaintenanceReport(removed)

        result: MaintenanceReport = self._run(maintain, "maintenance", long=True)
        return result

    async def _maintain_partition(
        self, name: str, entry: TopicEntry, partition: int, now: int
    ) -> int:
        config = entry.config
        start, end, _ = await self._bounds(entry, partition)
        records = await self._scan(name, entry, partition, start, end, None, None)
        stream = stream_name(self.bucket, entry.incarnation, partition)
        if config.cleanup_policy == "compact":
            entries = [(r.offset, r.key, r.value is None, r.timestamp) for r in records]
            victims = _core.compaction_victims(entries, config, now)
            removed = 0
            for offset in victims:
                try:
                    await self._js.delete_msg(stream, offset + 1)
                    removed += 1
                except js_errors.APIError as exc:
                    # Another process's maintenance removed it first.
                    if exc.err_code != DELETED_ALREADY_CODE:
                        raise
            return removed
        sizes = [(r.offset, r.timestamp, _core.payload_size(r.key, r.value)) for r in records]
        new_start = _core.retention_start(sizes, end, config, now, sum(s for *_, s in sizes))
        gone = sum(1 for r in records if r.offset < new_start)
        if gone:
            # purge keeps sequences at and above seq: offsets are never reused.
            await self._js.purge_stream(stream, seq=new_start + 1)
        return gone
