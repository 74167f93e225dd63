"""The change-data-capture part of ``make demo``: dual writes drift, CDC does not.

A product service keeps prices in its own SQLite file (``app.db``) and a price cache
must follow them. Two ways, side by side, on fresh files:

1. Dual writes: the service process commits a price to ``app.db``, then writes it to
   the cache (``cache.db``), a few milliseconds later (a network hop). It is SIGKILLed
   at random moments, as processes are: a kill between the two writes leaves the cache
   wrong, and nothing ever notices.
2. Change data capture: a connector captures the ``products`` table into the log
   (``log.db``); a view process applies the topic's change events to ``view.db``,
   storing the log offset in the same transaction as the rows. The capture process
   and the view process are SIGKILLed as well, at their own random moments.

Then, after one catch-up run of each: the view equals ``app.db`` row for row, the log
holds each change once and in commit order per key, and a view rebuilt from the log
from scratch equals the one that was killed over and over. The cache does not.

Child processes run ``python -m unbundled.demo_cdc {service|capture|view} WORKDIR``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .cdc import CDCProducer, ConnectorConfig, SourcePosition, add_connector, get_connector
from .database import Database
from .database import open as open_database
from .demo_events import Check, report_checks
from .errors import Error
from .log import Record
from .testing.child import ChildProcess

ROWS = 1000
ROUNDS = 4
NAME = "shop"
TOPIC = f"{NAME}.main.products"
HOP_S = 0.005  # the dual writer's "network hop" between its two writes


def run_cdc_demo(console: Console, workdir: Path) -> bool:
    """Run the demo in ``workdir``, printing as it goes; True if every check passed."""
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]unbundled demo: change data capture instead of dual writes")
    try:
        checks, drift = _demo(console, workdir)
    except Error as exc:
        console.print(f"[red]CDC demo: failed: {escape(str(exc))}")
        return False
    colour = "yellow" if drift else "green"
    console.print(
        f"[{colour}]dual writes: after {ROUNDS} kills of the service, the cache disagrees "
        f"with the database on {drift} of {ROWS} rows[/] (and nothing tells anyone)"
    )
    return report_checks(console, "CDC demo", checks)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _setup(workdir: Path) -> None:
    app = _connect(workdir / "app.db")
    app.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price INTEGER)")
    rows = [(i, f"product {i}", 100) for i in range(ROWS)]
    app.executemany("INSERT INTO products VALUES (?, ?, ?)", rows)
    app.close()
    _new_copy(workdir / "cache.db", rows)
    _new_copy(workdir / "view.db", [])
    with open_database(str(workdir / "log.db")) as db:
        add_connector(db, ConnectorConfig(NAME, f"sqlite:///{workdir / 'app.db'}", ["products"]))


def _new_copy(path: Path, rows: list[tuple[int, str, int]]) -> None:
    """A copy of the products table (the cache, a view), and the next log offset to apply."""
    conn = _connect(path)
    conn.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price INTEGER)")
    conn.execute("CREATE TABLE offset_ (one INTEGER PRIMARY KEY, next INTEGER NOT NULL)")
    conn.execute("INSERT INTO offset_ VALUES (1, 0)")
    conn.executemany("INSERT INTO products VALUES (?, ?, ?)", rows)
    conn.close()


def _demo(console: Console, workdir: Path) -> tuple[list[Check], int]:
    _setup(workdir)
    rng = random.Random()
    kills = {"service": 0, "capture": 0, "view": 0}
    for round_ in range(ROUNDS):
        with console.status(f"round {round_ + 1} of {ROUNDS}: service, capture and view run ..."):
            children = {
                role: ChildProcess(["-m", "unbundled.demo_cdc", role, str(workdir)])
                for role in kills
            }
            try:
                for role, child in children.items():
                    if child.wait_for(lambda line: line == "ready", 60.0) is None:
                        raise Error(f"the demo's {role} process did not start")
                order = list(children)
                rng.shuffle(order)
                for role in order:  # each killed at its own random moment
                    time.sleep(rng.uniform(0.1, 0.4))
                    children[role].kill()
                    kills[role] += 1
            finally:
                for child in children.values():
                    child.close()
    catching_up = console.status("catching up: one capture run and one view run to the end ...")
    with catching_up, open_database(str(workdir / "log.db")) as db:
        with CDCProducer(db, get_connector(db, NAME)) as producer:
            producer.run(until_idle=True)
        _apply_all(db, workdir / "view.db")
        records = _records(db)
        _new_copy(workdir / "rebuilt.db", [])
        _apply_all(db, workdir / "rebuilt.db")
    source = _rows(workdir / "app.db")
    view, rebuilt, cache = (_rows(workdir / n) for n in ("view.db", "rebuilt.db", "cache.db"))
    drift = sum(1 for key in source if cache.get(key) != source[key])
    wrong = sum(1 for key in source.keys() | view.keys() if view.get(key) != source.get(key))
    positions = [p for p, _ in records]
    per_key: dict[int, list[SourcePosition]] = {}
    for position, key in records:
        per_key.setdefault(key, []).append(position)
    once = len(set(positions)) == len(positions)
    ordered = all(p == sorted(p) for p in per_key.values())
    checks: list[Check] = [
        (
            "the CDC-fed view equals the database",
            wrong == 0,
            f"{kills['capture']} kills of the capture process, {kills['view']} of the view "
            f"process: {wrong} of {len(source)} rows differ",
        ),
        (
            "the log holds each change once, in commit order per key",
            once and ordered,
            f"{len(records)} change events, {len(set(positions))} distinct positions, "
            f"order per key {'kept' if ordered else 'BROKEN'}",
        ),
        (
            "a view rebuilt from the log equals the one killed over and over",
            rebuilt == view,
            f"{len(rebuilt)} rows rebuilt from offset 0",
        ),
    ]
    return checks, drift


def _rows(path: Path) -> dict[int, tuple[str, int]]:
    conn = _connect(path)
    try:
        return {i: (n, p) for i, n, p in conn.execute("SELECT id, name, price FROM products")}
    finally:
        conn.close()


def _records(db: Database) -> list[tuple[SourcePosition, int]]:
    out: list[tuple[SourcePosition, int]] = []
    records = db.log.read(TOPIC, 0, 0, records_max=10_000)
    while records:
        out.extend(_position_and_key(record) for record in records)
        records = db.log.read(TOPIC, 0, records[-1].offset + 1, records_max=10_000)
    return out


def _position_and_key(record: Record) -> tuple[SourcePosition, int]:
    value = json.loads(record.value or b"null")
    commit, index = json.loads(value["source"]["sequence"])
    key = json.loads(record.key or b"null")
    return SourcePosition(int(commit), int(index)), int(key["id"])


def _apply_batch(db: Database, view: sqlite3.Connection, limit: int = 500) -> int:
    """Apply the next change events to the view, with the next offset in the same
    transaction; returns how many were applied."""
    (offset,) = view.execute("SELECT next FROM offset_").fetchone()
    records = db.log.read(TOPIC, 0, offset, records_max=limit) if TOPIC in db.log.topics() else []
    if not records:
        return 0
    view.execute("BEGIN IMMEDIATE")
    for record in records:
        event = json.loads(record.value or b"null")
        op, after = event["op"], event["after"]
        if op == "t":
            view.execute("DELETE FROM products")
        elif op == "d":
            view.execute("DELETE FROM products WHERE id = ?", (event["before"]["id"],))
        else:
            view.execute(
                "INSERT OR REPLACE INTO products VALUES (?, ?, ?)",
                (after["id"], after["name"], after["price"]),
            )
    view.execute("UPDATE offset_ SET next = ?", (records[-1].offset + 1,))
    view.execute("COMMIT")
    return len(records)


def _apply_all(db: Database, path: Path) -> None:
    view = _connect(path)
    try:
        while _apply_batch(db, view):
            pass
    finally:
        view.close()


def _service(workdir: Path) -> None:
    """Dual writes, forever: the database, then (a hop later) the cache."""
    app, cache = _connect(workdir / "app.db"), _connect(workdir / "cache.db")
    rng = random.Random()
    print("ready", flush=True)
    while True:
        key, price = rng.randrange(ROWS), rng.randrange(1, 10_000)
        app.execute("UPDATE products SET price = ? WHERE id = ?", (price, key))
        time.sleep(HOP_S)
        cache.execute("UPDATE products SET price = ? WHERE id = ?", (price, key))


def _capture(workdir: Path) -> None:
    with (
        open_database(str(workdir / "log.db")) as db,
        CDCProducer(db, get_connector(db, NAME)) as producer,
    ):
        print("ready", flush=True)
        producer.run(poll_s=0.05)


def _view(workdir: Path) -> None:
    with open_database(str(workdir / "log.db")) as db:
        view = _connect(workdir / "view.db")
        print("ready", flush=True)
        while True:
            if not _apply_batch(db, view):
                time.sleep(0.02)


def _main(argv: list[str]) -> int:
    roles = {"service": _service, "capture": _capture, "view": _view}
    if len(argv) == 2 and argv[0] in roles:
        roles[argv[0]](Path(argv[1]))
        return 0
    print("usage: python -m unbundled.demo_cdc {service|capture|view} WORKDIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
