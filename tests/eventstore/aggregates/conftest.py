"""Fixtures for the aggregate tests: a store on each backend, on simulated
time, whose backend counts the events it reads (a transparent wrapper around
the real backend: nothing is faked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from unbundled.backends import open_backend
from unbundled.eventstore import EventStore, RecordedEvent
from unbundled.testing import SimClock


class CountingBackend:
    """Delegates everything to the real backend; counts events read by stream."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rows_read = 0

    def read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool = False
    ) -> list[RecordedEvent]:
        rows: list[RecordedEvent] = self.inner.read_stream(stream, from_version, limit, backwards)
        self.rows_read += len(rows)
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def open_store(url: str, clock: SimClock) -> EventStore:
    backend = CountingBackend(open_backend(url, sync="normal", clock=clock))
    return EventStore(cast(Any, backend))


def rows_read(store: EventStore) -> int:
    backend = store.backend
    assert isinstance(backend, CountingBackend)
    return backend.rows_read


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def store(url: str, clock: SimClock) -> Iterator[EventStore]:
    with open_store(url, clock) as opened:
        yield opened
