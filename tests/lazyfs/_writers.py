"""Writers for the lazyfs power-cut tests, run as ``python -m
tests.lazyfs._writers <role> ...`` from the repository root.

Each prints ``ack <n>`` (one ``write(2)`` per line) only after commit ``n``
returned, then ``done``, then waits to be killed (SIGKILL, before the power
cut). A writer that fails prints the traceback on stderr and exits with 3.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import traceback

LIFETIME_S = 120.0  # a writer the test forgot exits on its own


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def sqlite(path: str, journal: str, synchronous: str, commits: int) -> None:
    """One row per transaction, in SQLite ``journal`` mode and ``synchronous`` level."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    for n in range(commits):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (n, f"row {n} " + "x" * 200))
        db.execute("COMMIT")
        say(f"ack {n}")


def log(path: str, records: int) -> None:
    """Append ``records`` records to topic ``t`` of an ``unbundled.open``
    database with ``sync="full"``; ``ack <n> <offset>`` after each."""
    import unbundled

    db = unbundled.open(path, sync="full")
    db.log.create_topic("t", exist_ok=True)
    for n in range(records):
        position = db.log.append("t", f"record {n}".encode())
        say(f"ack {n} {position.offset}")


def main(argv: list[str]) -> None:
    role, *args = argv
    try:
        if role == "sqlite":
            sqlite(args[0], args[1], args[2], int(args[3]))
        elif role == "log":
            log(args[0], int(args[1]))
        else:
            raise SystemExit(f"unknown role {role!r}")
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    say("done")
    time.sleep(LIFETIME_S)


if __name__ == "__main__":
    main(sys.argv[1:])
