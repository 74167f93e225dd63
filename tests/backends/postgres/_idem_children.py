"""Child processes for the PostgreSQL idempotency tests.

``python -m tests.backends.postgres._idem_children caller <url> <schema> <name> <threads>``
opens its own backend, prints ``ready``, waits for a line on stdin, then
calls one key from every thread at once and prints one JSON line: what each
caller got. The handler records each run with its own connection (outside
the transaction: a run that is rolled back still counts), then completes
with effects: a ledger row and an event, in the result's transaction.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import uuid
from typing import Any

import psycopg

from unbundled.backends.postgres import PostgresBackend
from unbundled.errors import RequestInProgress
from unbundled.eventstore import ANY, NewEvent, StreamWrite
from unbundled.idempotency import EffectsTxn, Idempotency

KEY = "transfer-42"
LIFETIME_S = 60.0


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def caller(url: str, schema: str, name: str, threads: int) -> None:
    backend = PostgresBackend(url, sync="normal", pool_size=threads)
    idem = Idempotency(backend)
    runs = psycopg.connect(url.partition("?")[0], autocommit=True)
    answers: list[Any] = []
    lock = threading.Lock()
    start = threading.Event()

    def effects(tx: EffectsTxn) -> None:
        tx.sql.execute(f'INSERT INTO "{schema}".ledger VALUES (%s, %s)', (KEY, 42))
        event = NewEvent(str(uuid.uuid4()), "Transferred", b'{"amount": 42}')
        tx.append_events([StreamWrite("account-42", ANY, [event])])

    def work(thread: int) -> None:
        assert start.wait(LIFETIME_S)
        me = f"{name}-{thread}"
        try:
            with idem.run(KEY, {"amount": 42}, wait_s=30) as attempt:
                if attempt.replayed:
                    answer: Any = attempt.result
                else:
                    with lock:
                        runs.execute(f'INSERT INTO "{schema}".runs VALUES (%s)', (me,))
                    time.sleep(0.1)  # widens the race; never asserted on
                    answer = {"by": me}
                    idem.complete(attempt, answer, effects=effects)
        except RequestInProgress:
            answer = "busy"
        with lock:
            answers.append(answer)

    workers = [threading.Thread(target=guarded(work), args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    say("ready")
    sys.stdin.readline()
    start.set()
    for thread in workers:
        thread.join(LIFETIME_S)
    idem.close()
    runs.close()
    say(json.dumps({"answers": answers}))


def guarded(fn: Any) -> Any:
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)

    return run


if __name__ == "__main__":
    role, url, schema, name, threads = sys.argv[1:]
    assert role == "caller"
    guarded(caller)(url, schema, name, int(threads))
