"""``destroy`` on PostgreSQL: only a schema of ours, and only if nothing else
is in it or depends on it; a refusal drops nothing (one transaction).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.backends.postgres.conftest import drop_schema, server_url
from unbundled import Log, NotFound, UsageError
from unbundled.backends import destroy
from unbundled.idempotency import Idempotency

pytestmark = pytest.mark.postgres


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


def tables(schema: str) -> list[str]:
    with psycopg.connect(server_url()) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        ).fetchall()
    return [str(row[0]) for row in rows]


@pytest.fixture
def filled(pg_url: str) -> str:
    with Idempotency.open(pg_url) as idem:
        idem.call("pay-1", {"amount": 5}, lambda attempt: {"paid": 5})
    with Log.open(pg_url) as log:
        log.create_topic("payments")
        log.append("payments", b"paid 5")
    return pg_url


def still_holds_its_data(url: str) -> None:
    with Idempotency.open(url) as idem:
        record = idem.get("pay-1")
        assert record is not None and record.state == "completed"


def test_a_schema_without_our_meta_table_is_refused(pg_url: str) -> None:
    schema = schema_of(pg_url)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.events (id int)")
    with pytest.raises(UsageError, match="not an unbundled store"):
        destroy(pg_url, confirm=True)
    assert tables(schema) == ["events"]


def test_a_schema_with_tables_of_yours_is_refused(filled: str) -> None:
    schema = schema_of(filled)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.accounts (stream text, amount int)")
        conn.execute(f"CREATE VIEW {schema}.big_accounts AS SELECT * FROM {schema}.accounts")
    before = tables(schema)
    with pytest.raises(UsageError, match="table accounts, view big_accounts"):
        destroy(filled, confirm=True)
    assert tables(schema) == before
    still_holds_its_data(filled)


def test_an_object_elsewhere_depending_on_ours_rolls_it_all_back(filled: str) -> None:
    schema = schema_of(filled)
    other = f"{schema}_reports"
    try:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {other}")
            conn.execute(f"CREATE VIEW {other}.keys AS SELECT key FROM {schema}.idempotency")
        before = tables(schema)
        with pytest.raises(UsageError, match=r"depends on table .*idempotency") as refused:
            destroy(filled, confirm=True)
        assert "Nothing was dropped" in refused.value.message
        assert tables(schema) == before  # the tables dropped before it came back
        still_holds_its_data(filled)
    finally:
        drop_schema(other)


def test_a_missing_schema_is_not_found(pg_url: str) -> None:
    with pytest.raises(NotFound, match="no schema"):
        destroy(pg_url, dry_run=True)


def test_the_command_line_destroys_a_schema(filled: str) -> None:
    command = [str(Path(sys.executable).with_name("unbundled")), "destroy", filled]
    typed = schema_of(filled) + "\n"
    answer = subprocess.run(
        command, input=typed, capture_output=True, text=True, timeout=60, check=False
    )
    assert answer.returncode == 0, answer.stderr
    assert "Traceback" not in answer.stderr
    assert f"Type {schema_of(filled)} to destroy it" in answer.stderr
    assert "dropped the PostgreSQL schema" in answer.stdout
    assert "log_records" in answer.stdout  # the log's tables go too
    assert tables(schema_of(filled)) == []
