"""One database, unbundled: the parts over one engine, and one transaction across them.

``unbundled.open(url)`` returns a :class:`Database`. Its parts -- ``db.log``,
``db.events``, ``db.idempotency``, ``db.kv`` -- share the backend (on SQLite
one group-commit writer and one file; on PostgreSQL one connection pool) and
its lifetime: closing a part ends that handle only; closing the database
closes the backend. ``with db.transaction() as tx:`` commits writes to any of
them together, or none of them (see docs/explanation/transactions.md).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._ground import SyncLevel
from .._ground.waiters import SyncWaiter
from ..consistency.kv.api import KV
from ..errors import Closed, TopicNotFound
from ..eventstore._base import EventStoreBase
from ..eventstore._protocol import ANY
from ..eventstore.api import EventInput, EventStore
from ..eventstore.serialization import Metadata
from ..idempotency.api import Attempt, Idempotency, IdempotencyBase
from ..log import AsyncConsumer, Consumer
from ..log._base import LogBase
from ..log._protocol import Headers, Message, TopicPartition
from ..log.api import Log
from ..transaction import _unit, capabilities
from ..transaction._core import TransactionCore, TxKV

__all__ = ["Database", "Transaction", "TransactionBase", "open"]

T = TypeVar("T")
LogT = TypeVar("LogT", bound=LogBase)  # the log's facade (Log, AsyncLog)
EventsT = TypeVar("EventsT", bound=EventStoreBase)  # the event store's
IdemT = TypeVar("IdemT", bound=IdempotencyBase)  # idempotency's

_IDEMPOTENCY_SETTINGS = {
    "lease_ms",
    "retention_ms",
    "fingerprint",
    "deterministic",
    "encode",
    "decode",
}


def open(
    url: str | os.PathLike[str] = "unbundled.db",
    *,
    sync: SyncLevel = "full",
    events: Iterable[type[Any]] = (),
    **options: Any,
) -> Database:
    """Open the database at ``url`` (a SQLite path or ``sqlite:///path.db``,
    ``memory://``, ``postgresql://user@host/db?schema=name``, ...). ``events``
    registers event types with ``db.events``; idempotency settings
    (``lease_ms``, ``retention_ms``, ``fingerprint``, ``deterministic``,
    ``encode``, ``decode``) configure ``db.idempotency``; the other options
    go to the backend. A part the backend does not serve raises
    ``NotSupported`` when it is first used, naming the part and the URL."""
    from ..backends import open_kv_backend

    settings = {k: options.pop(k) for k in list(options) if k in _IDEMPOTENCY_SETTINGS}
    backend = open_kv_backend(url, sync=sync, **options)
    return Database(backend, events=events, idempotency=settings)


class DatabaseBase(Generic[LogT, EventsT, IdemT]):
    """The parts and their lifetime, shared by the sync and async twins."""

    def __init__(
        self,
        backend: Any,
        *,
        events: Iterable[type[Any]] = (),
        idempotency: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.url: str = getattr(backend, "url", None) or getattr(backend, "path", "") or "memory://"
        self._event_types = tuple(events)
        self._idempotency_settings = dict(idempotency or {})
        self._parts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"the database at {self.url} is closed")

    def _part(self, name: str, part: str, make: Callable[[], T]) -> T:
        """The facade of ``part`` (made once, shared); ``NotSupported`` naming
        the capability the backend lacks for it."""
        found: T | None = self._parts.get(name)
        if found is not None:
            return found
        with self._lock:
            self._check_open()
            made: T | None = self._parts.get(name)
            if made is None:
                capabilities.require(self.backend, part, self.url)
                made = make()
                made._shared = True  # type: ignore[attr-defined]
                self._parts[name] = made
        return made

    def _close_parts(self) -> list[Any]:
        with self._lock:
            self._closed = True
            parts, self._parts = list(self._parts.values()), {}
        return parts

    def _transaction_core(self) -> TransactionCore:
        self._check_open()
        return TransactionCore(self.url, self.backend, self._events_part, self._idem_part)

    # The facades of the parts, set by the sync and async twins.
    _log_type: Callable[[Any], LogT]
    _events_type: Callable[..., EventsT]
    _idem_type: Callable[..., IdemT]

    def _log_part(self) -> LogT:
        return self._part("log", capabilities.LOG, lambda: self._log_type(self.backend))

    def _events_part(self) -> EventsT:
        return self._part(
            "event store",
            capabilities.EVENTS,
            lambda: self._events_type(self.backend, events=self._event_types),
        )

    def _idem_part(self) -> IdemT:
        return self._part(
            "idempotency keys",
            capabilities.IDEMPOTENCY,
            lambda: self._idem_type(self.backend, **self._idempotency_settings),
        )

    def _kv_part(self) -> KV:
        return self._part("key-value store", capabilities.KV, lambda: KV(self.backend))


class Database(DatabaseBase[Log, EventStore, Idempotency]):
    """The parts of unbundled over one backend; see :func:`unbundled.open`."""

    _log_type = Log
    _events_type = EventStore
    _idem_type = Idempotency

    @property
    def log(self) -> Log:
        """The log (:class:`unbundled.Log`) on this database's backend."""
        return self._log_part()

    @property
    def events(self) -> EventStore:
        """The event store (:class:`unbundled.EventStore`) on this database's backend."""
        return self._events_part()

    @property
    def idempotency(self) -> Idempotency:
        """Idempotency keys (:class:`unbundled.Idempotency`) on this database's backend."""
        return self._idem_part()

    @property
    def kv(self) -> KV:
        """The key-value store (:class:`unbundled.consistency.KV`) on this database's backend."""
        return self._kv_part()

    def transaction(self) -> Transaction:
        """``with db.transaction() as tx:`` -- writes to every part that
        commit together when the block ends, or not at all; see :class:`Transaction`."""
        return Transaction(self)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every part and the backend (a SQLite or PostgreSQL backend
        finishes its queued writes first). Idempotent."""
        if self._closed:
            return
        for part in self._close_parts():
            part.close()
        self.backend.close()


class TransactionBase:
    """What the sync and async transactions share: every write but the
    log's (whose topic settings the async twin may have to await), and
    how a commit starts and ends."""

    def __init__(self, db: DatabaseBase[Any, Any, Any]) -> None:
        self._db = db
        self._core = db._transaction_core()
        self.result: _unit.Committed | None = None

    @property
    def kv(self) -> TxKV:
        """Key-value changes in this transaction (``write``, ``compare_and_set``, ``delete``)."""
        return self._core.kv

    def commit_offsets(
        self,
        consumer: Consumer | AsyncConsumer | None = None,
        *,
        group: str | None = None,
        offsets: dict[TopicPartition, int] | None = None,
    ) -> None:
        """Commit a consumer's positions (fenced by its generation: a member
        that lost a partition meanwhile makes the commit raise
        ``StaleGeneration``), or ``offsets`` for a ``group`` without members."""
        self._core.add_offsets(consumer, group, offsets)

    def append_events(
        self,
        stream: str,
        events: Sequence[EventInput],
        expected_version: int = ANY,
        *,
        ids: Sequence[str | uuid.UUID] | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        """Append events to ``stream`` if it is at ``expected_version`` at
        commit (checked and serialized now, as :meth:`unbundled.EventStore.append`
        does). A second call for the same stream extends the first: its
        expected version must follow from the first's, or be ``ANY``."""
        self._core.add_events(stream, events, expected_version, ids, metadata)

    def complete(self, attempt: Attempt, result: Any) -> None:
        """Store ``result`` for an idempotency attempt at commit (fenced:
        ``StaleToken`` if another attempt took the key over)."""
        self._core.add_complete(attempt, result)

    def fail(self, attempt: Attempt, error: BaseException) -> None:
        """Store a deterministic error for an attempt at commit: retries get it again."""
        self._core.add_fail(attempt, error)

    def record_phase(self, attempt: Attempt, name: str, output: Any) -> None:
        """Record an attempt's recovery point ``name`` with ``output`` at commit."""
        self._core.add_phase(attempt, name, output)

    def sql(self, call: Callable[[Any], object]) -> None:
        """Run ``call(connection)`` at commit, inside the transaction, after
        the other parts (SQLite, PostgreSQL; ``NotSupported`` elsewhere).
        Its return value is in ``result.sql``; an exception aborts it all.
        Never commit or roll back in it."""
        self._core.add_sql(call)

    def abort(self) -> None:
        """Discard everything; nothing of this transaction is written. Idempotent."""
        self._core.done = True
        self._core.unit = _unit.Unit()

    def _unit_to_send(self) -> _unit.Unit | None:
        """Finish the transaction; the unit to commit, or None if it is empty."""
        core = self._core
        core.check()
        core.done = True
        if not core.unit:
            self.result = _unit.EMPTY
            return None
        self._db._check_open()
        return core.unit

    def _forget_topics(self) -> None:
        """After ``TopicNotFound``: a topic was deleted since, forget the settings."""
        log = self._db._parts.get("log")
        if log is not None:
            log._configs.clear()

    def _committed(self, committed: _unit.Committed) -> _unit.Committed:
        self.result = self._core.finish(committed)
        return self.result


class Transaction(TransactionBase):
    """Writes to the log, the event store, idempotency keys, the key-value
    store and (on SQL backends) your own tables, committed atomically.

    Each write is checked when it is added (and raises there, leaving the
    transaction as it was); nothing is sent until the ``with`` block ends
    without an exception, or :meth:`commit` is called. Then everything
    becomes visible at once, or -- on any conflict (``WrongExpectedVersion``,
    ``StaleGeneration``, ``StaleToken``, ``CompareFailed``) or error --
    nothing does. Conflicts are checked in one order on every backend:
    records and offsets, events, idempotency results, key-value changes,
    SQL. A part the backend cannot commit atomically with the rest raises
    ``NotSupported`` when it is added. Reads inside the block do not see
    the transaction's own writes.
    """

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._core.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | dict[str, bytes] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> None:
        """Add one log record; the arguments and checks are :meth:`unbundled.Log.append`'s."""
        core = self._core
        core.check()
        core.require(_unit.RECORDS)
        log = self._db._log_part()
        config = log._configs.get(topic) or log._config(topic)
        items = log._prepare_one(topic, config, value, key, headers, timestamp, partition)
        core.add_records(topic, items, config.partitions)

    def append_batch(self, topic: str, messages: Iterable[bytes | Message]) -> None:
        """Add log records for ``topic``, in order (checked now, written at commit)."""
        self._core.check()
        self._core.require(_unit.RECORDS)
        log = self._db._log_part()
        config = log._config(topic)
        self._core.add_records(topic, log._items(topic, config, messages), config.partitions)

    def commit(self) -> _unit.Committed:
        """Write everything added, atomically, and return what was written
        (also kept in :attr:`result`). Blocks until durable. Either way the
        transaction is finished; start a new one to try again."""
        unit = self._unit_to_send()
        if unit is None:
            return _unit.EMPTY
        waiter = SyncWaiter()
        self._core.backend.submit_unit(unit, waiter)
        try:
            committed: _unit.Committed = waiter.wait()
        except TopicNotFound:
            self._forget_topics()
            raise
        return self._committed(committed)
