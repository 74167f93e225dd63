"""The idempotency contract (``unbundled.testing.idempotency_contract``) on
memory and SQLite. The Redis and PostgreSQL backends run the same checks
from their own test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from unbundled.idempotency import Idempotency
from unbundled.testing import SimClock
from unbundled.testing.idempotency_contract import Check, IdempotencyTarget, all_checks


def memory_target(tmp_path: Path) -> IdempotencyTarget:
    def open_memory(clock: SimClock | None) -> Idempotency:
        assert clock is not None
        return Idempotency.open("memory://", clock=clock)

    return IdempotencyTarget("memory", open_memory, sim_clock=True, effects=frozenset({"events"}))


def sqlite_target(tmp_path: Path) -> IdempotencyTarget:
    def open_sqlite(clock: SimClock | None) -> Idempotency:
        assert clock is not None
        # sync="off": durability across crashes is the crash tests' job.
        return Idempotency.open(
            tmp_path / "idem.db", sync="off", clock=clock, maintenance_interval_s=None
        )

    return IdempotencyTarget(
        "sqlite", open_sqlite, sim_clock=True, effects=frozenset({"events", "sql"})
    )


def sqlite_real_clock_target(tmp_path: Path) -> IdempotencyTarget:
    """SQLite on the wall clock: runs the real-clock variants server backends use."""

    def open_sqlite(clock: SimClock | None) -> Idempotency:
        assert clock is None
        return Idempotency.open(tmp_path / "idem.db", sync="off", maintenance_interval_s=None)

    return IdempotencyTarget(
        "sqlite-wallclock", open_sqlite, sim_clock=False, effects=frozenset({"events", "sql"})
    )


TARGETS = {"memory": memory_target, "sqlite": sqlite_target}
CASES = [
    pytest.param(name, check, id=f"{name}-{check.__name__.removeprefix('check_')}")
    for name in TARGETS
    for check in all_checks()
]


@pytest.mark.parametrize(("backend", "check"), CASES)
def test_idempotency_contract(backend: str, check: Check, tmp_path: Path) -> None:
    check(TARGETS[backend](tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract_on_the_wall_clock(check: Check, tmp_path: Path) -> None:
    check(sqlite_real_clock_target(tmp_path))
