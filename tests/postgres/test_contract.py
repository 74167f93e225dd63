"""The event-store contract (``unbundled.testing.eventstore_contract``) on
the PostgreSQL backend, each check in a fresh schema."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from unbundled.eventstore import EventStore
from unbundled.testing.eventstore_contract import Check, EventStoreTarget, all_checks

pytestmark = pytest.mark.postgres

Clock = Callable[[], int]


@pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__.removeprefix("check_"))
def test_eventstore_contract(check: Check, pg_url: str) -> None:
    def open_store(clock: Clock) -> EventStore:
        # sync="normal": reopening sees every commit; surviving a server
        # crash is PostgreSQL's job, not this suite's.
        return EventStore.open(pg_url, sync="normal", clock=clock)

    check(EventStoreTarget("postgres", open_store, durable=True))
