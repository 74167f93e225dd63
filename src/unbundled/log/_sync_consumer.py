"""``Consumer``, the log's synchronous consumer (see :meth:`unbundled.Log.consumer`):
the sans-I/O ``ConsumerCore`` driven by blocking backend calls."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

from ._base import LogBase
from ._consumer import ConsumerCore, run_sync
from ._protocol import OffsetCommit, Record, TopicPartition


class Consumer:
    """Reads records from a log's topics; see :meth:`Log.consumer`.

    ``poll()`` returns the next records (waiting up to ``timeout_s``); iterate
    the consumer to get records one by one forever. Close it (or use ``with``)
    to commit and leave the group at once rather than after the lease.
    """

    def __init__(self, log: LogBase, core: ConsumerCore) -> None:
        self._log = log
        self._core = core

    @property
    def group(self) -> str | None:
        """The consumer group this consumer belongs to, or ``None`` for one
        that reads on its own and commits nothing."""
        return self._core.group

    @property
    def member_id(self) -> str:
        """This consumer's id in its group: given, or made up when it was opened."""
        return self._core.member_id

    @property
    def instance_id(self) -> str | None:
        """The static member's instance id, or ``None`` for a dynamic member."""
        return self._core.instance_id

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def poll(self, timeout_s: float = 1.0, *, records_max: int = 500) -> list[Record]:
        """The next records of the assigned partitions, at most ``records_max``
        (1 to ``limits.poll_records_max``), in offset order per partition.
        Blocks (without spinning) until some arrive or ``timeout_s`` passes
        (``0``: does not wait; ``math.inf``: waits until records arrive); then
        returns ``[]``. ``UsageError`` for a ``timeout_s`` that is negative,
        NaN or not a number.

        A group member joins the group on its first poll and renews its lease
        (and takes part in rebalances) on each one, so poll at least once per
        ``lease_ms``. With auto-commit, each poll first commits what the
        previous polls returned (at-least-once). Raises ``Closed`` after
        :meth:`close`, ``InstanceFenced`` once a newer consumer took this
        static member's place, ``OffsetOutOfRange`` when a partition has no
        valid position and ``offset_reset`` is ``"none"``, ``TopicNotFound``
        when a topic of a consumer without a group is gone.
        """
        records: list[Record] = run_sync(self._log.backend, self._core.poll(timeout_s, records_max))
        return records

    def __iter__(self) -> Iterator[Record]:
        while not self._core.closed:
            yield from self.poll(1.0)

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit consumed positions now (or the given ones). Raises
        ``StaleGeneration`` if a partition was reassigned in the meantime."""
        run_sync(self._log.backend, self._core.commit(offsets))

    def offset_commit(self, offsets: dict[TopicPartition, int] | None = None) -> OffsetCommit:
        """The commit of everything consumed so far (or of ``offsets``), for
        ``Transaction.commit_offsets``."""
        return self._core.offset_commit(offsets)

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer may fetch now (a copy; empty before
        the first :meth:`poll`). A group member's set changes on rebalances."""
        return self._core.assignment()

    def position(self, tp: TopicPartition) -> int:
        """The next offset this consumer will fetch from ``tp``. Raises
        ``UsageError`` if ``tp`` is not assigned to it."""
        return self._core.position(TopicPartition(*tp))

    def positions(self) -> dict[TopicPartition, int]:
        """The next offset to fetch, per assigned partition (a copy)."""
        return dict(self._core.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` from ``offset`` on at the next :meth:`poll`. An offset
        outside the partition's stored range is reset there by
        ``offset_reset``. Commits nothing by itself. Raises ``UsageError`` if
        ``tp`` is not assigned to this consumer or ``offset`` is not an int >= 0."""
        self._core.seek(TopicPartition(*tp), offset)

    def close(self, *, leave: bool | None = None) -> None:
        """Commit (with auto-commit) and leave the group, handing the
        partitions to the others at once. A static member (``instance_id``)
        stays by default, so its restart takes its partitions back without a
        rebalance; pass ``leave=True`` when it is going away for good."""
        run_sync(self._log.backend, self._core.close(leave))
