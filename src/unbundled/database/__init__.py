"""One database: the parts of unbundled over one backend, and one transaction across them.

``db = unbundled.open(url)`` gives ``db.log``, ``db.events``,
``db.idempotency`` and ``db.kv`` over one engine; ``with db.transaction()
as tx:`` commits an event append, a log record (the outbox), an idempotency
result, a consumer's offsets and key-value changes together, or none of
them. See docs/explanation/transactions.md for the guarantees per backend.
"""

from ..transaction import Committed as Committed
from ..transaction import TxKV as TxKV
from .aio import AsyncDatabase as AsyncDatabase
from .aio import AsyncTransaction as AsyncTransaction
from .aio import open_async as open_async
from .api import Database as Database
from .api import Transaction as Transaction
from .api import open as open

__all__ = [
    "AsyncDatabase",
    "AsyncTransaction",
    "Committed",
    "Database",
    "Transaction",
    "TxKV",
    "open",
    "open_async",
]
