"""The whole exception hierarchy of unbundled, in one file.

Errors are named by whose fault they are (trio): ``UsageError`` is a bug in the
calling code, ``ConflictError`` is a race another writer won, ``BackendError`` is
the storage's problem, ``CorruptionError`` means stored data cannot be trusted.

Every class has a stable ``code`` string (the CLI's exit status is derived from
it) and a ``retryable`` flag, is picklable (errors cross process boundaries in
the crash tests and in multi-process consumers), and reports its module as
``unbundled`` so tracebacks show the public name.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "Closed",
    "CompareFailed",
    "ConflictError",
    "CorruptionError",
    "DuplicateEventId",
    "Error",
    "EventSchemaMismatch",
    "Fenced",
    "IdempotencyKeyReused",
    "InstanceFenced",
    "LimitExceeded",
    "NotFound",
    "NotSupported",
    "OffsetOutOfRange",
    "OutOfOrderSequence",
    "PartitionNotFound",
    "ProjectionConflict",
    "ProducerFenced",
    "RecordTooLarge",
    "RequestInProgress",
    "SessionBehind",
    "StaleGeneration",
    "StaleToken",
    "StreamDeleted",
    "StreamNotFound",
    "SubjectForgotten",
    "ThreadFailed",
    "Timeout",
    "TopicExists",
    "TopicNotFound",
    "Unavailable",
    "UsageError",
    "WrongExpectedVersion",
    "exit_status",
]


class Error(Exception):
    """Base class of every error unbundled raises on purpose.

    ``details`` holds the offending values by name (``topic``, ``offset``...),
    so programs can react without parsing the message.
    """

    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce drops keyword arguments; keep them.
        return (_rebuild, (type(self), self.message, self.details))

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details", {})
        if name in details:
            return details[name]
        raise AttributeError(name)


def _rebuild(cls: type[Error], message: str, details: dict[str, Any]) -> Error:
    return cls(message, **details)


# --- the caller's fault -------------------------------------------------------


class UsageError(Error):
    """A bad argument, a closed object, a call in the wrong state: fix the caller.

    Raised before anything is written, so a ``UsageError`` never leaves partial
    effects behind.
    """

    code = "usage"


class Closed(UsageError):
    """The object (log, consumer, producer) was closed; open a new one."""

    code = "closed"


class PartitionNotFound(UsageError):
    """A partition number outside ``0 .. partitions-1`` of the topic."""

    code = "partition_not_found"


class EventSchemaMismatch(UsageError):
    """A stored event does not decode under today's event class: its schema
    drifted (a field's type changed, a field was added without a default, an
    upcaster is missing, or the event is newer than the code).

    The stored event is intact (on SQLite its checksum passed): the code
    reading it is out of date. Register an upcaster, or fix the class.
    ``details`` names the ``event_type``, its stored ``schema_version``, the
    ``field`` (a path such as ``$.amount``; ``None`` when the whole event is
    concerned) and, on reads, where it is: ``stream``, ``version``,
    ``position``, ``event_id``; ``raw`` is the stored
    :class:`~unbundled.eventstore.RecordedEvent`, also readable with
    ``EventStore.read_raw``. Not raised for a checksum failure (that is
    ``CorruptionError``), nor at append: an event that does not fit its own
    class is refused there with a plain ``UsageError``.
    """

    code = "event_schema_mismatch"


# --- not there ----------------------------------------------------------------


class NotFound(Error):
    """The named thing does not exist (any more)."""

    code = "not_found"


class TopicNotFound(NotFound):
    """The topic was never created, or was deleted. Topics are never implicit."""

    code = "topic_not_found"


class OffsetOutOfRange(NotFound):
    """An offset before the log start (removed by retention or compaction) or
    after the end of the partition. ``details`` has the valid range."""

    code = "offset_out_of_range"


class StreamNotFound(NotFound):
    """The event stream never existed, or was soft-deleted."""

    code = "stream_not_found"


class StreamDeleted(NotFound):
    """The event stream was hard-deleted (tombstoned): it cannot be read or reused."""

    code = "stream_deleted"


class SubjectForgotten(NotFound):
    """The subject's personal data was crypto-shredded: its key is gone."""

    code = "subject_forgotten"


# --- another writer won -------------------------------------------------------


class ConflictError(Error):
    """Another writer changed the state this call depended on; nothing was written."""

    code = "conflict"


class TopicExists(ConflictError):
    """``create_topic`` with a name that is taken (with different settings)."""

    code = "topic_exists"


class WrongExpectedVersion(ConflictError):
    """An append's expected version did not match the stream's.

    ``details`` names the ``stream``, the ``expected`` and the ``actual``
    version. Nothing of the append (nor of the other streams of a
    multi-stream append) was written: reload, decide again, retry.
    """

    code = "wrong_expected_version"


class DuplicateEventId(ConflictError):
    """An event id already stored with different content (or in another
    stream). A true retry (same ids, same content) is not an error: it returns
    the original positions."""

    code = "duplicate_event_id"


class CompareFailed(ConflictError):
    """A compare-and-set inside a transaction found the key at another value
    or version. ``details`` names the ``key``, what was ``expected`` and the
    ``version`` it has (0: absent). Nothing of the transaction was written.
    (Outside a transaction ``KV.compare_and_set`` returns False instead.)"""

    code = "compare_failed"


class ProjectionConflict(ConflictError):
    """A projection's checkpoint moved under a runner (another runner of the
    same projection committed first); nothing of this batch was applied."""

    code = "projection_conflict"


class IdempotencyKeyReused(ConflictError):
    """An idempotency key sent again with a different request (its
    fingerprint differs): HTTP 422. The first request's result is not returned."""

    code = "idempotency_key_reused"


class RequestInProgress(ConflictError):
    """The first request with this idempotency key is still running (its lease
    is live): HTTP 409. Retry later, or ask to wait for its result."""

    code = "request_in_progress"
    retryable = True


class Fenced(ConflictError):
    """A newer owner took over; this (zombie) writer must stop, not retry."""

    code = "fenced"


class StaleGeneration(Fenced):
    """A consumer-group member committed offsets for a partition it no longer owns.

    The partition was reassigned by a rebalance (another member joined, or this
    member's lease expired). The commit was rejected so it cannot overwrite the
    new owner's progress; the records will be delivered again to the new owner.
    """

    code = "stale_generation"


class StaleToken(Fenced):
    """An idempotency attempt whose lease expired tried to complete, record a
    phase or release: another attempt (with a higher fencing token) took
    over, so this one's result is rejected."""

    code = "stale_token"


class ProducerFenced(Fenced):
    """Another producer opened with the same producer id after this one."""

    code = "producer_fenced"


# Static group membership (issue 9, item 7).
class InstanceFenced(Fenced):
    """Another consumer joined the group with this consumer's ``instance_id``
    after it (static membership): the newer one took over this one's
    partitions, so this one must stop (close it), not retry.

    Raised by ``poll()`` of the replaced consumer once it notices; its
    commits meanwhile raise ``StaleGeneration``. Not raised to a static
    consumer whose lease merely ran out while no other consumer used its
    instance id: that one joins the group again, as any member does.
    """

    code = "instance_fenced"


class OutOfOrderSequence(ConflictError):
    """An idempotent-producer sequence number not above the last one written and
    not among the recent ones remembered for that producer."""

    code = "out_of_order_sequence"


# --- too big ------------------------------------------------------------------


class LimitExceeded(Error):
    """A value exceeds a bound from :mod:`unbundled.limits` or the topic config."""

    code = "limit_exceeded"


class RecordTooLarge(LimitExceeded):
    """A record larger than the topic's ``record_bytes_max``."""

    code = "record_too_large"


# --- the data cannot be trusted -----------------------------------------------


class CorruptionError(Error):
    """Stored data failed a checksum, an ordering check, or is not ours at all.

    Never retried and never papered over: unbundled stops rather than return
    garbage. Restore from a replica or backup.
    """

    code = "corruption"


# --- the backend's fault ------------------------------------------------------


class BackendError(Error):
    """The storage failed for a reason outside the caller's control."""

    code = "backend"


class Unavailable(BackendError):
    """The backend cannot be reached or is busy; retrying later may succeed."""

    code = "unavailable"
    retryable = True


class Timeout(BackendError):
    """The operation did not finish in time; its outcome may be unknown."""

    code = "timeout"
    retryable = True


class SessionBehind(Unavailable):
    """A replica has not yet applied everything a client's session (or the
    causal context it passed) has seen, so serving it would break
    read-your-writes or monotonic reads. Nothing was read or written. Retry
    later, wait, or ask another replica: ``details`` names the ``replica``
    and the ``missing`` updates (origin to sequence number)."""

    code = "session_behind"


# --- issue 9 (threads): a background thread failed ---------------------------


class ThreadFailed(BackendError):
    """A background thread of unbundled failed with an unexpected exception:
    the group-commit writer (or the maintenance it runs between batches), the
    PostgreSQL listener, or a subscription worker's reads.

    The call that was waiting on the thread, and every later call that needs
    it, raises this error at once, chained from the original exception
    (``__cause__``); ``details`` name the ``thread`` and the ``cause``. Before
    failing, the thread rolled back its open transaction and released its
    locks, so other processes can write. Close the object and open it again.

    You don't get it for the ordinary failure of one request (a conflict, a
    bad argument, a busy database): that goes to its own caller and the
    thread carries on.
    """

    code = "thread_failed"


class NotSupported(Error):
    """The chosen backend does not offer this capability. Never a silent downgrade."""

    code = "not_supported"


# Exit statuses for the CLI, one per family; 1 stays "unexpected failure".
_EXIT_STATUS: dict[type[Error], int] = {
    UsageError: 2,
    NotFound: 3,
    ConflictError: 4,
    LimitExceeded: 5,
    CorruptionError: 6,
    BackendError: 7,
    NotSupported: 8,
}


def exit_status(error: Error) -> int:
    """The process exit status the CLI uses for ``error`` (by family)."""
    for cls in type(error).__mro__:
        if cls in _EXIT_STATUS:
            return _EXIT_STATUS[cls]
    return 1


for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = "unbundled"
