"""Idempotent producers: the sequence bookkeeping both twins share, without
I/O (``Producer`` is in :mod:`.api`, ``AsyncProducer`` in :mod:`.aio`).

Resuming after a restart (docs/how-to/exactly-once.md): number the input and
use the number as the sequence. The log stores a producer's last sequence in
the same transaction as its records, so ``last_sequence`` after reopening is
exactly how far the input got; skip up to it and send the rest. That works
for any amount of input, unlike re-sending everything, which the log can
answer with the original positions only for the last
``limits.producer_window_requests_max`` requests (Kafka keeps five).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _core
from ._protocol import ProducerStamp

if TYPE_CHECKING:
    pass


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
