"""What every check of the log's contract uses: the target under test and the
helpers that drive it. Below both halves of the suite (:mod:`.contract`,
:mod:`.contract_groups`), so neither imports the other."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import Error
from ..log import Log, Record
from ..log._core import murmur2

Clock = Callable[[], int]
Check = Callable[["LogTarget"], None]
E = TypeVar("E", bound=Error)


@dataclass(frozen=True)
class LogTarget:
    """The backend under test, as the checks see it.

    ``open(clock)`` returns a :class:`Log` on the store under test, using
    ``clock`` for leases, retention and tombstone expiry. For a ``durable``
    target, opening again (after closing) reaches the same store and sees
    everything committed; checks that need that run only on durable targets.
    Every check gets a fresh, empty store.

    ``records_with_offsets`` says whether one transaction may append records
    and commit a consumer's offsets together (SQLite, PostgreSQL, memory).
    Where it cannot (NATS), the checks that need it are replaced by checks
    of the documented weaker behaviour: such a transaction is refused with
    ``NotSupported``, a fenced commit alone is refused, and outputs written
    through an idempotent producer land once when the work is redone
    (effectively-once).
    """

    name: str
    open: Callable[[Clock], Log]
    durable: bool
    records_with_offsets: bool = True


def durable_only(check: Check) -> Check:
    """Mark a check that needs a store that survives closing the log."""
    check.durable_only = True  # type: ignore[attr-defined]
    return check


def records_with_offsets(check: Check) -> Check:
    """Mark a check that needs records and offset commits in one transaction."""
    check.records_with_offsets = True  # type: ignore[attr-defined]
    return check


def without_records_with_offsets(check: Check) -> Check:
    """Mark a check of the weaker behaviour, run only where records and
    offset commits cannot share a transaction."""
    check.records_with_offsets = False  # type: ignore[attr-defined]
    return check


def raises(kind: type[E], call: Callable[[], object]) -> E:
    """Run ``call`` and return the ``kind`` error it must raise (exactly that family)."""
    try:
        call()
    except kind as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"expected {kind.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"expected {kind.__name__}, but nothing was raised")


def ends(log: Log, topic: str) -> dict[int, int]:
    return log.end_offsets(topic)


def read_all(log: Log, topic: str) -> list[Record]:
    """Every stored record of a topic, partition by partition."""
    out: list[Record] = []
    for p in log.describe_topic(topic).partitions:
        out.extend(log.scan(topic, p.partition, p.start_offset))
    return out


def run_threads(target_fn: Callable[[int], None], count: int) -> None:
    """Run ``target_fn(n)`` for n in 0..count-1 on threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target_fn(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def poll_until(consumer: Any, count: int, rounds: int = 100) -> list[Record]:
    """Poll until ``count`` records arrived (bounded; asserts on shortfall)."""
    got: list[Record] = []
    for _ in range(rounds):
        got.extend(consumer.poll(0.02))
        if len(got) >= count:
            return got
    raise AssertionError(f"expected {count} records, got {len(got)}")


def kafka_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: ``toPositive(murmur2(key)) % partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
