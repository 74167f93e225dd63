"""Typed documents: a read-model collection whose values are JSON documents
decoded into a type of yours (a ``msgspec.Struct``, a dataclass, a dict...).

>>> import msgspec
>>> class Balance(msgspec.Struct):
...     amount: int = 0
>>> balances = Documents("balances", Balance)
>>> balances.encode(Balance(amount=5))
b'{"amount":5}'

Inside a projection's transaction use :meth:`Documents.get` / :meth:`put` /
:meth:`delete` with the ``txn``; outside, read what is committed with
:meth:`Documents.load` and :meth:`Documents.items` on the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import msgspec

from ._base import EventStoreBase
from ._protocol import ProjectionTxn
from ._read_model import check_collection

T = TypeVar("T")

_PAGE = 1000
_encoder = msgspec.json.Encoder()


class Documents(Generic[T]):
    """The documents of one collection, as values of ``model``."""

    def __init__(self, collection: str, model: type[T]) -> None:
        self.collection = check_collection(collection)
        self.model = model
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(model)

    def encode(self, value: T) -> bytes:
        """``value`` as the JSON bytes a document is stored as (``TypeError`` if
        it cannot be encoded). Pure: no I/O."""
        return _encoder.encode(value)

    def decode(self, data: bytes) -> T:
        """Stored JSON bytes as a ``model`` value; ``msgspec.ValidationError``
        if they do not fit ``model``. Pure: no I/O."""
        return self._decoder.decode(data)

    # --- inside a projection's transaction ---------------------------------------

    def get(self, txn: ProjectionTxn, key: str) -> T | None:
        """The document as this transaction sees it, or None."""
        data = txn.get(self.collection, key)
        return self._decoder.decode(data) if data is not None else None

    def put(self, txn: ProjectionTxn, key: str, value: T) -> None:
        """Insert or replace the document ``key`` inside the projection's
        transaction ``txn``: it commits with the projection's checkpoint, or not at all."""
        txn.put(self.collection, key, _encoder.encode(value))

    def delete(self, txn: ProjectionTxn, key: str) -> None:
        """Delete the document ``key`` inside the projection's transaction
        ``txn`` (no error if there is none)."""
        txn.delete(self.collection, key)

    # --- outside: what is committed ------------------------------------------

    def load(self, store: EventStoreBase, key: str) -> T | None:
        """The committed document, or None."""
        store._check_open()
        data = store.backend.get_document(self.collection, key)
        return self._decoder.decode(data) if data is not None else None

    def items(self, store: EventStoreBase, after: str = "") -> Iterator[tuple[str, T]]:
        """Every committed ``(key, document)`` with a key after ``after``, by key.
        Pages through the collection; a projection committing meanwhile may
        show in later pages only."""
        store._check_open()
        while True:
            page = store.backend.list_documents(self.collection, after, _PAGE)
            for key, data in page:
                yield key, self._decoder.decode(data)
            if len(page) < _PAGE:
                return
            after = page[-1][0]

    def to_dict(self, store: EventStoreBase) -> dict[str, T]:
        """The whole collection in memory (for small read models and tests)."""
        return dict(self.items(store))


def raw_documents(store: EventStoreBase, collection: str) -> dict[str, bytes]:
    """Every committed document of ``collection`` as bytes, by key."""
    store._check_open()
    out: dict[str, bytes] = {}
    after = ""
    while True:
        page = store.backend.list_documents(collection, after, _PAGE)
        out.update(page)
        if len(page) < _PAGE:
            return out
        after = page[-1][0]


__all__ = ["Documents", "raw_documents"]
