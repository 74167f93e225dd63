"""The idempotency contract (``unbundled.testing.idempotency_contract``) on
PostgreSQL, each check in a fresh schema: once with the server's clock (real
short leases) and once with a simulated clock given to the backend."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from unbundled.idempotency import Idempotency
from unbundled.testing.clock import SimClock
from unbundled.testing.idempotency_contract import Check, IdempotencyTarget, all_checks

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("clock", ["server", "sim"])
@pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__.removeprefix("check_"))
def test_idempotency_contract(check: Check, clock: str, pg_url: str) -> None:
    schema = pg_url.rpartition("schema=")[2]
    # The checks' own SQL names its table unqualified: keep it in the test's
    # schema (dropped afterwards), not in the shared database's public schema.
    url = f"{pg_url}&options={quote(f'-csearch_path={schema}')}"

    def open_idem(sim: SimClock | None) -> Idempotency:
        if sim is None:
            return Idempotency.open(url, sync="normal")
        return Idempotency.open(url, sync="normal", clock=sim)

    check(
        IdempotencyTarget(
            "postgres", open_idem, sim_clock=clock == "sim", effects=frozenset({"events", "sql"})
        )
    )
