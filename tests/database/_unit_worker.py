"""The worker of the unit-of-work crash test (tests/database/test_unit_crash.py).

Run as ``python -m tests.database._unit_worker <db> <worker> <until>`` from
the repository root. Worker ``w`` handles the records of partition ``w`` of
topic ``in`` in order; for input ``n`` it claims the idempotency key
``cmd-w-n`` and then, in one transaction: appends event ``n`` to stream
``acc-w`` expecting version ``n - 1``, appends the outbox record ``w:n`` to
partition ``w`` of ``outbox``, completes the key with ``{"n": n, "input":
...}``, commits offset ``n + 1`` of ``in[w]`` for group ``g-w`` (a group
without members) and sets key ``count-w`` to ``n + 1`` by compare-and-set.

It starts where the committed offset says, after checking that a retry of
the last committed command gets the stored result (and so would append
nothing again). It reports on stdout, one ``write(2)`` per line, only after
the event is durable: ``resume <c>``, ``replayed <n>``, ``ack <n>``, then
``done`` when input ``until - 1`` is handled. An unexpected state or error
prints a traceback on stderr and exits with 3.
"""

from __future__ import annotations

import sys
from typing import Any

import unbundled
from tests.crash._children import exit_with_parent, guarded, say
from unbundled import NotFound, TopicPartition
from unbundled.database import Database
from unbundled.eventstore import Event

LEASE_MS = 300  # a killed worker's claimed key is taken over this soon after
CLAIM_WAIT_S = 30.0


class Counted(Event, frozen=True):
    """Input ``n`` of a worker was handled; ``input`` is the record's value."""

    n: int
    input: str


def key(worker: int, n: int) -> str:
    return f"cmd-{worker}-{n}"


def result(n: int, value: str) -> dict[str, Any]:
    return {"n": n, "input": value}


def committed(db: Database, worker: int) -> int:
    """The offset committed for ``in[worker]`` (0 before the first transaction)."""
    try:
        offsets = db.log.describe_group(f"g-{worker}").committed
    except NotFound:
        return 0
    return offsets.get(TopicPartition("in", worker), 0)


def open_db(path: str) -> Database:
    return unbundled.open(path, sync="full", events=[Counted], lease_ms=LEASE_MS)


def input_value(db: Database, worker: int, n: int) -> str:
    (record,) = db.log.read("in", worker, n, records_max=1)
    assert record.value is not None
    return record.value.decode()


def work(path: str, worker: int, until: int) -> None:
    with open_db(path) as db:
        start = committed(db, worker)
        say(f"resume {start}")
        if start > 0:
            # Exactly-once in effect: the retry of a committed command is
            # answered from its key, so it would write nothing again.
            n = start - 1
            retry = db.idempotency.attempt(key(worker, n), n)
            assert retry.replayed, f"cmd {n} is committed but its key is {retry.record}"
            assert retry.result == result(n, input_value(db, worker, n)), retry.result
            say(f"replayed {n}")
        for n in range(start, until):
            value = input_value(db, worker, n)
            attempt = db.idempotency.attempt(key(worker, n), n, wait_s=CLAIM_WAIT_S)
            assert not attempt.replayed, f"cmd {n} completed, yet offset {n} is not committed"
            with db.transaction() as tx:
                tx.append_events(f"acc-{worker}", [Counted(n=n, input=value)], n - 1)
                tx.append("outbox", f"{worker}:{n}".encode(), partition=worker)
                tx.complete(attempt, result(n, value))
                tx.commit_offsets(
                    group=f"g-{worker}", offsets={TopicPartition("in", worker): n + 1}
                )
                tx.kv.compare_and_set(
                    f"count-{worker}",
                    new=b"%d" % (n + 1),
                    expected_value=b"%d" % n if n else None,
                )
            say(f"ack {n}")
    say("done")


def main(argv: list[str]) -> None:
    exit_with_parent()
    path, worker, until = argv
    guarded(lambda: work(path, int(worker), int(until)))()


if __name__ == "__main__":
    main(sys.argv[1:])
