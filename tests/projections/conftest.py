"""A fresh event store on each backend: memory, SQLite, and PostgreSQL (the
real server: skipped without it, failing with CI=true)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from unbundled.eventstore import EventStore

from ._helpers import EVENTS


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield str(tmp_path / "events.db")
    else:
        from tests.postgres.conftest import drop_schema, server_url

        schema = f"test_{uuid.uuid4().hex[:16]}"
        yield f"{server_url()}?schema={schema}"
        drop_schema(schema)


@pytest.fixture
def store(store_url: str) -> Iterator[EventStore]:
    with EventStore.open(store_url, sync="normal", events=EVENTS) as opened:
        yield opened
