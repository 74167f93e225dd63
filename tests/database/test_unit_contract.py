"""The unit of work's contract (``unbundled.testing.unit_contract``) on every
backend that has transactions: memory (the specification), SQLite and
PostgreSQL (a fresh schema per test; fails in CI without the server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

import unbundled
from unbundled.database import Database
from unbundled.testing import SimClock
from unbundled.testing.unit_contract import CHECKS, Check, Deposited, UnitTarget
from unbundled.transaction import _unit

_ALL = frozenset(_unit.PARTS)


def _memory(tmp_path: Path) -> Generator[UnitTarget, None, None]:
    # One memory backend for the whole check: "reopen" is the same object.
    def open_memory(clock: SimClock) -> Database:
        return unbundled.open("memory://", clock=clock, events=[Deposited])

    yield UnitTarget("memory", open_memory, _ALL - {_unit.SQL}, durable=False)


def _sqlite(tmp_path: Path) -> Generator[UnitTarget, None, None]:
    def open_sqlite(clock: SimClock) -> Database:
        return unbundled.open(
            tmp_path / "unit.db",
            sync="off",
            clock=clock,
            events=[Deposited],
            maintenance_interval_s=None,
        )

    yield UnitTarget("sqlite", open_sqlite, _ALL)


def _postgres(tmp_path: Path) -> Generator[UnitTarget, None, None]:
    from tests.postgres.conftest import drop_schema, server_url

    schema = f"test_{uuid.uuid4().hex[:16]}"
    url = f"{server_url()}?schema={schema}"

    def open_pg(clock: SimClock) -> Database:
        return unbundled.open(url, sync="normal", clock=clock, events=[Deposited])

    try:
        yield UnitTarget(
            "postgres", open_pg, frozenset({_unit.EVENTS, _unit.IDEMPOTENCY, _unit.KV, _unit.SQL})
        )
    finally:
        drop_schema(schema)


TARGETS: dict[str, Callable[[Path], Generator[UnitTarget, None, None]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("backend", list(TARGETS))
def test_unit_contract(backend: str, check: Check, tmp_path: Path) -> None:
    targets = TARGETS[backend](tmp_path)
    target = next(targets)
    try:
        check(target)
    finally:
        targets.close()
