"""Fixtures of the CDC tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cdc._pg import PgCase, make_pg_case


@pytest.fixture
def pg_case(tmp_path: Path) -> Iterator[PgCase]:
    """A PostgreSQL schema and connector name of this test's own, dropped after it."""
    yield from make_pg_case(tmp_path)
