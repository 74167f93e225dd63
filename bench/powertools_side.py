"""The competitor's side of ``bench/idempotency_bench.py``: Powertools for AWS
Lambda (Python) v3, its idempotency utility with its Redis persistence layer
(``RedisCachePersistenceLayer``, the same class as ``CachePersistenceLayer``),
used the way its documentation shows outside a Lambda handler:
``@idempotent_function`` with the key taken from the request
(``event_key_jmespath``), no local cache.

Without payload validation, its default: with ``payload_validation_jmespath``
set, this layer (3.37) cannot replay at all. Its ``_update_record`` rewrites
the record with status, expiry and data only, dropping the validation hash
written with the in-progress record, so every retry of a completed key raises
``IdempotencyValidationError`` (the TypeScript twin had the same bug, fixed in
powertools-lambda-typescript#5706). unbundled checks the payload fingerprint
on every call, so the comparison is conservative for unbundled.

Imported only inside ``bench/.venv`` (``bench/requirements.txt``), where the
library is installed; it is never a dependency of unbundled.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import redis
from aws_lambda_powertools.utilities.idempotency import (  # type: ignore[import-not-found]
    IdempotencyConfig,
    idempotent_function,
)

with warnings.catch_warnings():
    # v3 marks the class deprecated in favour of its alias CachePersistenceLayer.
    warnings.simplefilter("ignore")
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # type: ignore[import-not-found]
        RedisCachePersistenceLayer,
    )

VERSION = version("aws-lambda-powertools")


class _Context:
    """The part of a Lambda context the utility reads: the time left, from
    which it sets the in-progress record's expiry (its lease, like ours)."""

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class Side:
    """One idempotent function over Powertools' Redis persistence layer, its
    keys under a fresh ``key_prefix`` (deleted by :meth:`close`)."""

    def __init__(self, host: str, port: int) -> None:
        # The client its docs construct: redis-py, decode_responses=True.
        self.client = redis.Redis(host=host, port=port, decode_responses=True)
        self.prefix = f"bench-powertools-{uuid.uuid4().hex[:12]}"
        self.runs = 0
        layer = RedisCachePersistenceLayer(client=self.client)
        config = IdempotencyConfig(
            event_key_jmespath="key",
            expires_after_seconds=3600,
        )
        config.register_lambda_context(_Context())

        @idempotent_function(  # type: ignore[untyped-decorator]
            data_keyword_argument="request",
            persistence_store=layer,
            config=config,
            key_prefix=self.prefix,
        )
        def handle(request: dict[str, Any]) -> dict[str, Any]:
            self.runs += 1
            return {"charged": request["payload"]["amount"], "order": request["key"]}

        self.handle: Callable[..., dict[str, Any]] = handle

    def call(self, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.handle(request={"key": key, "payload": payload})

    def close(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}#*", count=1000))
        for i in range(0, len(keys), 1000):
            self.client.delete(*keys[i : i + 1000])
        self.client.close()


__all__ = ["VERSION", "Side"]
