"""The transaction's sans-I/O core, shared by the sync and async twins.

Each write is checked as it is added (a bad topic, an ill-typed event, a
stale attempt: the error is raised there and the transaction is as it was)
and kept in a :class:`~._unit.Unit`. Nothing is sent before commit, which
hands the unit to the backend whole; the twins differ only in how they wait.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..consistency.kv import _core as _kv_core
from ..errors import UsageError
from ..eventstore._protocol import ANY
from ..idempotency import _core as _idem_core
from ..log._protocol import AppendItem, OffsetCommit, TopicPartition
from ..log._transaction import offset_commit
from . import _unit

if TYPE_CHECKING:
    from ..eventstore.api import EventInput, EventStoreBase
    from ..eventstore.serialization import Metadata
    from ..idempotency.api import Attempt, IdempotencyBase
    from ..log._consumer import ConsumerCore


class TxKV:
    """Key-value changes inside a transaction (``tx.kv``): the same calls as
    :class:`unbundled.consistency.KV`, applied at commit. A compare-and-set
    that does not match there raises ``CompareFailed`` and nothing of the
    transaction is written."""

    def __init__(self, core: TransactionCore) -> None:
        self._core = core

    def write(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` at commit (its version grows by one)."""
        self._core.check()
        self._core.require(_unit.KV)
        key = _kv_core.check_key(key)
        self._core.unit.kv.append(_unit.KvOp("write", key, _kv_core.check_value(value, key)))

    def compare_and_set(
        self,
        key: str,
        *,
        new: bytes,
        expected_value: bytes | None = _kv_core.UNSET,
        expected_version: int = _kv_core.UNSET,
    ) -> None:
        """Set ``new`` at commit if the key then holds ``expected_value``
        (None: absent) or is at ``expected_version`` (0: absent); give
        exactly one. Otherwise the commit raises ``CompareFailed``."""
        self._core.check()
        self._core.require(_unit.KV)
        key = _kv_core.check_key(key)
        expected = _kv_core.expectation(key, expected_value, expected_version)
        new = _kv_core.check_value(new, key)
        self._core.unit.kv.append(_unit.KvOp("cas", key, new, expected))

    def delete(self, key: str) -> None:
        """Delete ``key`` at commit (its version still grows; an absent key stays absent)."""
        self._core.check()
        self._core.require(_unit.KV)
        self._core.unit.kv.append(_unit.KvOp("delete", _kv_core.check_key(key)))


class TransactionCore:
    """What a transaction holds and how each write is checked; no I/O."""

    def __init__(
        self,
        url: str,
        backend: Any,
        events: Callable[[], EventStoreBase],
        idempotency: Callable[[], IdempotencyBase],
    ) -> None:
        self.url = url
        self.backend = backend
        self._served: frozenset[str] = getattr(backend, "unit_parts", frozenset())
        self._events = events
        self._idempotency = idempotency
        self.unit = _unit.Unit()
        self.consumers: list[tuple[ConsumerCore, OffsetCommit]] = []
        # Per idempotency write: (attempt, result -- or a phase's stored output --, error, kind).
        self.attempts: list[tuple[Attempt, Any, BaseException | None, str]] = []
        self.done = False
        self._kv: TxKV | None = None

    @property
    def kv(self) -> TxKV:
        if self._kv is None:
            self._kv = TxKV(self)
        return self._kv

    def check(self) -> None:
        if self.done:
            raise UsageError("the transaction is already committed or aborted")

    def require(self, part: str) -> None:
        """``NotSupported`` now, at the first write of a part the backend
        cannot commit atomically with the others."""
        if part not in self._served:
            _unit.check_part(part, self.backend, self.url)

    def add_records(self, topic: str, items: Sequence[AppendItem], partitions: int) -> None:
        self.unit.appends.setdefault(topic, []).extend(items)
        self.unit.partitions[topic] = partitions

    def add_offsets(
        self,
        consumer: Any,
        group: str | None,
        offsets: dict[TopicPartition, int] | None,
    ) -> None:
        self.check()
        self.require(_unit.OFFSETS)
        commit = offset_commit(consumer, group, offsets)
        if consumer is not None:
            self.consumers.append((consumer._core, commit))
        self.unit.commits.append(commit)

    def add_events(
        self,
        stream: str,
        events: Sequence[EventInput],
        expected_version: int = ANY,
        ids: Sequence[str | uuid.UUID] | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        self.check()
        self.require(_unit.EVENTS)
        write = self._events()._write(stream, events, expected_version, ids, metadata)
        self.unit.add_events(write)

    def _held(self, attempt: Attempt) -> IdempotencyBase:
        idem = self._idempotency()
        attempt._check_held()
        if any(a is attempt and not kind.startswith("phase:") for a, _, _, kind in self.attempts):
            raise UsageError(f"the attempt at {attempt.key!r} is already completed here")
        return idem

    def add_complete(self, attempt: Attempt, result: Any) -> None:
        self.check()
        self.require(_unit.IDEMPOTENCY)
        idem = self._held(attempt)
        raw = idem._encode_result(result)
        self.unit.idempotency.append(
            _unit.IdemOp("complete", attempt.key, attempt.token, raw, False, idem.retention_ms)
        )
        self.attempts.append((attempt, result, None, "complete"))

    def add_fail(self, attempt: Attempt, error: BaseException) -> None:
        self.check()
        self.require(_unit.IDEMPOTENCY)
        idem = self._held(attempt)
        raw = idem._encode_error(error)
        self.unit.idempotency.append(
            _unit.IdemOp("complete", attempt.key, attempt.token, raw, True, idem.retention_ms)
        )
        self.attempts.append((attempt, None, error, "fail"))

    def add_phase(self, attempt: Attempt, name: str, output: Any) -> None:
        self.check()
        self.require(_unit.IDEMPOTENCY)
        idem = self._held(attempt)
        _idem_core.check_phase(name)
        raw = idem._encode_result(output)
        self.unit.idempotency.append(
            _unit.IdemOp("phase", attempt.key, attempt.token, raw, phase=name)
        )
        self.attempts.append((attempt, raw, None, "phase:" + name))  # the output as stored

    def add_sql(self, call: Callable[[Any], object]) -> None:
        self.check()
        self.require(_unit.SQL)
        if not callable(call):
            raise UsageError(
                f"tx.sql takes a function of the connection, got {type(call).__name__} "
                f"{call!r:.60}",
            )
        self.unit.sql.append(call)

    def finish(self, committed: _unit.Committed) -> _unit.Committed:
        """After a commit: consumers and attempts learn what was stored."""
        for consumer, commit in self.consumers:
            consumer.mark_committed(commit.offsets)
        for attempt, value, error, kind in self.attempts:
            if kind.startswith("phase:"):
                name = kind[len("phase:") :]
                attempt.record = msgspec.structs.replace(
                    attempt.record, phases={**attempt.record.phases, name: value}
                )
                continue
            attempt.completed = True
            attempt.result = value
            attempt.error = error
        return committed
