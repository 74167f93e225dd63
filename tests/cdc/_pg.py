"""A PostgreSQL source per test: its own schema and connector name, all dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import unbundled
from tests.conftest import CI, require_server
from unbundled.cdc import CDCProducer, ConnectorConfig, add_connector
from unbundled.cdc import _pg_admin as admin

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


@dataclass
class PgCase:
    schema: str
    connector: str
    db: unbundled.Database

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{name}"'

    def config(self, tables: list[str], **options: Any) -> ConnectorConfig:
        return ConnectorConfig(
            name=self.connector,
            source=PG_URL,
            tables=[f"{self.schema}.{t}" for t in tables],
            **options,
        )

    def add(self, tables: list[str], **options: Any) -> ConnectorConfig:
        return add_connector(self.db, self.config(tables, **options))

    def producer(self, config: ConnectorConfig) -> CDCProducer:
        return CDCProducer(self.db, config)

    def topic(self, table: str) -> str:
        return f"{self.connector}.{self.schema}.{table}"


def need_logical() -> None:
    require_server("postgres")
    level = pg("SHOW wal_level")[0][0]
    if level != "logical":
        message = "PostgreSQL's wal_level is not logical: run `python scripts/services.py ensure`"
        if CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)


def make_pg_case(tmp_path: Path) -> Iterator[PgCase]:
    need_logical()
    tag = uuid.uuid4().hex[:10]
    schema, connector = f"cdc_{tag}", f"t{tag}"
    pg(f'CREATE SCHEMA "{schema}"')
    db = unbundled.open(str(tmp_path / "log.db"), sync="normal")
    try:
        yield PgCase(schema, connector, db)
    finally:
        db.close()
        admin.drop_slot(PG_URL, connector)
        admin.drop_publication(PG_URL, connector)
        pg(f'DROP SCHEMA "{schema}" CASCADE')
