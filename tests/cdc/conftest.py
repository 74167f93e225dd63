"""Fixtures for the CDC tests against the real PostgreSQL (wal_level=logical).

Each test gets its own schema, publication and logical slot (all named after one
random id, so tests never share them) and they are dropped when it ends, pass or fail:
a slot left behind keeps WAL forever. Without the server the tests skip; with CI=true
they fail (``tests.conftest.require_server``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.cdc._pg import PgCase, make_pg_case
from tests.conftest import require_server


def server_url() -> str:
    host, port = require_server("postgres")
    return f"postgresql://postgres@{host}:{port}/test"


@dataclass
class Capture:
    """A schema whose every table a publication publishes, and a pgoutput slot."""

    conn: psycopg.Connection[tuple[object, ...]]  # autocommit, search_path = schema
    schema: str
    slot: str
    publication: str
    url: str

    def peek(
        self, proto: int = 1, *, streaming: bool = False, messages: bool = True
    ) -> list[tuple[str, int, bytes]]:
        """Every message the slot holds, as (lsn, xid, data), without consuming it."""
        options = ["proto_version", str(proto), "publication_names", self.publication]
        if messages:
            options += ["messages", "true"]
        if streaming:
            options += ["streaming", "on"]
        placeholders = ", ".join(["%s"] * len(options))
        rows = self.conn.execute(
            "SELECT lsn::text, xid::text::bigint, data FROM "
            f"pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {placeholders})",
            [self.slot, *options],
        ).fetchall()
        return [(str(lsn), int(str(xid)), bytes(data)) for lsn, xid, data in rows]  # type: ignore[call-overload]

    def writer(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute(f'SET search_path TO "{self.schema}"')
        return conn


@pytest.fixture
def capture() -> Iterator[Capture]:
    url = server_url()
    name = f"cdc_{uuid.uuid4().hex[:16]}"
    conn = psycopg.connect(url, autocommit=True)
    try:
        conn.execute(f'CREATE SCHEMA "{name}"')
        conn.execute(f'SET search_path TO "{name}"')
        conn.execute(f'CREATE PUBLICATION "{name}" FOR TABLES IN SCHEMA "{name}"')
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
        yield Capture(conn, name, name, name, url)
    finally:
        conn.close()
        with psycopg.connect(url, autocommit=True) as cleanup:
            cleanup.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                [name],
            )
            cleanup.execute(f'DROP PUBLICATION IF EXISTS "{name}"')
            cleanup.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def pg_case(tmp_path: Path) -> Iterator[PgCase]:
    """A PostgreSQL schema and connector name of this test's own, dropped after it."""
    yield from make_pg_case(tmp_path)
