"""The event store's part of ``unbundled demo``: an event-sourced bank.

1. Open accounts (``BankAccount``) in a fresh SQLite file, durable appends.
2. Two tellers load one account and both withdraw: the second save is
   refused with ``WrongExpectedVersion`` naming the stream.
3. Threads run deposits and withdrawals on a few shared accounts with
   load / command / save, retrying on conflicts: no update is lost and no
   balance goes below zero.
4. The busiest account loads from a snapshot, reading only the tail, and
   gives the same state as folding all its events.
5. Time travel: as of a version and as of a time, equal to folding the
   events up to there.
6. Crypto-shredding: forget one customer; their name reads as None, their
   balance is intact, other customers keep theirs, and no name was ever
   written to the file in plain text.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import Error, WrongExpectedVersion
from .eventstore.aggregate import Repository
from .eventstore.api import EventStore, StoredEvent
from .examples.bank import BankAccount, Deposited, InsufficientFunds, Withdrawn

ACCOUNTS = 8
HOT_ACCOUNTS = 3  # the threads share these, so that their saves collide
THREADS = 8
OPENING_DEPOSIT = 1_000
SNAPSHOT_EVERY = 20
OWNERS = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]

Check = tuple[str, bool, str]


def run_eventstore_demo(console: Console, workdir: Path, *, commands: int = 40) -> bool:
    """Run the bank demo in ``workdir/events.db`` (replaced if present),
    printing as it goes; True if every check passed. ``commands`` per thread."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "events.db"
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    console.rule("[bold]unbundled demo: an event-sourced bank")
    console.print(f"event store file: {db}")
    try:
        checks = _demo(console, db, commands)
    except Error as exc:
        console.print(f"[red]event store demo: failed: {escape(str(exc))}")
        return False
    return report_checks(console, "event store demo", checks)


def report_checks(console: Console, part: str, checks: list[Check]) -> bool:
    """Print what ``part`` of the demo verified as a table, then its verdict;
    True if every check passed."""
    table = Table(title=f"what the {part} verified")
    table.add_column("check")
    table.add_column("", justify="center")
    table.add_column("detail")
    for name, ok, detail in checks:
        table.add_row(name, "[green]✓[/]" if ok else "[red]✗[/]", escape(detail))
    console.print(table)
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        console.print(f"[red]{part}: FAILED: {'; '.join(failed)}")
        return False
    console.print(f"[green]{part}: all checks passed")
    return True


def _fold(events: list[StoredEvent]) -> int:
    """The balance, computed straight from the events (not by the aggregate)."""
    balance = 0
    for stored in events:
        if isinstance(stored.event, Deposited):
            balance += stored.event.amount
        elif isinstance(stored.event, Withdrawn):
            balance -= stored.event.amount
    return balance


def _demo(console: Console, db: Path, commands: int) -> list[Check]:
    checks: list[Check] = []
    with EventStore.open(db, sync="full") as store:
        accounts = Repository(store, BankAccount, snapshot_every=SNAPSHOT_EVERY)
        for i in range(ACCOUNTS):
            account = accounts.create(str(i))
            account.open(customer_id=f"customer-{i}", owner=OWNERS[i % len(OWNERS)])
            account.deposit(OPENING_DEPOSIT)
            accounts.save(account)
        console.print(f"opened {ACCOUNTS} accounts with {OPENING_DEPOSIT} each")
        checks.append(_two_tellers(accounts))
        checks.extend(_busy_tellers(console, accounts, commands))
        hot = max(range(HOT_ACCOUNTS), key=lambda i: store.state(f"account-{i}").version)
        events = store.read(f"account-{hot}")
        checks.append(_snapshot_used(accounts, str(hot), events))
        checks.extend(_time_travel(accounts, str(hot), events))
        checks.extend(_forget(console, store, accounts))
    plain = b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*") if path.is_file())
    leaked = [owner for owner in OWNERS if owner.encode() in plain]
    checks.append(
        (
            "no owner name written to the file in plain text",
            not leaked,
            f"searched {len(plain):,} bytes for {len(OWNERS)} names; found {leaked or 'none'}",
        )
    )
    return checks


def _two_tellers(accounts: Repository[BankAccount]) -> Check:
    teller_a, teller_b = accounts.load("0"), accounts.load("0")
    teller_a.withdraw(600)
    teller_b.withdraw(600)  # fine alone; together they would overdraw
    accounts.save(teller_a)
    try:
        accounts.save(teller_b)
    except WrongExpectedVersion as conflict:
        refused = conflict.details.get("stream") == "account-0"
        return ("a concurrent save is refused", refused, str(conflict))
    return ("a concurrent save is refused", False, "both saves went through")


def _busy_tellers(
    console: Console, accounts: Repository[BankAccount], commands: int
) -> list[Check]:
    ledger: Counter[str] = Counter()  # the net amount of every save that succeeded
    conflicts = [0] * THREADS
    refusals = [0] * THREADS
    lock = threading.Lock()
    before = {str(i): accounts.load(str(i)).balance for i in range(HOT_ACCOUNTS)}

    def teller(worker: int) -> None:
        rng = random.Random(worker)
        for _ in range(commands):
            id = str(rng.randrange(HOT_ACCOUNTS))
            amount = rng.randrange(1, 400)
            deposit = rng.random() < 0.5
            while True:
                account = accounts.load(id)
                try:
                    account.deposit(amount) if deposit else account.withdraw(amount)
                except InsufficientFunds:
                    refusals[worker] += 1
                    break
                try:
                    accounts.save(account)
                except WrongExpectedVersion:
                    conflicts[worker] += 1
                    continue  # someone saved first: load again, run the command again
                with lock:
                    ledger[id] += amount if deposit else -amount
                break

    started = time.perf_counter()
    threads = [threading.Thread(target=teller, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    console.print(
        f"{THREADS} tellers ran {THREADS * commands} commands on {HOT_ACCOUNTS} shared accounts "
        f"in {elapsed:.2f} s: {sum(conflicts)} conflicts retried, {sum(refusals)} refused"
    )
    after = {id: accounts.load(id).balance for id in before}
    lost = {
        id: after[id] - before[id] - ledger[id]
        for id in before
        if after[id] != before[id] + ledger[id]
    }
    return [
        (
            "no update lost under concurrent saves",
            not lost,
            f"{sum(conflicts)} conflicts detected and retried; balances match the ledger"
            if not lost
            else f"mismatch: {lost}",
        ),
        (
            "no balance below zero",
            all(balance >= 0 for balance in after.values()),
            f"{sum(refusals)} withdrawals refused (InsufficientFunds)",
        ),
    ]


def _snapshot_used(accounts: Repository[BankAccount], id: str, events: list[StoredEvent]) -> Check:
    loaded = accounts.load(id)
    used = loaded.snapshot_version is not None and loaded.replayed_events < SNAPSHOT_EVERY
    same = loaded.balance == _fold(events) and loaded.version == events[-1].version
    return (
        "load uses the latest snapshot",
        used and same,
        f"account-{id}: snapshot at v{loaded.snapshot_version}, replayed "
        f"{loaded.replayed_events} of {len(events)} events; same state as a full fold",
    )


def _when(ms: int) -> str:
    """A recorded time as people read it (UTC, to the millisecond: events of
    the demo are milliseconds apart)."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d} UTC"


def _time_travel(
    accounts: Repository[BankAccount], id: str, events: list[StoredEvent]
) -> list[Check]:
    middle = events[len(events) // 2]
    by_version = accounts.load(id, as_of_version=middle.version)
    expected = _fold(events[: middle.version + 1])
    by_time = accounts.load(id, as_of_time=middle.recorded_ms)
    until = [e for e in events if e.recorded_ms <= middle.recorded_ms]
    return [
        (
            "time travel by version",
            by_version.balance == expected and by_version.version == middle.version,
            f"account-{id} as of v{middle.version}: {by_version.balance}",
        ),
        (
            "time travel by time",
            by_time.balance == _fold(until) and by_time.version == until[-1].version,
            f"as of {_when(middle.recorded_ms)}: v{by_time.version}, {by_time.balance}",
        ),
    ]


def _forget(console: Console, store: EventStore, accounts: Repository[BankAccount]) -> list[Check]:
    before = accounts.load("1")
    store.forget("customer-1")
    console.print(f"forgot customer-1 (owner of account-1, {before.owner!r})")
    after = accounts.load("1")
    others = {i: accounts.load(str(i)).owner for i in range(2, ACCOUNTS)}
    return [
        (
            "a forgotten customer's name is gone",
            after.owner is None and store.read("account-1")[0].event.owner is None,
            f"account-1 owner: {before.owner!r} -> {after.owner!r}",
        ),
        (
            "the rest of their events stays readable",
            (after.balance, after.version) == (before.balance, before.version),
            f"balance {after.balance}, {after.version + 1} events",
        ),
        (
            "other customers are unaffected",
            all(owner == OWNERS[i % len(OWNERS)] for i, owner in others.items()),
            f"{len(others)} other owners still readable",
        ),
    ]
