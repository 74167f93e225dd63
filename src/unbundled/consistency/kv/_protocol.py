"""The linearizable key-value store's records and backend protocol.

A key holds a value (bytes) and a version. Every change of a key (a write, a
successful compare-and-set, a delete) increments its version by exactly one;
versions are never reused, not even after a delete: a deleted key keeps a
tombstone row with its last version, so a compare-and-set by version can
never mistake a re-created key for the one it read (no ABA).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class Versioned(NamedTuple):
    """What :meth:`KVBackend.kv_read` returns for a live key: ``value, version = got``."""

    value: bytes
    version: int


class Expect(NamedTuple):
    """The condition of a compare-and-set, checked atomically with the write.

    ``version`` set: the key must be live at exactly this version (``0``:
    the key must be absent, never written or deleted). Otherwise ``value``:
    the key must be live with exactly this value (``None``: absent). The
    facade builds it from ``expected_version=`` / ``expected_value=``.
    """

    version: int | None
    value: bytes | None


@runtime_checkable
class KVBackend(Protocol):
    """Storage for the key-value store. Each method is atomic and linearizable:
    it takes effect at one instant between its call and its return, and what
    it returns is the state at that instant. Safe to call from any thread.

    Keys and values arrive validated (``kv._core.check_key`` / ``check_value``).
    """

    def kv_read(self, key: str) -> Versioned | None:
        """The key's value and version, or None if it is absent (never
        written, or deleted). Sees every change that returned before the
        call. Never writes."""

    def kv_write(self, key: str, value: bytes) -> int:
        """Set the value unconditionally; return the new version (1 for a
        key never written, the tombstone's version + 1 for a deleted one)."""

    def kv_compare_and_set(self, key: str, expected: Expect, new: bytes) -> int | None:
        """Set ``new`` if the key matches ``expected`` (see :class:`Expect`);
        return the new version, or None if the key did not match (then
        nothing changed). The check and the write are one atomic step."""

    def kv_delete(self, key: str) -> bool:
        """Delete the key: True if it was live (its version grows by one and
        it reads as absent), False if it was already absent (nothing changes)."""
