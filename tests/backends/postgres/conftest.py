"""Fixtures for the PostgreSQL tests: a fresh schema per test, dropped after.

The server is the real one (see /work/shared/services.md); without it these
tests skip, and with CI=true they fail (``tests.conftest.require_server``).
"""

from __future__ import annotations

import atexit
import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import require_server
from unbundled.backends.postgres import PostgresBackend
from unbundled.backends.postgres._destroy import OUR_TABLES
from unbundled.backends.postgres._schema import DDL, FORMAT_VERSION, application_name


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


# Schemas whose test ended, emptied, for this process's next tests: making
# one costs 0.2 s (two dozen tables and their catalog rows, fsynced), and
# emptying one 0.01 s; the contract suites (tests.matrix) open one per
# check. (``pg_url`` gives a name no schema has: some tests make it.)
_EMPTIED: list[str] = []
_OURS = sorted(OUR_TABLES)


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A schema no other test uses (maybe one an earlier test of this
    process used, emptied since); emptied or dropped when the block ends."""
    schema = _EMPTIED.pop() if _EMPTIED else f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield schema
    finally:
        _release(schema)


def _release(schema: str) -> None:
    """Empty ``schema`` for reuse if it holds our tables and nothing else;
    else drop it."""
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name(schema),),
        )
        relations = [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind NOT IN ('i', 't') ORDER BY 1",
                (schema,),
            )
        ]
        if not relations:  # the test dropped it (or never made it)
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            return
        if relations != _OURS:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            return
        s = f'"{schema}"'
        with conn.transaction():
            for table in _OURS:
                conn.execute(f"DELETE FROM {s}.{table}")
            conn.execute(DDL.format(s=s).encode())  # its rows of defaults again
            conn.execute(
                f"INSERT INTO {s}.meta VALUES ('format_version', %s)", (str(FORMAT_VERSION),)
            )
    _EMPTIED.append(schema)


@atexit.register
def _drop_emptied() -> None:
    while _EMPTIED:
        with contextlib.suppress(psycopg.Error):
            drop_schema(_EMPTIED.pop())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a schema that does not exist yet (some tests make it
    themselves); dropped when the test ends."""
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
