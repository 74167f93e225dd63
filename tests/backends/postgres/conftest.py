"""Fixtures for the PostgreSQL tests: a fresh schema per test, dropped after.

The server is the real one (see /work/shared/services.md); without it these
tests skip, and with CI=true they fail (``tests.conftest.require_server``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import require_server
from unbundled.backends.postgres import PostgresBackend
from unbundled.backends.postgres._schema import application_name


def server_url() -> str:
    host, port = require_server("postgres")
    return f"postgresql://postgres@{host}:{port}/test"


def drop_schema(schema: str) -> None:
    with psycopg.connect(server_url(), autocommit=True) as conn:
        # Connections a failed test left behind must not keep the schema alive.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name(schema),),
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a schema no other test uses; dropped when the test ends."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    yield f"{server_url()}?schema={schema}"
    drop_schema(schema)


@pytest.fixture
def backend(pg_url: str) -> Iterator[PostgresBackend]:
    opened = PostgresBackend(pg_url, sync="normal")
    try:
        yield opened
    finally:
        opened.close()
