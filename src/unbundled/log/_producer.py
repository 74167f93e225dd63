"""Idempotent producers: the sequence bookkeeping both twins share, and the
synchronous ``Producer`` (``AsyncProducer`` is in :mod:`.aio`).

Resuming after a restart (docs/how-to/exactly-once.md): number the input and
use the number as the sequence. The log stores a producer's last sequence in
the same transaction as its records, so ``last_sequence`` after reopening is
exactly how far the input got; skip up to it and send the rest. That works
for any amount of input, unlike re-sending everything, which the log can
answer with the original positions only for the last
``limits.producer_window_requests_max`` requests (Kafka keeps five).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._ground.waiters import SyncWaiter
from . import _core
from ._protocol import Headers, Message, Position, ProducerStamp, WriteBatch

if TYPE_CHECKING:
    from .api import Log


class ProducerCore:
    """Sequence numbers of one producer incarnation; no I/O, no locking.

    ``last_sequence`` is the highest sequence known to be written under this
    producer id: the one the log reported when the producer was opened,
    raised by every append of this incarnation that succeeded.
    """

    def __init__(self, producer_id: str, epoch: int, last_sequence: int) -> None:
        self.producer_id = producer_id
        self.epoch = epoch
        self.last_sequence = last_sequence
        self.next = last_sequence + 1

    def stamp(self, sequence: int | None = None) -> ProducerStamp:
        """The stamp of the next request: ``sequence``, or one above the last used."""
        sequence = self.next if sequence is None else _core.check_offset("sequence", sequence)
        self.next = max(self.next, sequence + 1)
        return ProducerStamp(self.producer_id, self.epoch, sequence)

    def written(self, stamp: ProducerStamp) -> None:
        """Record that the request stamped ``stamp`` is durable (or was already)."""
        self.last_sequence = max(self.last_sequence, stamp.sequence)


class Producer:
    """An idempotent producer: every append carries ``(producer_id, sequence)``
    and the log writes each sequence at most once, so a retry after an unknown
    outcome (a crash, a timeout) cannot duplicate a record.

    Opening a producer starts a new *epoch* and fences older instances with the
    same id (``ProducerFenced``). Sequences grow by one per call unless given:
    pass your own (say, the number of the input line) and, after a restart,
    skip the input up to :attr:`last_sequence`. Sequences must increase but
    may skip. A retry of one of the last 64 requests returns its original
    positions; an older sequence raises ``OutOfOrderSequence``.
    """

    def __init__(self, log: Log, producer_id: str) -> None:
        self._log = log
        self.producer_id = _core.check_producer_id(producer_id)
        epoch, last_sequence = log.backend.init_producer(self.producer_id)
        self._core = ProducerCore(self.producer_id, epoch, last_sequence)
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        """This incarnation's epoch; opening the id again fences this one."""
        return self._core.epoch

    @property
    def last_sequence(self) -> int:
        """The highest sequence written durably under this producer id, ``-1``
        if none: the log's value when this producer was opened (also after a
        crash: it commits with the records), raised by each append that
        returned. Resume a numbered input after it."""
        return self._core.last_sequence

    def stamp(self, sequence: int | None = None) -> ProducerStamp:
        """Take the next sequence number (or ``sequence``) without writing."""
        with self._lock:
            return self._core.stamp(sequence)

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
        sequence: int | None = None,
    ) -> Position:
        """Append one record as the next sequence number (or
        ``sequence``) and return its position, once durable; see
        :meth:`Log.append <unbundled.Log.append>` for the arguments. Safe to retry
        after an unknown outcome with the same ``sequence``: a retry of one of the
        last ``limits.producer_window_requests_max`` requests writes nothing and
        returns the original position. Raises ``ProducerFenced`` once the producer id
        was opened again, ``OutOfOrderSequence`` for an older sequence (nothing
        written), and what :meth:`Log.append <unbundled.Log.append>` raises."""
        message = self._log._one(value, key, headers, timestamp, partition)
        return self.append_batch(topic, (message,), sequence=sequence)[0]

    def append_batch(
        self, topic: str, messages: Iterable[bytes | Message], *, sequence: int | None = None
    ) -> list[Position]:
        """Append atomically as one sequence number; a retry returns the original positions."""
        log = self._log
        config = log._config(topic)
        items = log._items(topic, config, messages)
        return self._write(
            WriteBatch({topic: items}, (), None, {topic: config.partitions}), sequence
        )

    def _write(self, batch: WriteBatch, sequence: int | None = None) -> list[Position]:
        """Stamp ``batch``, write it, wait until it is durable."""
        log = self._log
        # Take the sequence and enqueue under one lock, so the writer sees
        # sequences in order even when threads share this producer; and never
        # commit inline under it (the other threads would wait out the commit
        # instead of batching with it).
        with self._lock:
            stamp = self._core.stamp(sequence)
            waiter = SyncWaiter(inline=False)
            log._check_open()
            log.backend.submit(batch._replace(producer=stamp), waiter)
        positions = log._wait(waiter)
        with self._lock:  # threads finishing out of order must not lower it
            self._core.written(stamp)
        return positions
