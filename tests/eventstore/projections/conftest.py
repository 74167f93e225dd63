"""A fresh event store on each backend: memory, SQLite, and PostgreSQL (the
real server: skipped without it, failing with CI=true)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from unbundled.eventstore import EventStore

from ._helpers import EVENTS

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def fresh_url(backend: str, tmp_path: Path, name: str = "events") -> Iterator[str]:
    """The URL of an empty event store on ``backend``, removed afterwards
    (PostgreSQL: a schema of its own)."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield str(tmp_path / f"{name}.db")
    else:
        from tests.backends.postgres.conftest import drop_schema, server_url

        schema = f"test_{uuid.uuid4().hex[:16]}"
        try:
            yield f"{server_url()}?schema={schema}"
        finally:
            drop_schema(schema)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[EventStore]:
    with EventStore.open(store_url, sync="normal", events=EVENTS) as opened:
        yield opened
