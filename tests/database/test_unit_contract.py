"""The unit of work's contract (``unbundled.testing.unit_contract``) on every
backend of the matrix with transactions (``tests/matrix.py``): memory (the
specification), SQLite and PostgreSQL (a fresh schema per check; fails in CI
without the server). Each target says which parts its backend commits
together; the checks assert ``NotSupported`` for the others."""

from __future__ import annotations

from pathlib import Path

import pytest

import unbundled
from tests import matrix
from unbundled.database import Database
from unbundled.testing import SimClock
from unbundled.testing.unit_contract import CHECKS, Check, Deposited, UnitTarget
from unbundled.transaction import _unit

# sync="off" on SQLite: surviving power loss is the crash tests' job.
_OPTIONS: dict[str, dict[str, object]] = {
    "memory": {},
    "sqlite": {"sync": "off", "maintenance_interval_s": None},
    "postgres": {"sync": "normal"},
}
# What each backend commits in one transaction (its unit_parts).
_PARTS = {
    "memory": frozenset(_unit.PARTS) - {_unit.SQL},
    "sqlite": frozenset(_unit.PARTS),
    "postgres": frozenset(_unit.PARTS),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("backend", matrix.params(matrix.TRANSACTIONS))
def test_unit_contract(backend: str, check: Check, tmp_path: Path) -> None:
    with matrix.isolated(backend, tmp_path, "unit") as url:

        def open_db(clock: SimClock) -> Database:
            options = _OPTIONS[backend]
            return unbundled.open(url, clock=clock, events=[Deposited], **options)  # type: ignore[arg-type]

        check(UnitTarget(backend, open_db, _PARTS[backend], durable=backend != "memory"))


def test_the_parts_agree_with_the_backends() -> None:
    """The table above is what the backends declare (``unit_parts``)."""
    from unbundled.backends import MemoryBackend, SqliteBackend
    from unbundled.backends.postgres import PostgresBackend

    declared = {
        "memory": MemoryBackend.unit_parts,
        "sqlite": SqliteBackend.unit_parts,
        "postgres": PostgresBackend.unit_parts,
    }
    assert declared == _PARTS
    assert set(_PARTS) == set(matrix.backends(matrix.TRANSACTIONS))
