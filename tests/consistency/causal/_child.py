"""A causal-store replica in its own process, for ``test_replication.py``.

Run as ``python -m tests.consistency.causal._child DB REPLICA_ID a,b,c`` from the
repository root. It opens the SQLite log, opens its replica (replaying the
topic), starts following the log, prints ``{"ready": ...}``, then answers one
JSON command per stdin line with one JSON line (written with a single
``write(2)``, after the operation is durable). It exits when stdin closes,
so a dead parent leaves no replica behind.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from unbundled import Error, Log
from unbundled.consistency.causal import Context, Replica, Session


def say(message: dict[str, Any]) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def handle(replica: Replica, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    session = Session.from_token(command["session"]) if command.get("session") else None
    if op == "state":
        keys = replica.keys()
        return {
            "applied": replica.applied,
            "digest": replica.digest(),
            "data": {k: sorted(v.decode() for v in replica.peek(k).values) for k in keys},
        }
    key = command["key"]
    timeout_s = command.get("timeout_s")
    if op == "get":
        versions = replica.get(key, session=session, timeout_s=timeout_s)
    elif op == "put":
        context = Context.from_token(command["context"]) if command.get("context") else None
        value = command["value"].encode() if command["value"] is not None else None
        versions = replica.put(key, value, context=context, session=session, timeout_s=timeout_s)
    else:
        raise ValueError(f"unknown op {op!r}")
    return {
        "values": sorted(v.decode() for v in versions.values),
        "context": versions.context.token(),
        "session": session.token() if session is not None else None,
    }


def main(db: str, replica_id: str, replicas: str) -> None:
    with Log.open(db, sync="full") as log:
        replica = Replica(log, replica_id, replicas.split(","), timeout_s=20.0)
        replica.start(poll_s=0.05)
        say({"ready": replica_id, "applied": replica.applied})
        for line in sys.stdin:
            command = json.loads(line)
            try:
                answer = handle(replica, command)
            except Error as exc:
                answer = {"error": exc.code, "message": str(exc)}
            answer["id"] = command["id"]
            say(answer)
        replica.close()


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
