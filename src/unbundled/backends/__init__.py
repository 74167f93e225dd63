"""Backends: one module per storage engine, each implementing every concept
protocol it can serve. Choose one by construction, or by URL with :func:`open_backend`.

* ``memory://`` — :class:`MemoryBackend`, the reference model; no durability.
* ``sqlite:///path.db`` or a plain path — :class:`SqliteBackend`, the embedded default.
* ``postgresql://user@host/db?schema=name`` (or ``postgres://``) —
  :class:`~unbundled.backends.postgres.PostgresBackend`, the event store only
  (needs ``pip install 'unbundled[postgres]'``); the log refuses it.
* ``redis://host:port/db?prefix=...`` (or ``rediss://``) —
  :class:`~unbundled.backends.redis.RedisBackend`, idempotency keys only
  (needs ``pip install 'unbundled[redis]'``); the log and the event store refuse it.
* ``nats://host:port?bucket=name`` — :class:`~unbundled.backends.nats.NatsBackend`,
  the key-value store only (needs ``pip install 'unbundled[nats]'``), opened
  by :func:`open_kv_backend`; :func:`open_backend` refuses it with
  ``NotSupported`` (the log, the event store and idempotency keys do not run
  on NATS yet), never a silent fallback.

:func:`destroy` drops everything unbundled keeps under a URL (a schema, a
key prefix, a bucket, a file), after checking that it is ours and not open.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from ..errors import NotSupported, UsageError
from ..log._core import now_ms
from ..log._protocol import LogBackend, SyncLevel
from ._destroy import DestroyReport as DestroyReport
from ._destroy import destroy as destroy
from .memory import MemoryBackend as MemoryBackend
from .sqlite import SqliteBackend as SqliteBackend

_SERVER_SCHEMES = {
    "nats": "nats",
}


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (``sqlite:////abs`` for absolute),
    or of a plain path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        raise UsageError(
            f"bad SQLite URL {url!r}: write sqlite:///relative.db or sqlite:////absolute.db",
            url=url,
        )
    return url


def open_backend(
    url: str | os.PathLike[str],
    *,
    sync: SyncLevel = "full",
    clock: Callable[[], int] = now_ms,
    **options: Any,
) -> LogBackend:
    """Open the backend a URL names. A plain path means SQLite.

    A PostgreSQL URL gives a backend that serves the event store only (its
    ``supports_log`` is False): ``Log.open`` passes what this returns through
    :func:`require_log`, which refuses it with ``NotSupported``.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise UsageError(f"a backend URL or path is required, got {url!r}", url=url)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "memory":
        return MemoryBackend(clock=clock)
    if scheme in ("", "sqlite"):
        return SqliteBackend(sqlite_path(text), sync=sync, clock=clock, **options)
    if scheme in ("postgresql", "postgres"):
        postgres = _backend_class("postgres", "PostgresBackend", "psycopg 3", text)
        backend: Any = postgres(text, sync=sync, clock=clock, **options)
        return backend  # type: ignore[no-any-return]
    if scheme in ("redis", "rediss"):
        redis_backend: Any = _open_redis(text, sync, clock, options)
        return redis_backend  # type: ignore[no-any-return]
    if scheme in _SERVER_SCHEMES:
        raise NotSupported(
            f"the {_SERVER_SCHEMES[scheme]} backend does not serve the log yet "
            f"(url {text!r}); use sqlite:///path.db or memory://",
            url=text,
        )
    raise UsageError(f"unknown backend URL scheme {scheme!r} in {text!r}", url=text)


def open_kv_backend(
    url: str | os.PathLike[str], *, sync: SyncLevel = "full", **options: Any
) -> Any:
    """Open the backend of the key-value store: :func:`open_backend`'s, and
    ``nats://`` too (which serves the key-value store only)."""
    text = os.fspath(url)
    if isinstance(text, str) and text.startswith("nats://"):
        nats = _backend_class("nats", "NatsBackend", "nats-py", text)
        return nats(text, sync=sync, **options)
    return open_backend(text, sync=sync, **options)


def _open_redis(
    text: str, sync: SyncLevel, clock: Callable[[], int], options: dict[str, Any]
) -> Any:
    if clock is not now_ms:
        raise NotSupported(
            "the redis backend keeps time with the Redis server's clock (so that app "
            "servers with skewed clocks agree on leases); it takes no clock=",
            url=text,
        )
    redis = _backend_class("redis", "RedisBackend", "redis-py", text)
    return redis(text, sync=sync, **options)


def _backend_class(extra: str, name: str, driver: str, url: str) -> Any:
    """A server backend's class, imported only when a URL names it (its
    driver is an optional extra); ``NotSupported`` saying what to install."""
    try:
        return getattr(importlib.import_module(f".{extra}", __name__), name)
    except ImportError as exc:
        raise NotSupported(
            f"the {extra} backend needs {driver}: pip install 'unbundled[{extra}]' ({exc})",
            url=url,
        ) from exc


def require_log(backend: Any) -> LogBackend:
    """``backend`` if it serves the log; otherwise close it and raise ``NotSupported``."""
    if getattr(backend, "supports_log", True):
        result: LogBackend = backend
        return result
    backend.close()
    serves = getattr(backend, "serves", "the event store")
    raise NotSupported(
        f"the backend at {backend.url!r} serves {serves}, not the log (yet); "
        "open the log on sqlite:///path.db or memory://",
        url=backend.url,
    )


def require_events(backend: Any) -> Any:
    """``backend`` if it serves the event store; otherwise close it and raise ``NotSupported``."""
    if getattr(backend, "supports_events", True):
        return backend
    backend.close()
    raise NotSupported(
        f"the backend at {backend.url!r} serves {backend.serves}, not the event store; "
        "open the event store on sqlite:///path.db, postgresql://... or memory://",
        url=backend.url,
    )
