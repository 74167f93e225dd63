"""The idempotency contract (``unbundled.testing.idempotency_contract``) on
every backend of the matrix that serves idempotency keys (``tests/matrix.py``).

Each backend runs it in the clock modes it has: a simulated clock (leases
expire exactly when a check says) where the backend takes one, and the real
clock (short real leases, sleeping past them) on the servers, whose time is
the server's. Effects join the result's transaction on the backends with
transactions (events; and SQL where there is SQL); Redis refuses them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote

import pytest

from tests import matrix
from unbundled.idempotency import Idempotency
from unbundled.testing import SimClock
from unbundled.testing.idempotency_contract import Check, IdempotencyTarget, all_checks

# The clock modes of each backend: "sim" (a SimClock given to the backend)
# and "real" (the wall clock, or the server's).
_MODES = {
    "memory": ("sim",),
    "sqlite": ("sim", "real"),
    "postgres": ("sim", "real"),
    "redis": ("real",),
    "nats": ("sim", "real"),
}
Effect = Literal["events", "sql"]
_EFFECTS: dict[str, frozenset[Effect]] = {
    "memory": frozenset({"events"}),
    "sqlite": frozenset({"events", "sql"}),
    "postgres": frozenset({"events", "sql"}),
    "redis": frozenset(),
    "nats": frozenset(),
}
CASES = [
    pytest.param(
        param.values[0],
        mode,
        check,
        id=f"{param.id}-{mode}-{check.__name__.removeprefix('check_')}",
        # The wall clock on SQLite is a second run of what "sim" checks.
        marks=[
            *param.marks,
            *([pytest.mark.slow] if (param.id, mode) == ("sqlite", "real") else []),
        ],
    )
    for param in matrix.params(matrix.IDEMPOTENCY)
    for mode in _MODES[param.id]
    for check in all_checks()
]


def _options(backend: str, url: str) -> tuple[str, dict[str, object]]:
    if backend == "sqlite":
        return url, {"sync": "off", "maintenance_interval_s": None}
    if backend == "postgres":
        # The checks' own SQL names its table unqualified: keep it in the
        # test's schema (dropped afterwards), not in the public schema.
        schema = url.rpartition("schema=")[2]
        return f"{url}&options={quote(f'-csearch_path={schema}')}", {"sync": "normal"}
    return url, {}


@pytest.mark.parametrize(("backend", "mode", "check"), CASES)
def test_idempotency_contract(backend: str, mode: str, check: Check, tmp_path: Path) -> None:
    with matrix.isolated(backend, tmp_path, "idem") as isolated:
        url, options = _options(backend, isolated)

        def open_idem(clock: SimClock | None) -> Idempotency:
            if mode == "sim":
                assert clock is not None
                return Idempotency.open(url, clock=clock, **options)  # type: ignore[arg-type]
            assert clock is None, "the real-clock mode keeps the wall clock"
            return Idempotency.open(url, **options)  # type: ignore[arg-type]

        check(
            IdempotencyTarget(
                backend, open_idem, sim_clock=mode == "sim", effects=_EFFECTS[backend]
            )
        )
