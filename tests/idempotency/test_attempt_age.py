"""An attempt older than the retention period is refused locally: its record
may have expired, been purged and been claimed again by a later request that
restarted at the same fencing token."""

from __future__ import annotations

import time

import pytest

from unbundled import Idempotency, StaleToken


def test_an_attempt_older_than_retention_cannot_complete() -> None:
    with Idempotency.open("memory://", lease_ms=100, retention_ms=150) as idem:
        with (
            pytest.raises(StaleToken, match="older than the retention"),
            idem.run("old-key", {"n": 1}) as attempt,
        ):
            time.sleep(0.2)  # the record expires, could be purged and reused
            assert idem.purge_expired() == 1
            newer = idem._attempt("old-key", {"n": 1}, None)  # a later request, token 1
            assert newer.token == attempt.token == 1
            idem.complete(attempt, "zombie")
        idem.complete(newer, "fresh")
        record = idem.get("old-key")
        assert record is not None and record.result == b'"fresh"'
