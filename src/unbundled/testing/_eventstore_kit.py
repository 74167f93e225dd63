"""What every check of the event store's contract uses: the target under test,
the events it appends and the helpers that drive it. Below both halves of
the suite (:mod:`.eventstore_contract`, :mod:`.eventstore_contract_state`),
so neither imports the other."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._ground.waiters import SyncWaiter
from ..eventstore import (
    AppendResult,
    Event,
    EventStore,
    NewEvent,
    RecordedEvent,
    StreamWrite,
)

Clock = Callable[[], int]
Check = Callable[["EventStoreTarget"], None]


@dataclass(frozen=True)
class EventStoreTarget:
    """The backend under test: ``open(clock)`` returns an :class:`EventStore`
    whose backend uses ``clock`` for recorded times. Every check gets a fresh,
    empty store; for a ``durable`` target, opening again after closing reaches
    the same store and sees everything committed.

    ``transactions`` says whether one transaction may span several streams
    and documents (memory, SQLite, PostgreSQL): an append to several streams
    is atomic, a projection commits its documents with its checkpoint, and
    every append checks its event ids against the whole store. Where it
    cannot (NATS), the checks that need it check the documented weaker
    behaviour instead: those appends and projections are refused with
    ``NotSupported`` and write nothing, and a reused event id is caught when
    the append repeats an earlier one's ids (within the duplicate window) or
    its expected version conflicts and the stream holds the ids.
    """

    name: str
    open: Callable[[Clock], EventStore]
    durable: bool
    transactions: bool = True


def durable_only(check: Check) -> Check:
    """Mark a check that needs a store that survives closing."""
    check.durable_only = True  # type: ignore[attr-defined]
    return check


class Opened(Event, frozen=True):
    owner: str


class Deposited(Event, frozen=True):
    amount: int


def new_event(kind: str = "Noted", data: bytes = b"{}", event_id: str | None = None) -> NewEvent:
    """A serialized event with a fresh id (or ``event_id``)."""
    return NewEvent(str(uuid.uuid4()) if event_id is None else event_id, kind, data)


def submit(store: EventStore, writes: Sequence[StreamWrite]) -> list[AppendResult]:
    """Append through the raw backend, bypassing the facade's checks."""
    waiter = SyncWaiter()
    store.backend.submit_events(writes, waiter)
    results: list[AppendResult] = waiter.wait()
    return results


def everything(store: EventStore) -> list[RecordedEvent]:
    """Every event of ``$all``, page by page."""
    out: list[RecordedEvent] = []
    while page := store.read_all_raw(out[-1].position if out else 0, limit=500):
        out.extend(page)
    return out
