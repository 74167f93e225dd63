"""A client process of the key-value store, for ``_workload.run_processes``.

``python -m tests.consistency.kv._client URL NAME SEED OPS STALL_AT`` opens
the store, prints ``ready``, waits for ``go`` on stdin, then runs OPS random
operations, printing ``i <monotonic_ns> <input json>`` just before each call
and ``r <monotonic_ns> <output json>`` just after it returns (``x <error>``
if it raised: unknown outcome). From operation STALL_AT on (-1: never), the
first change that took effect is followed by ``s`` instead of its answer, and
the client waits to be killed. Each line is one ``write(2)``: a line a
parent reads is one the client finished writing.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from tests.consistency.kv._workload import Client, apply
from unbundled.consistency import KV
from unbundled.errors import Error


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def main(url: str, name: str, seed: int, ops: int, stall_at: int) -> None:
    kv = KV.open(url, sync="normal")
    say("ready")
    if sys.stdin.readline().strip() != "go":
        os._exit(4)  # the parent is gone
    client = Client(name, random.Random(seed))
    for number in range(ops):
        input = client.next_input()
        say(f"i {time.monotonic_ns()} {json.dumps(input)}")
        try:
            output = apply(kv, input)
        except Error as exc:
            say(f"x {exc!r}")
            continue
        returned = time.monotonic_ns()
        if 0 <= stall_at <= number and input[0] != "read" and output is not False:
            say("s")  # took effect; the answer is never reported
            sys.stdin.readline()
            os._exit(3)
        say(f"r {returned} {json.dumps(output)}")
        client.observe(input, output)
    kv.close()
    say("done")


if __name__ == "__main__":
    url, name, seed, ops, stall_at = sys.argv[1:]
    main(url, name, int(seed), int(ops), int(stall_at))
