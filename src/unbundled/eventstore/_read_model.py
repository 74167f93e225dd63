"""What a projection's read model is made of, stored beside it, so that a
rebuild can reset all of it: from the API, and from the CLI, which has no
:class:`~unbundled.eventstore.Projection` class to ask.

Each projection's *description* is a document of the reserved collection
``$projections`` (the key is the projection's name): the document
collections it declared or ever wrote to, whether its handlers ran SQL
(``txn.sql``), and whether it has a ``reset()`` hook to empty its SQL
tables. The runner keeps it current inside the transactions of its own
batches (so it is exactly as durable as what it describes) through
:class:`TrackedTxn`, the transaction its handlers see.

A rebuild then runs, in one transaction with the checkpoint's reset to 0,
:func:`reset_read_model`: empty every described collection, call
``reset()``, or refuse (``UsageError``, nothing changed) when the projection
wrote SQL tables and has no ``reset()`` to empty them: replaying every event
into tables that still hold the old rows would apply each event twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ..errors import CorruptionError, UsageError
from ._protocol import ProjectionTxn

DESCRIPTIONS = "$projections"  # the reserved collection of descriptions

Reset = Callable[[ProjectionTxn], None]


class Description(msgspec.Struct, frozen=True, kw_only=True):
    """A projection's read model, as a rebuild needs to know it."""

    collections: tuple[str, ...] = ()  # sorted: equal sets compare equal
    sql: bool = False  # its handlers (or reset) used txn.sql
    reset: bool = False  # it defines reset(), which empties its SQL tables


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Description).decode


def load(name: str, raw: bytes | None) -> Description | None:
    """The stored description of projection ``name`` (None: never described)."""
    if raw is None:
        return None
    try:
        return _decode(raw)
    except msgspec.DecodeError as exc:
        raise CorruptionError(
            f"the stored description of projection {name!r} does not decode: {exc}",
            projection=name,
        ) from None


def check_collection(collection: object) -> str:
    """A read-model collection: a non-empty string not starting with ``$``
    (reserved for the library's own, like ``$projections``)."""
    if type(collection) is not str or not collection or collection.startswith("$"):
        raise UsageError(
            f"a document collection is named by a non-empty string not starting with '$', "
            f"got {collection!r}",
            collection=collection,
        )
    return collection


def merged(
    stored: Description | None, collections: Iterable[str], sql: bool, reset: bool
) -> Description:
    """``stored`` extended with what was seen since (collections and SQL are
    never forgotten: a rebuild must still reset them); ``reset`` is today's."""
    known = set(stored.collections) if stored is not None else set()
    return Description(
        collections=tuple(sorted(known.union(collections))),
        sql=sql or (stored is not None and stored.sql),
        reset=reset,
    )


class TrackedTxn:
    """The transaction a projection's handlers see: the backend's, noting
    which collections they write and whether they run SQL, so the stored
    description stays complete (:meth:`save`, in the same transaction)."""

    def __init__(
        self,
        txn: ProjectionTxn,
        name: str,
        declared: Iterable[str],
        has_reset: bool,
        stored: Description | None = None,
    ) -> None:
        """``stored``: the description as this transaction reads it (read here if None)."""
        self._txn = txn
        self._name = name
        self._stored = stored if stored is not None else load(name, txn.get(DESCRIPTIONS, name))
        self._has_reset = has_reset
        self._known = set(declared)
        if self._stored is not None:
            self._known.update(self._stored.collections)
        self._used_sql = False

    @property
    def collections(self) -> set[str]:
        """Every collection of the read model: declared, described or written."""
        return set(self._known)

    def _note(self, collection: str) -> None:
        self._known.add(check_collection(collection))

    def get(self, collection: str, key: str) -> bytes | None:
        return self._txn.get(collection, key)

    def put(self, collection: str, key: str, value: bytes) -> None:
        if collection not in self._known:
            self._note(collection)
        self._txn.put(collection, key, value)

    def delete(self, collection: str, key: str) -> None:
        if collection not in self._known:
            self._note(collection)
        self._txn.delete(collection, key)

    def clear(self, collection: str) -> None:
        if collection not in self._known:
            self._note(collection)
        self._txn.clear(collection)

    @property
    def sql(self) -> Any:
        connection = self._txn.sql
        self._used_sql = True
        return connection

    def save(self) -> Description:
        """Store the description if this transaction taught it something."""
        description = merged(self._stored, self._known, self._used_sql, self._has_reset)
        if description != self._stored:
            self._txn.put(DESCRIPTIONS, self._name, _encode(description))
            self._stored = description
        return description


def reset_read_model(
    txn: ProjectionTxn,
    name: str,
    *,
    declared: Iterable[str] = (),
    extra: Iterable[str] = (),
    reset: Reset | None = None,
    has_reset: bool | None = None,
) -> Description:
    """The body of a rebuild's transaction (the caller moves the checkpoint
    to 0 in the same one): empty every collection of the read model, then
    run ``reset`` (the projection's hook). ``has_reset`` None means the
    caller has no Projection class (the CLI): the stored description must
    say. Raises ``UsageError`` (the transaction rolls back: nothing
    changed) if the read model cannot be reset. Returns what was reset."""
    stored = load(name, txn.get(DESCRIPTIONS, name))
    if has_reset is None:
        if stored is None:
            raise UsageError(
                f"projection {name!r} has no stored description of its read model (its runner "
                "last ran with an older unbundled): start its runner once, or rebuild it from "
                "your application with ProjectionRunner.rebuild(); nothing was changed",
                projection=name,
            )
        has_reset = stored.reset
    if stored is not None and stored.sql and not has_reset:
        raise UsageError(
            f"projection {name!r} writes SQL tables (txn.sql) but has no reset(): a rebuild "
            "cannot empty them and replaying every event into them would apply each one "
            "twice. Give it a reset() that empties its tables, run its runner once, and "
            "rebuild again; nothing was changed",
            projection=name,
        )
    tracked = TrackedTxn(txn, name, declared, has_reset, stored)
    for collection in sorted(tracked.collections.union(map(check_collection, extra))):
        txn.clear(collection)
    if reset is not None:
        reset(tracked)
    return tracked.save()
