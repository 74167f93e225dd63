"""The idempotency contract (``unbundled.testing.idempotency_contract``) on
Redis. The server's clock cannot be simulated: the checks run in their
real-clock mode (short real leases, sleeping past them), and with no effects
(a Redis record cannot share a transaction with other writes: NotSupported)."""

from __future__ import annotations

import pytest

from unbundled.idempotency import Idempotency
from unbundled.testing import SimClock
from unbundled.testing.idempotency_contract import Check, IdempotencyTarget, all_checks

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("check", all_checks(), ids=lambda c: c.__name__.removeprefix("check_"))
def test_idempotency_contract(check: Check, redis_url: str) -> None:
    def open_redis(clock: SimClock | None) -> Idempotency:
        assert clock is None, "the redis backend keeps the server's time"
        return Idempotency.open(redis_url)

    check(IdempotencyTarget("redis", open_redis, sim_clock=False, effects=frozenset()))
