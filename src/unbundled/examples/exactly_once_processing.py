"""The seed's ``exactly_once_processing``, made real: running balances that a
crash cannot double.

Topic ``payments`` holds deposits and withdrawals (JSON ``{"id", "account",
"amount"}``, keyed by account). The flow keeps each account's balance with
``map_with_state`` and writes one record per payment to topic
``balances`` and the latest balance per account to SQL table ``balances``.
Each epoch commits those outputs, the balances (the state) and the input
offsets in one transaction; so a worker killed with SIGKILL at any moment,
even inside the commit, restarts from the last committed epoch, and the
rerun writes every balance update exactly once.

``main()`` shows it: a worker process runs the flow and is SIGKILLed
half-way; a second run finishes the job; then it checks that topic
``balances`` holds exactly one record per payment, in order, and that the
table equals the balances computed directly::

    python -m unbundled.examples.exactly_once_processing payments.db
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import msgspec

import unbundled
from unbundled.streams import Flow, run

SOURCE = "payments"
TARGET = "balances"
TABLE = "balances"
ACCOUNTS = 5
# A static member: the rerun with the same instance id takes the killed
# worker's partitions at once, instead of after its lease (10 s) runs out.
WORKER = "balances-worker"
START_MS = 1_700_000_000_000

__all__ = ["apply", "check", "crash_a_worker", "flow", "main", "payments", "produce"]


def apply(balance: int, payment: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The new balance, and the record announcing it."""
    balance += payment["amount"]
    return balance, {"id": payment["id"], "account": payment["account"], "balance": balance}


def flow() -> Flow:
    """Running balance per account, into topic ``balances`` and table ``balances``."""
    f = Flow("balances")
    f.source(SOURCE).map_with_state(apply, init=int).to_topic(TARGET).to_table(TABLE)
    return f


def payments(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` payments (ids 0..count-1) over a few accounts, the same for the same seed."""
    rng = random.Random(seed)
    return [
        {"id": i, "account": f"acct-{rng.randrange(ACCOUNTS)}", "amount": rng.randint(-50, 100)}
        for i in range(count)
    ]


def produce(db: Any, items: list[dict[str, Any]], partitions: int = 3) -> None:
    """Append ``items`` to topic ``payments``, keyed by account; payment ``i``
    is timestamped ``START_MS + i`` ms, so the same items give the same log."""
    db.log.create_topic(SOURCE, partitions, exist_ok=True)
    for chunk in range(0, len(items), 500):
        db.log.append_batch(
            SOURCE,
            [
                unbundled.Message(
                    msgspec.json.encode(p), p["account"].encode(), timestamp=START_MS + p["id"]
                )
                for p in items[chunk : chunk + 500]
            ],
        )


def _worker(path: str) -> None:
    """A worker that runs forever, in small slow epochs: the one main() kills."""
    with unbundled.open(path) as db:
        slow = lambda *_: time.sleep(0.005)  # noqa: E731
        run(db, flow(), instance_id=WORKER, epoch_records=20, poll_records=20, on_epoch=slow)


def _committed(path: str) -> int:
    with unbundled.open(path) as db:
        if "streams.balances" not in db.log.groups():
            return 0
        return sum(committed or 0 for committed, _, _ in db.log.lag("streams.balances").values())


def crash_a_worker(path: str, after: int) -> None:
    """Start a worker process; SIGKILL it once it has committed ``after`` payments."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "unbundled.examples.exactly_once_processing", "--worker", path]
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 60
        while _committed(path) < after:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker stopped early (status {proc.returncode})")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def check(path: str, items: list[dict[str, Any]]) -> dict[str, int]:
    """Raise AssertionError unless every payment was applied exactly once;
    return the balances."""
    expected: dict[str, int] = {}
    for p in items:
        expected[p["account"]] = expected.get(p["account"], 0) + p["amount"]
    with unbundled.open(path) as db:
        out = [
            msgspec.json.decode(r.value or b"null")
            for p in db.log.end_offsets(TARGET)
            for r in db.log.scan(TARGET, p)
        ]
    ids = sorted(o["id"] for o in out)
    assert ids == list(range(len(items))), "a balance update is missing or repeated"
    last: dict[str, int] = {}
    for o in out:  # per account, the updates come in payment order
        assert o["id"] > last.get(o["account"], -1), f"out of order: {o}"
        last[o["account"]] = o["id"]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(f"SELECT key, value FROM {TABLE}").fetchall()
    table = {key: msgspec.json.decode(value)["balance"] for key, value in rows}
    assert table == expected, (table, expected)
    return table


def main(path: str = "exactly_once.db", count: int = 2_000) -> dict[str, int]:
    """Produce ``count`` payments into SQLite file ``path``, crash a worker
    half-way, finish with a second run, check and print the balances."""
    items = payments(count)
    with unbundled.open(path) as db:
        produce(db, items)
    crash_a_worker(path, after=count // 2)
    done_before = _committed(path)
    with unbundled.open(path) as db:
        report = run(db, flow(), instance_id=WORKER, until_end=True)
    balances = check(path, items)
    print(f"worker SIGKILLed after {done_before} payments committed; the rerun did the rest")
    print(f"{report.records_in} payments processed after the crash, {count} balance updates")
    print(f"{'account':<10}{'balance':>10}")
    for account, balance in sorted(balances.items()):
        print(f"{account:<10}{balance:>10}")
    print("exactly once: no payment lost, none applied twice")
    return balances


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "exactly_once.db")
