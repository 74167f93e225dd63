"""Events, projections and helpers shared by the subscription and projection tests."""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgspec

from unbundled.eventstore import Documents, Event, EventStore, Projection, ProjectionTxn
from unbundled.eventstore.api import StoredEvent


class Opened(Event, frozen=True):
    owner: str


class Deposited(Event, frozen=True):
    amount: int


class Withdrawn(Event, frozen=True):
    amount: int


EVENTS: list[type[Event]] = [Opened, Deposited, Withdrawn]


class Balance(msgspec.Struct):
    amount: int = 0
    events: int = 0
    last_position: int = 0


BALANCES = Documents("balances", Balance)


def apply_balance(balance: Balance, event: StoredEvent) -> Balance:
    """The rule every balance read model follows (and the tests recompute)."""
    amount = balance.amount
    if isinstance(event.event, Deposited):
        amount += event.event.amount
    elif isinstance(event.event, Withdrawn):
        amount -= event.event.amount
    return Balance(amount, balance.events + 1, event.position)


class Balances(Projection):
    """Per-account balances as JSON documents."""

    name = "balances"
    categories = ("account",)
    collections = ("balances",)

    def handle(self, event: StoredEvent, txn: ProjectionTxn) -> None:
        old = BALANCES.get(txn, event.stream) or Balance()
        if old.last_position >= event.position:
            raise AssertionError(f"{event.stream}: event {event.position} applied twice")
        BALANCES.put(txn, event.stream, apply_balance(old, event))


def expected_balances(store: EventStore, upto: int | None = None) -> dict[str, Balance]:
    """The balances computed from scratch from ``$all`` (up to position
    ``upto``), without any projection code."""
    out: dict[str, Balance] = {}
    position = 0
    while True:
        page = store.read_all(position, limit=1000, categories=["account"])
        for event in page:
            if upto is not None and event.position > upto:
                return out
            out[event.stream] = apply_balance(out.get(event.stream, Balance()), event)
        if len(page) < 1000:
            return out
        position = page[-1].position


def append_in_thread(
    store: EventStore, count: int, stream: Callable[[int], str], start: int = 0
) -> threading.Thread:
    """Append ``count`` single events from another thread (started)."""

    def run() -> None:
        for i in range(start, start + count):
            store.append(stream(i), [Deposited(amount=i)])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
