"""Linearizable histories made to order, from a real sequential execution.

Each client runs operations one after another, each in flight for a random
interval; every operation takes effect at a random instant inside its
interval, and the outputs come from running the operations on a real dict in
the order of those instants. The history is therefore linearizable by
construction, whatever the overlap. Some operations can "crash": they never
return, and took effect or not at random. Used by the tests and the
benchmark; also handy to see what a checker makes of a big history.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

from ..history import UNKNOWN, History, Operation

__all__ = ["generate_history"]


def _kv_input(
    rng: random.Random, key: Hashable, values: int, serial: int, appends: bool
) -> tuple[Any, ...]:
    roll = rng.random() if appends else rng.random() * 0.85
    if roll < 0.45:
        return ("get", key)
    if roll < 0.7:
        return ("put", key, f"v{rng.randrange(values)}")
    if roll < 0.85:
        return ("cas", key, f"v{rng.randrange(values)}", f"v{rng.randrange(values)}")
    return ("append", key, f"{serial};")


def _apply(store: dict[Hashable, Any], input: tuple[Any, ...]) -> Any:
    op, key = input[0], input[1]
    current = store.get(key)
    if op == "get":
        return current
    if op == "put":
        store[key] = input[2]
        return None
    if op == "append":
        store[key] = (current or "") + input[2]
        return None
    if op == "cas":
        if current == input[2]:
            store[key] = input[3]
            return True
        return False
    raise AssertionError(op)


def _register_form(input: tuple[Any, ...]) -> tuple[Any, ...]:
    names = {"get": "read", "put": "write"}
    return (names.get(input[0], input[0]), *input[2:])


def generate_history(
    operations: int,
    *,
    keys: int = 1,
    clients: int = 4,
    seed: int = 0,
    crash_rate: float = 0.0,
    values: int = 5,
    overlap: float = 3.0,
    model: str = "kv",
) -> History:
    """A linearizable history of ``operations`` operations.

    ``model="kv"``: inputs for :func:`kv` on ``keys`` keys (get, put, cas,
    append; values are strings; keys start absent). ``model="register"``: one register (read,
    write, cas; ``keys`` is ignored). ``overlap``: mean time an operation is
    in flight, in units of the mean gap between a client's operations; larger
    means more concurrency. ``crash_rate``: the share of operations that never
    return (their client is replaced by a fresh one, as Jepsen does).
    """
    rng = random.Random(seed)
    key_count = 1 if model == "register" else keys
    next_free = [rng.random() for _ in range(clients)]
    client_ids = list(range(clients))
    fresh_id = clients
    planned: list[tuple[float, float, float, Hashable, tuple[Any, ...], bool]] = []
    for serial in range(operations):
        lane = rng.randrange(clients)
        call = next_free[lane] + rng.expovariate(1.0)
        duration = rng.expovariate(1.0 / overlap)
        crashed = rng.random() < crash_rate
        point = call + rng.random() * duration
        key = f"k{rng.randrange(key_count)}"
        planned.append(
            (
                point,
                call,
                call + duration,
                client_ids[lane],
                _kv_input(rng, key, values, serial, model == "kv"),
                crashed,
            )
        )
        next_free[lane] = call + duration
        if crashed:
            client_ids[lane] = fresh_id
            fresh_id += 1
    store: dict[Hashable, Any] = {}
    ops: list[Operation] = []
    for point, call, ret, client, input, crashed in sorted(planned, key=lambda p: p[0]):
        del point
        if crashed:
            if rng.random() < 0.5:
                _apply(store, input)
            output: Any = UNKNOWN
            returned: float | None = None
        else:
            output = _apply(store, input)
            returned = ret
        form = _register_form(input) if model == "register" else input
        ops.append(Operation(client, form, output, call, returned))
    ops.sort(key=lambda o: o.call_time)
    return History.of(ops, source=f"generated(seed={seed})")
