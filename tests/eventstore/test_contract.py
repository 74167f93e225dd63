"""The event-store contract (``unbundled.testing.eventstore_contract``) on
every backend of the matrix that serves the event store (``tests/matrix.py``):
memory, SQLite, PostgreSQL (a fresh schema per check) and NATS JetStream (a
fresh bucket per check), where what needs a transaction over several
streams or documents is checked as its documented refusal
(``EventStoreTarget.transactions``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests import matrix
from unbundled.eventstore import EventStore
from unbundled.testing.eventstore_contract import Check, EventStoreTarget, all_checks

Clock = Callable[[], int]
# Durability beyond a reopen is the crash tests' job: sync="off" on SQLite,
# "normal" on PostgreSQL (surviving a server crash is the server's).
_OPTIONS: dict[str, dict[str, object]] = {
    "memory": {},
    "sqlite": {"sync": "off", "maintenance_interval_s": None},
    "postgres": {"sync": "normal"},
    "nats": {},
}
CASES = [
    pytest.param(
        param.values[0],
        check,
        id=f"{param.id}-{check.__name__.removeprefix('check_')}",
        marks=param.marks,
    )
    for param in matrix.params(matrix.EVENTS)
    for check in all_checks(durable=param.values[0] != "memory")
]


@pytest.mark.parametrize(("backend", "check"), CASES)
def test_eventstore_contract(backend: str, check: Check, tmp_path: Path) -> None:
    with matrix.isolated(backend, tmp_path, "events") as url:

        def open_store(clock: Clock) -> EventStore:
            return EventStore.open(url, clock=clock, **_OPTIONS[backend])  # type: ignore[arg-type]

        transactions = matrix.serves(backend, matrix.TRANSACTIONS)
        check(EventStoreTarget(backend, open_store, backend != "memory", transactions))
