"""The event-store contract (``unbundled.testing.eventstore_contract``) on
every event-store backend here: memory and SQLite. The PostgreSQL backend
runs the same checks from its own test module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from unbundled.eventstore import EventStore
from unbundled.testing.eventstore_contract import Check, EventStoreTarget, all_checks

Clock = Callable[[], int]


def memory_target(tmp_path: Path) -> EventStoreTarget:
    return EventStoreTarget(
        "memory", lambda clock: EventStore.open("memory://", clock=clock), durable=False
    )


def sqlite_target(tmp_path: Path) -> EventStoreTarget:
    path = tmp_path / "events.db"

    def open_store(clock: Clock) -> EventStore:
        # sync="off": durability across power loss is the crash tests' job;
        # reopening still sees every commit.
        return EventStore.open(path, sync="off", clock=clock, maintenance_interval_s=None)

    return EventStoreTarget("sqlite", open_store, durable=True)


TARGETS = {"memory": memory_target, "sqlite": sqlite_target}
CASES = [
    pytest.param(name, check, id=f"{name}-{check.__name__.removeprefix('check_')}")
    for name in TARGETS
    for check in all_checks(durable=name != "memory")
]


@pytest.mark.parametrize(("backend", "check"), CASES)
def test_eventstore_contract(backend: str, check: Check, tmp_path: Path) -> None:
    check(TARGETS[backend](tmp_path))


def test_memory_skips_only_durable_checks() -> None:
    every = all_checks()
    volatile = all_checks(durable=False)
    assert set(volatile) < set(every)
    assert all(getattr(c, "durable_only", False) for c in set(every) - set(volatile))
