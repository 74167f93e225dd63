"""Every error class: stable unique codes, picklable with its details, the
public module name, and the CLI exit status of its family."""

from __future__ import annotations

import pickle

import pytest

import unbundled
from unbundled import errors
from unbundled.errors import Error, exit_status

CLASSES: list[type[Error]] = [
    obj
    for name in errors.__all__
    if isinstance(obj := getattr(errors, name), type) and issubclass(obj, Error)
]

# Codes are part of the interface (programs and the CLI match on them): pinned.
CODES = {
    "Error": "error",
    "UsageError": "usage",
    "Closed": "closed",
    "PartitionNotFound": "partition_not_found",
    "EventSchemaMismatch": "event_schema_mismatch",
    "NotFound": "not_found",
    "TopicNotFound": "topic_not_found",
    "OffsetOutOfRange": "offset_out_of_range",
    "StreamNotFound": "stream_not_found",
    "StreamDeleted": "stream_deleted",
    "SubjectForgotten": "subject_forgotten",
    "ConflictError": "conflict",
    "WrongExpectedVersion": "wrong_expected_version",
    "DuplicateEventId": "duplicate_event_id",
    "CompareFailed": "compare_failed",
    "ProjectionConflict": "projection_conflict",
    "IdempotencyKeyReused": "idempotency_key_reused",
    "RequestInProgress": "request_in_progress",
    "StaleToken": "stale_token",
    "TopicExists": "topic_exists",
    "Fenced": "fenced",
    "StaleGeneration": "stale_generation",
    "ProducerFenced": "producer_fenced",
    "InstanceFenced": "instance_fenced",
    "OutOfOrderSequence": "out_of_order_sequence",
    "LimitExceeded": "limit_exceeded",
    "RecordTooLarge": "record_too_large",
    "CorruptionError": "corruption",
    "BackendError": "backend",
    "Unavailable": "unavailable",
    "Timeout": "timeout",
    "SessionBehind": "session_behind",
    "ThreadFailed": "thread_failed",
    "NotSupported": "not_supported",
}

FAMILIES = {
    errors.UsageError: 2,
    errors.NotFound: 3,
    errors.ConflictError: 4,
    errors.LimitExceeded: 5,
    errors.CorruptionError: 6,
    errors.BackendError: 7,
    errors.NotSupported: 8,
}


def test_every_class_is_listed() -> None:
    assert {cls.__name__ for cls in CLASSES} == set(CODES)


def test_codes_are_stable_and_unique() -> None:
    assert {cls.__name__: cls.code for cls in CLASSES} == CODES
    assert len(set(CODES.values())) == len(CODES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_public_module_and_export(cls: type[Error]) -> None:
    assert cls.__module__ == "unbundled"
    assert getattr(unbundled, cls.__name__) is cls, "exported from the package"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_pickle_keeps_type_message_and_details(cls: type[Error]) -> None:
    err = cls("topic 'orders' is gone", topic="orders", partition=3, offset=None)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err) == "topic 'orders' is gone"
    assert back.details == {"topic": "orders", "partition": 3, "offset": None}
    assert back.topic == "orders" and back.partition == 3, "details read as attributes"
    with pytest.raises(AttributeError):
        _ = back.no_such_detail
    assert (back.code, back.retryable) == (cls.code, cls.retryable)


def test_pickle_keeps_the_cause_free_state() -> None:
    # A traceback or cause must not be needed to rebuild: the crash tests
    # ship errors between processes.
    try:
        raise errors.StaleGeneration("fenced", group="g", member_id="m") from KeyError("x")
    except errors.StaleGeneration as exc:
        back = pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
    assert back.details == {"group": "g", "member_id": "m"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_exit_status_by_family(cls: type[Error]) -> None:
    family = next((f for f in cls.__mro__ if f in FAMILIES), None)
    expected = FAMILIES[family] if family is not None else 1
    assert exit_status(cls("x")) == expected


def test_families() -> None:
    assert issubclass(errors.Closed, errors.UsageError)
    assert issubclass(errors.PartitionNotFound, errors.UsageError)
    assert issubclass(errors.StaleGeneration, errors.Fenced)
    assert issubclass(errors.ProducerFenced, errors.Fenced)
    assert issubclass(errors.Fenced, errors.ConflictError)
    assert issubclass(errors.RecordTooLarge, errors.LimitExceeded)
    assert issubclass(errors.TopicNotFound, errors.NotFound)
    assert issubclass(errors.OffsetOutOfRange, errors.NotFound)
    assert issubclass(errors.Timeout, errors.BackendError)
    assert exit_status(errors.Error("base")) == 1, "the base class is 'unexpected'"


def test_only_transient_errors_are_retryable() -> None:
    retryable = {cls.__name__ for cls in CLASSES if cls.retryable}
    # RequestInProgress: the same request will succeed once the first finishes.
    assert retryable == {"Unavailable", "Timeout", "RequestInProgress", "SessionBehind"}
