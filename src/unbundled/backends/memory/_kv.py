"""The key-value store in the memory backend: the executable specification.

Every operation runs under the backend's one lock, so each takes effect at
one instant inside its call: linearizable by construction.
"""

from __future__ import annotations

import threading

from ...consistency.kv import _core
from ...consistency.kv._protocol import Expect, Versioned
from ...errors import Closed


class MemoryKV:
    """Key -> ``(value, version)`` in a dict; a deleted key keeps a tombstone."""

    _lock: threading.RLock
    _closed: bool

    def _init_kv(self) -> None:
        self._kv: dict[str, _core.Slot] = {}

    def _check_kv_open(self) -> None:
        if self._closed:
            raise Closed("the key-value store is closed")

    def kv_read(self, key: str) -> Versioned | None:
        with self._lock:
            self._check_kv_open()
            slot = self._kv.get(key)
            if slot is None or slot[0] is None:
                return None
            return Versioned(slot[0], slot[1])

    def kv_write(self, key: str, value: bytes) -> int:
        with self._lock:
            self._check_kv_open()
            version = _core.next_version(self._kv.get(key))
            self._kv[key] = (value, version)
            return version

    def kv_compare_and_set(self, key: str, expected: Expect, new: bytes) -> int | None:
        with self._lock:
            self._check_kv_open()
            slot = self._kv.get(key)
            if not _core.matches(slot, expected):
                return None
            version = _core.next_version(slot)
            self._kv[key] = (new, version)
            return version

    def kv_delete(self, key: str) -> bool:
        with self._lock:
            self._check_kv_open()
            slot = self._kv.get(key)
            if slot is None or slot[0] is None:
                return False
            self._kv[key] = (None, slot[1] + 1)
            return True
