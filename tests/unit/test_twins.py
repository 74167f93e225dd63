"""Sync and async twins offer the same API (issue 10, structure).

Each sync facade and its ``Async`` twin have the same public names, and each
name the same parameters: names, kinds and defaults. Whether a method is a
coroutine may differ (that is the point of the twin); nothing else may, except
what ``ALLOWED`` lists with its reason. A method added to one twin only, or a
parameter renamed or defaulted differently in one, fails here.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from unbundled import database, eventstore, idempotency, log

TWINS: list[tuple[type[Any], type[Any]]] = [
    (log.Log, log.AsyncLog),
    (log.Producer, log.AsyncProducer),
    (log.Consumer, log.AsyncConsumer),
    (log.Transaction, log.AsyncTransaction),
    (eventstore.EventStore, eventstore.AsyncEventStore),
    (idempotency.Idempotency, idempotency.AsyncIdempotency),
    (database.Database, database.AsyncDatabase),
    (database.Transaction, database.AsyncTransaction),
]

# (sync class, name) -> why the twins differ there.
ALLOWED = {
    (eventstore.EventStore, "projections"): (
        "a ProjectionRunner is a worker thread with a blocking start/stop; the "
        "async store has no runner of its own yet"
    ),
    (eventstore.EventStore, "subscribe"): (
        "handler= runs the handler on a worker thread, the sync API's way to "
        "consume in the background; an asyncio program iterates the "
        "AsyncSubscription in a task instead"
    ),
}

Shape = str | tuple[tuple[str, str, str], ...]


def _public(cls: type[Any]) -> dict[str, Any]:
    """Public attributes of ``cls`` and its bases (ours only), nearest first."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                found.setdefault(name, value)
    return found


def _shape(value: Any) -> Shape:
    """A property, or a callable's parameters as (name, kind, default)."""
    if isinstance(value, property):
        return "property"
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    if not callable(value):
        return type(value).__name__
    parameters = inspect.signature(value).parameters.values()
    return tuple((p.name, p.kind.name, repr(p.default)) for p in parameters)


def _differences(sync: Any, twin: Any) -> list[str]:
    names, twin_names = _public(sync), _public(twin)
    out = []
    for name in sorted(names.keys() | twin_names.keys()):
        if (sync, name) in ALLOWED:
            continue
        if name not in twin_names:
            out.append(f"{name}: only on {sync.__name__}")
        elif name not in names:
            out.append(f"{name}: only on {twin.__name__}")
        elif (mine := _shape(names[name])) != (theirs := _shape(twin_names[name])):
            out.append(f"{name}: {sync.__name__} {mine} != {twin.__name__} {theirs}")
    return out


@pytest.mark.parametrize(("sync", "twin"), TWINS, ids=lambda cls: cls.__name__)
def test_the_async_twin_has_the_same_public_api(sync: type[Any], twin: type[Any]) -> None:
    assert _public(sync), f"{sync.__name__} has no public names: the comparison saw nothing"
    differences = _differences(sync, twin)
    assert not differences, "\n".join(differences)


def test_open_and_open_async_take_the_same_arguments() -> None:
    assert _shape(database.open) == _shape(database.open_async)


def test_allowed_differences_are_real() -> None:
    """An allowed difference that no longer exists is removed from ALLOWED."""
    for (sync, name), _why in ALLOWED.items():
        twin = dict(TWINS)[sync]
        mine, theirs = _public(sync).get(name), _public(twin).get(name)
        assert mine is None or theirs is None or _shape(mine) != _shape(theirs), name


def test_a_difference_is_seen() -> None:
    """The comparison itself: a renamed parameter, a missing method, a changed default."""

    class Sync:
        def read(self, key: str, *, limit: int = 10) -> None: ...

        def close(self) -> None: ...

    class Async:
        async def read(self, name: str, *, limit: int = 20) -> None: ...

    differences = _differences(Sync, Async)
    assert [d.split(":")[0] for d in differences] == ["close", "read"]
    assert "'key'" in differences[1] and "'20'" in differences[1]
