"""Backends: one module per storage engine, each implementing every concept
protocol it can serve. Choose one by construction, or by URL: importing this
package registers each scheme below with :mod:`unbundled._registry`, whose
``open`` every part (``Log.open``, ``EventStore.open``, ``unbundled.open``...)
goes through; :func:`open_backend` and :func:`open_kv_backend` are its aliases.

* ``memory://`` — :class:`MemoryBackend`, the reference model; no durability.
* ``sqlite:///path.db`` or a plain path — :class:`SqliteBackend`, the embedded
  default; ``sqlite:///path.db?mode=ro`` opens it read-only (nothing is
  created, migrated or written: it works on a read-only file system).
* ``postgresql://user@host/db?schema=name`` (or ``postgres://``) —
  :class:`~unbundled.backends.postgres.PostgresBackend`: the log, the event
  store, idempotency keys and the key-value store (needs ``pip install
  'unbundled[postgres]'``).
* ``redis://host:port/db?prefix=...`` (or ``rediss://``) —
  :class:`~unbundled.backends.redis.RedisBackend`, idempotency keys only
  (needs ``pip install 'unbundled[redis]'``); the log and the event store refuse it.
* ``nats://host:port?bucket=name`` — :class:`~unbundled.backends.nats.NatsBackend`,
  the log, the event store, idempotency keys and the key-value store (needs
  ``pip install 'unbundled[nats]'``). What JetStream cannot do atomically
  (an append to several streams, a projection's read model with its
  checkpoint, a log batch with offset commits) is refused with
  ``NotSupported``, never a silent fallback.

:data:`SERVES` says the same as a table, which the CLI's ``--db`` help and
its errors are made from.

:func:`destroy` drops everything unbundled keeps under a URL (a schema, a
key prefix, a bucket, a file), after checking that it is ours and not open.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .. import _registry
from .._ground import SyncLevel, now_ms
from .._registry import EVENTS as EVENTS
from .._registry import IDEMPOTENCY as IDEMPOTENCY
from .._registry import KV as KV
from .._registry import LOG as LOG
from .._registry import SERVES as SERVES
from .._registry import URL_FORMS as URL_FORMS
from .._registry import refuse
from .._registry import url_scheme as url_scheme
from .._registry import urls_serving as urls_serving
from ..errors import BackendError, NotSupported
from ..log._protocol import LogBackend
from ..transaction import capabilities
from ._destroy import destroy as destroy
from ._drivers import backend_class as _backend_class
from ._report import DestroyReport as DestroyReport
from .memory import MemoryBackend as MemoryBackend
from .sqlite import SqliteBackend as SqliteBackend
from .sqlite._url import _writable, check_sqlite_path, sqlite_target

__all__ = [
    "EVENTS",
    "IDEMPOTENCY",
    "KV",
    "LOG",
    "SERVES",
    "URL_FORMS",
    "DestroyReport",
    "MemoryBackend",
    "SqliteBackend",
    "destroy",
    "open_backend",
    "open_kv_backend",
    "url_scheme",
    "urls_serving",
]

# What each scheme serves, its URL form and the helpers that say it in prose
# live in the registry (below the parts, which open through it); they are
# re-exported above, where the CLI and older code look for them.
_EVERYTHING = (LOG, EVENTS, IDEMPOTENCY, KV)


def open_backend(
    url: str | os.PathLike[str],
    *,
    sync: SyncLevel = "full",
    clock: Callable[[], int] = now_ms,
    **options: Any,
) -> LogBackend:
    """Open the backend a URL names, for the log, the event store or
    idempotency keys (a plain path means SQLite). An alias of
    :func:`unbundled._registry.open`, the one open every part uses.
    """
    backend: LogBackend = _registry.open(
        url, serving=(LOG, EVENTS, IDEMPOTENCY), sync=sync, clock=clock, **options
    )
    return backend


def open_kv_backend(
    url: str | os.PathLike[str], *, sync: SyncLevel = "full", **options: Any
) -> Any:
    """Open the backend a URL names, for any part. An alias of :func:`unbundled._registry.open`."""
    return _registry.open(url, sync=sync, **options)


# --- the openers each scheme registers ---------------------------------------------


def _open_memory(url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any) -> Any:
    return MemoryBackend(clock=clock)


def _open_sqlite(url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any) -> Any:
    path, read_only = sqlite_target(url)
    if path != ":memory:":
        check_sqlite_path(path, must_exist=read_only)
    if read_only:
        options = {**options, "read_only": True}
    try:
        return SqliteBackend(path, sync=sync, clock=clock, **options)
    except BackendError as exc:
        if read_only or _writable(path):
            raise
        raise BackendError(
            f"{path} cannot be written here (a read-only file system or no permission); "
            f"to read it, open it read-only: sqlite:///{path}?mode=ro",
            path=path,
        ) from exc


def _open_postgres(url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any) -> Any:
    postgres = _backend_class("postgres", "PostgresBackend", "psycopg 3", url)
    return postgres(url, sync=sync, clock=clock, **options)


def _open_redis(url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any) -> Any:
    if clock is not now_ms:
        raise NotSupported(
            "the redis backend keeps time with the Redis server's clock (so that app "
            "servers with skewed clocks agree on leases); it takes no clock=",
            url=url,
        )
    redis = _backend_class("redis", "RedisBackend", "redis-py", url)
    return redis(url, sync=sync, **options)


def _open_nats(url: str, *, sync: SyncLevel, clock: Callable[[], int], **options: Any) -> Any:
    nats = _backend_class("nats", "NatsBackend", "nats-py", url)
    return nats(url, sync=sync, clock=clock, **options)


_NATS_SERVES = (LOG, EVENTS, IDEMPOTENCY, KV)


# The order of registration is the order of SERVES (and of the CLI's help).
_registry.register(
    "sqlite",
    _open_sqlite,
    _EVERYTHING,
    form="a SQLite file (PATH or sqlite:///PATH)",
    aliases=("",),
)
_registry.register("memory", _open_memory, _EVERYTHING, form="memory://")
_registry.register(
    "postgresql",
    _open_postgres,
    _EVERYTHING,
    form="postgresql://user@host/db?schema=name",
    aliases=("postgres",),
)
_registry.register(
    "redis",
    _open_redis,
    (IDEMPOTENCY,),
    form="redis://host:port/db?prefix=name",
    aliases=("rediss",),
)
_registry.register(
    "nats",
    _open_nats,
    _NATS_SERVES,
    form="nats://host:port?bucket=name",
)


def require_log(backend: Any) -> LogBackend:
    """``backend`` if it serves the log; otherwise close it and raise ``NotSupported``."""
    if not capabilities.missing(backend, capabilities.LOG):
        result: LogBackend = backend
        return result
    raise refuse(backend, LOG)


def require_events(backend: Any) -> Any:
    """``backend`` if it serves the event store; otherwise close it and raise ``NotSupported``."""
    if not capabilities.missing(backend, capabilities.EVENTS):
        return backend
    raise refuse(backend, EVENTS)
