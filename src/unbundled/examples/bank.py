"""The seed's bank account, as an event-sourced aggregate.

Amounts are integer cents. The owner's name is personal data of the
customer (``customer_id``): forgetting the customer makes it ``None`` in
every event and snapshot, while the balance history stays intact.

>>> from unbundled.eventstore import EventStore
>>> from unbundled.eventstore import Repository
>>> with EventStore.open("memory://") as store:
...     accounts = Repository(store, BankAccount, snapshot_every=50)
...     account = accounts.create("42")
...     account.open(customer_id="c-7", owner="Ada Lovelace")
...     account.deposit(100)
...     account.withdraw(30)
...     _ = accounts.save(account)
...     accounts.load("42").balance
70

``InsufficientFunds`` is the application's own error, deliberately *not* an
``unbundled.ConflictError``: a conflict means "another writer won the race,
reload and try again", and code that retries conflicts would retry a
withdrawal that can never succeed. A rule of the domain said no; retrying
cannot change that, so it is a separate class (``BankError``).
"""

from __future__ import annotations

from typing import Any

from ..eventstore.aggregate import Aggregate, SnapshotState, applies
from ..eventstore.serialization import Event

__all__ = [
    "AccountState",
    "BankAccount",
    "BankError",
    "Deposited",
    "InsufficientFunds",
    "Opened",
    "Withdrawn",
]


class Opened(Event, frozen=True):
    """An account was opened for a customer; ``owner`` is the customer's
    personal data (``None`` once the customer is forgotten)."""

    event_type = "AccountOpened"
    personal_data = ("owner",)
    data_subject = "customer_id"

    customer_id: str
    owner: str | None  # None once the customer is forgotten


class Deposited(Event, frozen=True):
    """Money was paid in (``amount`` in cents, > 0)."""

    event_type = "MoneyDeposited"

    amount: int


class Withdrawn(Event, frozen=True):
    """Money was paid out (``amount`` in cents, > 0, at most the balance)."""

    event_type = "MoneyWithdrawn"

    amount: int


class AccountState(SnapshotState, frozen=True):
    """What a snapshot of an account holds (schema version 1)."""

    personal_data = ("owner",)
    data_subject = "customer_id"

    customer_id: str
    owner: str | None
    balance: int


class BankError(Exception):
    """A banking rule refused a command (not a storage error: do not retry)."""


class InsufficientFunds(BankError):
    """A withdrawal larger than the balance."""

    def __init__(self, account: str, balance: int, amount: int) -> None:
        super().__init__(f"account {account} holds {balance}, cannot withdraw {amount}")
        self.account = account
        self.balance = balance
        self.amount = amount

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.account, self.balance, self.amount))


def _check_amount(amount: object) -> int:
    if type(amount) is not int or amount <= 0:
        raise ValueError(f"an amount is a positive number of cents, got {amount!r}")
    return amount


class BankAccount(Aggregate):
    """Open, deposit, withdraw; the balance never goes below zero."""

    category = "account"
    snapshot_type = AccountState

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer_id: str | None = None
        self.owner: str | None = None
        self.balance = 0

    @property
    def is_open(self) -> bool:
        """True once the account was opened."""
        return self.customer_id is not None

    # --- commands: check the rules, then record -----------------------------------

    def open(self, customer_id: str, owner: str) -> None:
        """Open the account for a customer; ``BankError`` if it is open already."""
        if self.is_open:
            raise BankError(f"account {self.id} is already open")
        self.record(Opened(customer_id=customer_id, owner=owner))

    def deposit(self, amount: int) -> None:
        """Pay in ``amount`` cents; ``ValueError`` unless it is an int > 0,
        ``BankError`` if the account is not open."""
        self._check_open()
        self.record(Deposited(amount=_check_amount(amount)))

    def withdraw(self, amount: int) -> None:
        """Pay out ``amount`` cents; ``InsufficientFunds`` if the balance is
        smaller (nothing recorded), ``ValueError`` unless it is an int > 0,
        ``BankError`` if the account is not open."""
        self._check_open()
        if _check_amount(amount) > self.balance:
            raise InsufficientFunds(self.id, self.balance, amount)
        self.record(Withdrawn(amount=amount))

    def _check_open(self) -> None:
        if not self.is_open:
            raise BankError(f"account {self.id} is not open")

    # --- events: change the state, never refuse -------------------------------------

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.customer_id = event.customer_id
        self.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount

    @applies(Withdrawn)
    def _withdrawn(self, event: Withdrawn) -> None:
        self.balance -= event.amount

    # --- snapshots ------------------------------------------------------------------

    def to_snapshot(self) -> AccountState:
        assert self.customer_id is not None, "only an opened account has events to snapshot"
        return AccountState(customer_id=self.customer_id, owner=self.owner, balance=self.balance)

    def restore(self, state: AccountState) -> None:
        self.customer_id = state.customer_id
        self.owner = state.owner
        self.balance = state.balance
