"""A consumer-group member for the tests across namespaces: consumes topic
``in`` in group ``across`` and writes each record's value to topic ``out``.

On PostgreSQL (exactly-once), per poll, it appends the values and commits
its offsets in one transaction. On NATS (``nats://``), which cannot commit
both together (docs/explanation/log.md, N3), it is effectively-once (N5):
each input partition's outputs go through an idempotent producer of their
own (``across-in-<partition>``), each record with its input offset as its
sequence, then the offsets are committed. Whoever owns the partition next
opens that producer again (fencing the old owner's: ``ProducerFenced``),
skips the records up to its ``last_sequence`` and appends the rest: a
record the old owner wrote but did not report (its publish landed, the
producer's document was not written) carries the same message id
(``<producer>:<offset>:0``), so JetStream drops it within its duplicate
window. A failed call (``Unavailable``/``Timeout``) is retried, the same
call with the same consumer and producer, until it succeeds or is fenced.

Reports JSON lines, each with ``"t"`` (its ``time.monotonic()``):
``{"assigned": k}`` when its partitions change (and a new consumer's first),
``{"done": n}`` records processed (on NATS ``"skipped"``: written before,
by ``last_sequence``; ``"generation"``: the oldest assignment it committed
under), ``{"fenced": "StaleGeneration"}`` (or ``ProducerFenced``)
when a write is rejected (it then rejoins with a new consumer),
``{"error": "Unavailable"}`` when the database cannot be reached (on
PostgreSQL it then rejoins too, from the committed offsets: the failed
poll's records may not have been committed; on NATS it retries, and
``"s"`` says how long the call took to fail).

``python -m tests.cluster._groupworker URL LEASE_MS``
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from unbundled import Log, Producer, Record, TopicPartition
from unbundled.errors import BackendError, Fenced

GROUP = "across"
SOURCE = "in"
TARGET = "out"
# Each NATS request's bound. nats-py pings every two minutes, so a cut-off
# connection is noticed by requests timing out, not by the client.
NATS_TIMEOUT_S = 1.0
RETRY_S = 0.2

P = ParamSpec("P")
T = TypeVar("T")


def report(**fields: object) -> None:
    # ``t``: when, on the clock the test reads too (one machine, one monotonic clock).
    print(json.dumps({**fields, "t": round(time.monotonic(), 3)}), flush=True)


def main() -> None:
    url, lease_ms = sys.argv[1], int(sys.argv[2])
    if url.startswith("nats://"):
        effectively_once(url, lease_ms)
    else:
        exactly_once(url, lease_ms)


def exactly_once(url: str, lease_ms: int) -> None:
    """Outputs and offsets in one transaction, per poll."""
    log: Log | None = None
    consumer = None
    assigned: set[TopicPartition] | None = None
    while True:
        try:
            if log is None:
                log = Log.open(url)
            if consumer is None:
                consumer = log.consumer(SOURCE, group=GROUP, lease_ms=lease_ms, auto_commit=False)
                assigned = None  # a new member reports its first assignment
            records = consumer.poll(0.5, records_max=10)
            if consumer.assignment() != assigned:
                assigned = set(consumer.assignment())
                report(assigned=len(assigned))
            if not records:
                continue
            with log.transaction() as tx:
                for record in records:
                    tx.append(TARGET, record.value, key=record.key)
                tx.commit_offsets(consumer)
            report(done=len(records))
        except Fenced as exc:
            report(fenced=type(exc).__name__)
            consumer = None  # rejoin: the records come again, to whoever owns them now
        except BackendError as exc:
            report(error=type(exc).__name__, retryable=exc.retryable)
            # The poll moved the consumer past the records it gave; the
            # transaction that failed may not have committed them. Start again
            # from the committed offsets (a new member; the old one's lease runs out).
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close(leave=False)
            consumer = None
            time.sleep(RETRY_S)


def retried(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``call(*args, **kwargs)`` until it does not raise ``BackendError``
    (``Fenced`` passes: a newer owner took over, so retrying is pointless)."""
    while True:
        started = time.monotonic()
        try:
            return call(*args, **kwargs)
        except BackendError as exc:
            waited_s = round(time.monotonic() - started, 3)
            report(error=type(exc).__name__, retryable=exc.retryable, s=waited_s)
            time.sleep(RETRY_S)


def effectively_once(url: str, lease_ms: int) -> None:
    """Outputs through a producer per input partition, numbered by offset;
    then the commit. Every step retried until it succeeds or is fenced."""
    log = retried(Log.open, url, timeout_s=NATS_TIMEOUT_S)
    while True:
        consumer = retried(log.consumer, SOURCE, group=GROUP, lease_ms=lease_ms, auto_commit=False)
        assigned: set[TopicPartition] | None = None  # a new member reports its first
        producers: dict[int, Producer] = {}
        try:
            while True:
                records = retried(consumer.poll, 0.5, records_max=10)
                if consumer.assignment() != assigned:
                    assigned = set(consumer.assignment())
                    report(assigned=len(assigned))
                    owned = {tp.partition for tp in assigned}
                    producers = {p: pr for p, pr in producers.items() if p in owned}
                if records:
                    skipped = write_once(log, producers, records)
                    commit = consumer.offset_commit()
                    retried(consumer.commit, commit.offsets)
                    # The oldest assignment it committed under: a stale
                    # member's would be older than the group's current one.
                    generation = min(commit.generations.values())
                    report(done=len(records), skipped=skipped, generation=generation)
        except Fenced as exc:
            report(fenced=type(exc).__name__)
            # Rejoin with a new consumer, from the committed offsets: the
            # fenced one's positions are past records it did not commit.
            with contextlib.suppress(Exception):
                consumer.close(leave=True)


def write_once(log: Log, producers: dict[int, Producer], records: list[Record]) -> int:
    """Append each record's value through its partition's producer, with its
    offset as the sequence; returns how many were skipped as already written."""
    skipped = 0
    for record in records:
        producer = producers.get(record.partition)
        if producer is None:  # opening it fences the partition's previous owner's
            name = f"{GROUP}-{SOURCE}-{record.partition}"
            producer = producers[record.partition] = retried(log.producer, name)
        if record.offset <= producer.last_sequence:
            skipped += 1  # written by a previous owner, which did not commit
            continue
        retried(producer.append, TARGET, record.value, key=record.key, sequence=record.offset)
    return skipped


if __name__ == "__main__":
    main()
