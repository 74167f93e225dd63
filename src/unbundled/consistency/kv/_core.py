"""Pure rules of the key-value store: validation, and the decisions every
backend makes the same way (the memory backend calls them directly, SQLite
calls them inside its writer's transaction, PostgreSQL states them in SQL).

A stored slot is ``(value, version)``, with ``value`` None for a tombstone
(a deleted key keeps its last version, so versions never repeat).
"""

from __future__ import annotations

from typing import Any

from ... import limits
from ...errors import LimitExceeded, UsageError
from ._protocol import Expect

Slot = tuple[bytes | None, int]


class _Unset:
    """The default of ``expected_value=`` / ``expected_version=``: not given
    (``None`` is a meaningful expectation: "absent")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def check_key(key: object) -> str:
    """``key`` if it is a usable key; ``UsageError`` naming it otherwise."""
    if type(key) is not str:
        raise UsageError(f"a key must be a str, got {type(key).__name__} {key!r}", key=key)
    if not key:
        raise UsageError("a key must not be empty", key=key)
    if "\x00" in key:
        # PostgreSQL text cannot hold NUL; refuse it everywhere alike.
        raise UsageError(f"key {key!r} contains a NUL character", key=key)
    try:
        size = len(key.encode())
    except UnicodeEncodeError as exc:
        raise UsageError(f"key {key!r} is not valid Unicode text ({exc.reason})", key=key) from exc
    if size > limits.kv_key_bytes_max:
        raise UsageError(
            f"key {key[:40]!r}... is {size} bytes; the limit is {limits.kv_key_bytes_max}",
            key=key,
            size=size,
        )
    return key


def check_value(value: object, key: str, name: str = "value") -> bytes:
    """``value`` as bytes; ``UsageError`` naming the key for a value that is
    not bytes (we never guess an encoding), ``LimitExceeded`` if too large."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise UsageError(
            f"the {name} for key {key!r} must be bytes, got {type(value).__name__} "
            f"{value!r:.60}; encode it first (e.g. text.encode())",
            key=key,
        )
    if len(data) > limits.kv_value_bytes_max:
        raise LimitExceeded(
            f"the {name} for key {key!r} is {len(data)} bytes; the limit is "
            f"{limits.kv_value_bytes_max}",
            key=key,
            size=len(data),
        )
    return data


def expectation(key: str, expected_value: Any, expected_version: Any) -> Expect:
    """The :class:`Expect` of a compare-and-set: exactly one of the two must be given."""
    if (expected_value is UNSET) == (expected_version is UNSET):
        raise UsageError(
            f"compare_and_set on key {key!r} needs exactly one of expected_value= "
            "(the value it must hold; None: absent) or expected_version= "
            "(the version it must have; 0: absent)",
            key=key,
        )
    if expected_version is not UNSET:
        if type(expected_version) is not int or not 0 <= expected_version <= limits.position_max:
            raise UsageError(
                f"expected_version for key {key!r} must be an int 0..{limits.position_max} "
                "(0: absent), "
                f"got {expected_version!r}",
                key=key,
                expected_version=expected_version,
            )
        return Expect(expected_version, None)
    if expected_value is None:
        return Expect(None, None)
    return Expect(None, check_value(expected_value, key, "expected value"))


def matches(slot: Slot | None, expected: Expect) -> bool:
    """Does the stored slot satisfy the compare-and-set's condition?"""
    value, version = slot if slot is not None else (None, 0)
    if expected.version is not None:
        if expected.version == 0:
            return value is None
        return value is not None and version == expected.version
    return value == expected.value  # None == None: absent expected, absent found


def next_version(slot: Slot | None) -> int:
    """The version a change of this slot gets: one more, never reused."""
    return 1 if slot is None else slot[1] + 1
