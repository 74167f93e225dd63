"""A linearizable key-value store with compare-and-set, and a register.

>>> from unbundled.consistency import KV
>>> kv = KV.open("memory://")
>>> kv.write("leader", b"node-a")
1
>>> kv.read("leader")
Versioned(value=b'node-a', version=1)
>>> kv.compare_and_set("leader", expected_value=b"node-b", new=b"node-c")  # lost the race
False
>>> kv.compare_and_set("leader", expected_version=1, new=b"node-c")
True
>>> value, version = kv.read("leader")
>>> value, version
(b'node-c', 2)
>>> kv.delete("leader")
True
>>> kv.read("leader") is None
True
>>> kv.compare_and_set("leader", expected_value=None, new=b"node-d")  # only if absent
True
>>> kv.read("leader").version  # versions never repeat, not even after a delete
4
>>> kv.close()

Every operation is linearizable on every backend (docs/explanation/consistency.md
says why, and which tests check it): it takes effect at one instant between
its call and its return, so once ``write`` returns, every ``read`` that
starts later, in any thread or process, sees it or something newer.
"""

from __future__ import annotations

import os
from typing import Any

from ... import _registry
from ..._ground import SyncLevel
from ...errors import Closed, NotSupported
from . import _core
from ._core import UNSET
from ._protocol import KVBackend, Versioned


def _require_kv(backend: Any) -> KVBackend:
    """``backend`` if it serves the key-value store; else close it, ``NotSupported``."""
    if isinstance(backend, KVBackend):  # the capability (unbundled.transaction.capabilities)
        result: KVBackend = backend
        return result
    url = getattr(backend, "url", "?")
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    raise NotSupported(
        f"the backend at {url!r} does not serve the key-value store; open it on "
        "memory://, sqlite:///path.db, postgresql://... or nats://...",
        url=url,
    )


class KV:
    """The key-value store over one backend. Safe to share between threads;
    each process opens its own.

    Keys are non-empty ``str`` (at most ``limits.kv_key_bytes_max`` bytes of
    UTF-8, no NUL); values are ``bytes`` (at most ``limits.kv_value_bytes_max``;
    on NATS at most what the server's message limit leaves beside our
    headers, ``kv.backend.kv_value_bytes_max``: 1 MiB - 112 bytes by default).
    Anything else raises ``UsageError`` naming the key; an oversized value
    raises ``LimitExceeded``. A backend failure raises ``BackendError``
    (``Unavailable`` when the server cannot be reached, ``Timeout`` when it
    did not answer in time; both retryable): the operation may or may not
    have taken effect, exactly as a timeout in any networked store.
    """

    _shared = False  # True for a part of a Database, which owns the backend

    def __init__(self, backend: KVBackend) -> None:
        self.backend = _require_kv(backend)
        self._closed = False

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        sync: SyncLevel = "full",
        **options: Any,
    ) -> KV:
        """Open the store a URL names: ``memory://``, ``sqlite:///path.db`` (or a
        plain path; ``?mode=ro`` opens it read-only),
        ``postgresql://user@host/db?schema=name``,
        ``nats://host:port?bucket=name`` (a JetStream KV bucket, created if
        missing; ``timeout_s=`` bounds each request). ``NotSupported`` for a
        backend that cannot serve it (Redis)."""
        # Opened for any part: KV's own check (_require_kv, which a backend
        # constructed by hand meets too) refuses a backend without the store.
        return cls(_registry.open(url, sync=sync, **options))

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend. Idempotent; any later call raises ``Closed``."""
        if not self._closed:
            self._closed = True
            if self._shared:  # a Database's part: closing the database closes it
                return
            close = getattr(self.backend, "close", None)
            if close is not None:
                close()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the key-value store is closed")

    def read(self, key: str) -> Versioned | None:
        """``(value, version)`` of the key, or None if it is absent. Sees every
        change that returned before this call began, in any process."""
        self._check_open()
        return self.backend.kv_read(_core.check_key(key))

    def write(self, key: str, value: bytes) -> int:
        """Set the value; return the key's new version (versions start at 1
        and grow by one with every change of the key)."""
        self._check_open()
        key = _core.check_key(key)
        return self.backend.kv_write(key, _core.check_value(value, key))

    def compare_and_set(
        self,
        key: str,
        *,
        new: bytes,
        expected_value: bytes | None = UNSET,
        expected_version: int = UNSET,
    ) -> bool:
        """Set ``new`` only if the key holds ``expected_value`` (``None``: the
        key must be absent) or is at ``expected_version`` (``0``: absent); give
        exactly one. True if it was set; False if the key did not match, and
        then nothing changed. The comparison and the write are atomic.

        Comparing versions is the safer choice: a value can come back (A, B,
        A) where a version never does.
        """
        self._check_open()
        key = _core.check_key(key)
        expected = _core.expectation(key, expected_value, expected_version)
        return (
            self.backend.kv_compare_and_set(key, expected, _core.check_value(new, key)) is not None
        )

    def delete(self, key: str) -> bool:
        """Delete the key: True if it was present. Its version still grows,
        so a ``compare_and_set`` by the old version fails afterwards."""
        self._check_open()
        return self.backend.kv_delete(_core.check_key(key))

    def register(self, key: str) -> Register:
        """The register stored under ``key`` in this store (it shares the store's backend)."""
        return Register(self, key)


class Register:
    """A single linearizable register: a :class:`KV` with one key.

    ``Register.open(url, key="register")`` opens a store of its own (closed
    with the register); ``kv.register(key)`` shares an open one.
    """

    def __init__(self, kv: KV, key: str = "register", *, owns: bool = False) -> None:
        self.kv = kv
        self.key = _core.check_key(key)
        self._owns = owns

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] = "unbundled.db",
        *,
        key: str = "register",
        sync: SyncLevel = "full",
        **options: Any,
    ) -> Register:
        """Open a store of its own at ``url`` (as :meth:`KV.open` does) holding
        the register under ``key``; closing the register closes that store. Raises
        ``UsageError`` for a bad key, and what :meth:`KV.open` raises."""
        _core.check_key(key)
        return cls(KV.open(url, sync=sync, **options), key, owns=True)

    def __enter__(self) -> Register:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store if this register opened it."""
        if self._owns:
            self.kv.close()

    def read(self) -> Versioned | None:
        """The register's value and version, or ``None``; see :meth:`KV.read`."""
        return self.kv.read(self.key)

    def write(self, value: bytes) -> int:
        """Set the value; returns the new version. See :meth:`KV.write`."""
        return self.kv.write(self.key, value)

    def compare_and_set(
        self, *, new: bytes, expected_value: bytes | None = UNSET, expected_version: int = UNSET
    ) -> bool:
        """Set ``new`` only if the register holds ``expected_value`` or is at
        ``expected_version``; see :meth:`KV.compare_and_set`."""
        return self.kv.compare_and_set(
            self.key, new=new, expected_value=expected_value, expected_version=expected_version
        )

    def delete(self) -> bool:
        """Delete the value; True if there was one. See :meth:`KV.delete`."""
        return self.kv.delete(self.key)
