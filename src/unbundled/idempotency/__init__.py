"""Idempotency keys: exactly-once effects for retried requests."""

from ._protocol import Claim as Claim
from ._protocol import EffectsTxn as EffectsTxn
from ._protocol import IdempotencyBackend as IdempotencyBackend
from ._protocol import IdempotencyRecord as IdempotencyRecord
from .aio import AsyncIdempotency as AsyncIdempotency
from .api import Attempt as Attempt
from .api import Idempotency as Idempotency
from .api import ReplayedError as ReplayedError
from .decorator import idempotent as idempotent

__all__ = [
    "AsyncIdempotency",
    "Attempt",
    "Claim",
    "EffectsTxn",
    "Idempotency",
    "IdempotencyBackend",
    "IdempotencyRecord",
    "ReplayedError",
    "idempotent",
]
