"""A consumer-group member for the tests across namespaces: consumes topic
``in`` in group ``across`` and, per poll, appends each record's value to
topic ``out`` and commits its offsets in one transaction (exactly-once where
the backend commits both together). Reports JSON lines: ``{"assigned": k}``
when its partitions change, ``{"done": n}``
records processed, ``{"fenced": "StaleGeneration"}`` when a commit is
rejected (it then rejoins with a new consumer), ``{"error": "Unavailable"}``
when the database cannot be reached (it then rejoins too, from the committed
offsets: the failed poll's records may not have been committed).

``python -m tests.cluster._groupworker URL LEASE_MS``
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from unbundled import Log
from unbundled.errors import BackendError, Fenced

GROUP = "across"
SOURCE = "in"
TARGET = "out"


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    url, lease_ms = sys.argv[1], int(sys.argv[2])
    log: Log | None = None
    consumer = None
    assigned: set[object] = set()
    while True:
        try:
            if log is None:
                log = Log.open(url)
            if consumer is None:
                consumer = log.consumer(SOURCE, group=GROUP, lease_ms=lease_ms, auto_commit=False)
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
            time.sleep(0.2)


if __name__ == "__main__":
    main()
