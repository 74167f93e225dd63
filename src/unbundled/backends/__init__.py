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
  :class:`~unbundled.backends.postgres.PostgresBackend`: the event store,
  idempotency keys and the key-value store (needs ``pip install
  'unbundled[postgres]'``); the log refuses it.
* ``redis://host:port/db?prefix=...`` (or ``rediss://``) —
  :class:`~unbundled.backends.redis.RedisBackend`, idempotency keys only
  (needs ``pip install 'unbundled[redis]'``); the log and the event store refuse it.
* ``nats://host:port?bucket=name`` — :class:`~unbundled.backends.nats.NatsBackend`,
  the key-value store only (needs ``pip install 'unbundled[nats]'``), opened
  by :func:`open_kv_backend`; :func:`open_backend` refuses it with
  ``NotSupported`` (the log, the event store and idempotency keys do not run
  on NATS yet), never a silent fallback.

:data:`SERVES` says the same as a table, which the CLI's ``--db`` help and
its errors are made from.

:func:`destroy` drops everything unbundled keeps under a URL (a schema, a
key prefix, a bucket, a file), after checking that it is ours and not open.
"""

from __future__ import annotations

import importlib
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
from .._registry import listed, refuse
from .._registry import url_scheme as url_scheme
from .._registry import urls_serving as urls_serving
from ..errors import BackendError, NotFound, NotSupported, UsageError
from ..log._protocol import LogBackend
from ._destroy import DestroyReport as DestroyReport
from ._destroy import destroy as destroy
from .memory import MemoryBackend as MemoryBackend
from .sqlite import SqliteBackend as SqliteBackend

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


_SQLITE_OPTIONS = {"mode": ("ro", "rw")}


def sqlite_target(url: str) -> tuple[str, bool]:
    """The file path of a ``sqlite:///...`` URL (``sqlite:////abs`` for
    absolute) or of a plain path, and whether it asks to be read-only
    (``?mode=ro``; only a ``sqlite:///`` URL takes options)."""
    if not url.startswith("sqlite://"):
        return url, False
    if not url.startswith("sqlite:///"):
        raise UsageError(
            f"bad SQLite URL {url!r}: write sqlite:///relative.db or sqlite:////absolute.db",
            url=url,
        )
    path, sep, query = url[len("sqlite:///") :].rpartition("?")
    if not sep:
        return query, False
    options = dict(item.partition("=")[::2] for item in query.split("&"))
    for name, value in options.items():
        if value not in _SQLITE_OPTIONS.get(name, ()):
            raise UsageError(
                f"bad SQLite URL {url!r}: the only option is mode=ro (read-only) or mode=rw",
                url=url,
            )
    return path, options.get("mode") == "ro"


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///...`` URL (``sqlite:////abs`` for absolute),
    or of a plain path."""
    return sqlite_target(url)[0]


def read_only_url(url: str) -> str:
    """``url`` opened read-only: for a SQLite file, ``sqlite:///PATH?mode=ro``;
    other URLs unchanged (a server's permissions are its own)."""
    if url_scheme(url) != "sqlite":
        return url
    path, _ = sqlite_target(url)
    return f"sqlite:///{path}?mode=ro"


def check_sqlite_path(path: str, *, must_exist: bool) -> None:
    """A clear error for a path SQLite cannot open, instead of its "unable to
    open database file": a directory, a file in a missing directory, or (when
    ``must_exist``) a file that is not there."""
    if os.path.isdir(path):
        raise UsageError(
            f"{path!r} is a directory, not a database file: name a file, "
            f"e.g. {os.path.join(path, 'unbundled.db')!r}",
            path=path,
        )
    if os.path.exists(path):
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        what = f"no database at {path!r}" if must_exist else f"cannot create {path!r}"
        raise NotFound(f"{what}: there is no directory {directory!r}", path=path)
    if must_exist:
        raise NotFound(f"no database at {path!r}", path=path)


def _writable(path: str) -> bool:
    """Whether SQLite can write ``path`` (the file, and its directory for the
    write-ahead log beside it)."""
    directory = os.path.dirname(path) or "."
    return os.access(directory, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK))


def open_backend(
    url: str | os.PathLike[str],
    *,
    sync: SyncLevel = "full",
    clock: Callable[[], int] = now_ms,
    **options: Any,
) -> LogBackend:
    """Open the backend a URL names, for the log, the event store or
    idempotency keys (a plain path means SQLite); ``nats://``, which serves
    only the key-value store, is refused. An alias of
    :func:`unbundled._registry.open`, the one open every part uses.

    A PostgreSQL URL gives a backend that serves the event store only (its
    ``supports_log`` is False): ``Log.open`` refuses it with ``NotSupported``.
    """
    backend: LogBackend = _registry.open(
        url, serving=(LOG, EVENTS, IDEMPOTENCY), sync=sync, clock=clock, **options
    )
    return backend


def open_kv_backend(
    url: str | os.PathLike[str], *, sync: SyncLevel = "full", **options: Any
) -> Any:
    """Open the backend a URL names, for any part (``nats://`` too, which
    serves the key-value store only). An alias of :func:`unbundled._registry.open`."""
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
    if clock is not now_ms:
        raise NotSupported(
            "the nats backend keeps no time of its own (the server orders the writes); "
            "it takes no clock=",
            url=url,
        )
    nats = _backend_class("nats", "NatsBackend", "nats-py", url)
    return nats(url, sync=sync, **options)


def _refuse_nats(url: str) -> NotSupported:
    """Said before connecting: a NATS URL serves the key-value store only."""
    return NotSupported(
        f"{url!r}: nats:// serves only the key-value store (KV.open, `unbundled kv`), "
        f"not {listed(tuple(w for w in _EVERYTHING if w != KV), 'or')}",
        url=url,
    )


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
    (EVENTS, IDEMPOTENCY, KV),
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
    "nats", _open_nats, (KV,), form="nats://host:port?bucket=name", refuse_early=_refuse_nats
)


def require_log(backend: Any) -> LogBackend:
    """``backend`` if it serves the log; otherwise close it and raise ``NotSupported``."""
    if getattr(backend, "supports_log", True):
        result: LogBackend = backend
        return result
    raise refuse(backend, LOG)


def require_events(backend: Any) -> Any:
    """``backend`` if it serves the event store; otherwise close it and raise ``NotSupported``."""
    if getattr(backend, "supports_events", True):
        return backend
    raise refuse(backend, EVENTS)
