"""The Redis backend (redis-py): idempotency keys shared by many app servers.

* Every operation is one ``EVALSHA`` of a Lua script (``_scripts``): one round
  trip, atomic on the server. The scripts are loaded when the backend opens;
  after ``SCRIPT FLUSH``, a restart or a failover (``NOSCRIPT``) a script is
  loaded again and the call repeated once.
* Time is the Redis server's clock (``TIME`` inside the scripts), never the
  app server's: leases and expiry mean the same to every app server however
  skewed their clocks are.
* Each record is a hash whose key Redis deletes by itself a minute after the
  record expires (``EXPIRY_GRACE_MS``); an expired record counts as absent at
  once, and ``purge_expired`` deletes (and counts) those Redis still keeps.
* A Redis record cannot share a transaction with writes to another store:
  ``complete(..., effects=...)`` raises ``NotSupported``
  (docs/how-to/idempotency-redis.md says what to do instead).
* Durability is the server's: with ``appendonly yes`` and ``appendfsync
  always`` a stored result survives a crash of Redis; with the defaults the
  last second (or, without persistence, everything) may be lost. ``sync`` is
  accepted for the same signature as the other backends and does not change it.

The log and the event store are not served on Redis: the backend has none
of their capabilities (``unbundled.transaction.capabilities``), and
``Log.open`` / ``EventStore.open`` refuse a ``redis://`` URL with
``NotSupported``.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ..._ground import SyncLevel
from ...errors import Closed, UsageError
from ._connect import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S
from ._connect import PREFIX_DEFAULT as PREFIX_DEFAULT
from ._connect import client_name as client_name
from ._connect import display_url as display_url
from ._connect import escape_glob as escape_glob
from ._connect import parse_url as parse_url
from ._connect import translated as translated
from ._destroy import destroy
from ._idempotency import RedisIdempotency
from ._scripts import SCRIPTS


class RedisBackend(RedisIdempotency):
    """Idempotency records under one key prefix of one Redis server (5+).

    ``url`` is ``redis://[user:password@]host:port/db`` (or ``rediss://``,
    ``unix://``; redis-py's query parameters pass through) with our
    ``?prefix=...`` (default ``unbundled:idem:``): every record's Redis key
    is the prefix followed by the idempotency key. Raises ``Unavailable`` if
    the server cannot be reached.
    """

    serves = "idempotency keys"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, sync: SyncLevel = "full") -> None:
        if sync not in ("full", "normal", "off"):
            raise UsageError(f"sync must be 'full', 'normal' or 'off', got {sync!r}", sync=sync)
        redis_url, prefix = parse_url(url)
        self.url = display_url(url)  # what messages show: never the password
        self.sync = sync
        self.prefix = prefix if prefix is not None else PREFIX_DEFAULT
        self._prefix_bytes = self.prefix.encode()
        self._where = display_url(url)
        self._closed = False
        try:
            # A client_name in the URL wins over ours (redis-py's rule).
            self._pool: redis.ConnectionPool = redis.ConnectionPool.from_url(
                redis_url,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                client_name=client_name(self.prefix),
            )
        except ValueError as exc:
            raise UsageError(f"bad Redis URL {self._where!r}: {exc}", url=self._where) from None
        self.client = redis.Redis(connection_pool=self._pool)
        self._idle: list[Any] = []
        _OPEN.add(self)
        try:
            self.load_scripts()
        except BaseException:
            self._pool.disconnect()
            raise

    def __repr__(self) -> str:
        return f"RedisBackend({self._where!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close every connection. Idempotent; later calls raise ``Closed``."""
        if not self._closed:
            self._closed = True
            self._idle = []
            self._pool.disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the Redis backend is closed")

    def _translated(self, what: str) -> contextlib.AbstractContextManager[None]:
        return translated(self._where, what)

    def load_scripts(self) -> None:
        """Load every script (``SCRIPT LOAD``); done on open and after ``NOSCRIPT``."""
        self._check_open()
        with self._translated("SCRIPT LOAD"):
            for script in SCRIPTS.values():
                loaded = self.client.script_load(script.source)
                assert loaded == script.sha, (loaded, script.sha)

    def _take(self) -> Any:
        """A connection of this backend's own idle stack (``list.pop`` and
        ``append`` are atomic): a third of the cost of the pool's checkout,
        which matters on the one-round-trip path. Its methods are untyped."""
        try:
            return self._idle.pop()
        except IndexError:
            return self._pool.get_connection()  # stays checked out until close()

    def _give_back(self, conn: Any, healthy: bool) -> None:
        if healthy and not self._closed:
            self._idle.append(conn)
        else:
            # Its replies may be out of step with its requests: never reuse it.
            conn.disconnect()
            self._pool.release(conn)

    def _eval(self, name: str, key: str, args: Sequence[Any]) -> bytes:
        """``EVALSHA`` of script ``name`` on ``prefix + key``, sent on a
        connection directly: redis-py's client layer would add overhead and its
        retries, which are unsafe here (a write repeated after its answer was
        lost would be refused as stale, or claim the key twice)."""
        self._check_open()
        script = SCRIPTS[name]
        rkey = self._prefix_bytes + key.encode()
        with self._translated(f"the {name} script"):
            conn = self._take()
            healthy = False
            try:
                try:
                    conn.send_command("EVALSHA", script.sha, 1, rkey, *args)
                    answer: bytes = conn.read_response()
                except NoScriptError:
                    # The server lost its scripts (SCRIPT FLUSH, restart,
                    # failover): load this one again and repeat the call once.
                    # Nothing ran: NOSCRIPT is answered before a script starts.
                    conn.send_command("SCRIPT", "LOAD", script.source)
                    conn.read_response()
                    conn.send_command("EVALSHA", script.sha, 1, rkey, *args)
                    answer = conn.read_response()
                healthy = True
            finally:
                self._give_back(conn, healthy)
        return answer

    def _eval_many(self, name: str, keys: Sequence[str]) -> list[bytes]:
        """``EVALSHA`` of a read-only script on each key, pipelined: one round trip."""
        self._check_open()
        script = SCRIPTS[name]
        commands = [("EVALSHA", script.sha, 1, self._prefix_bytes + k.encode()) for k in keys]
        for attempt in (1, 2):
            with self._translated(f"the {name} script"):
                conn = self._take()
                healthy = False
                try:
                    conn.send_packed_command(conn.pack_commands(commands))
                    answers: list[bytes] = [conn.read_response() for _ in commands]
                    healthy = True
                    return answers
                except NoScriptError:
                    if attempt == 2:
                        raise
                finally:
                    self._give_back(conn, healthy)
            self.load_scripts()  # the unread answers went with the connection
        raise AssertionError("unreachable")

    def _scan_keys(self) -> list[bytes]:
        self._check_open()
        with self._translated("SCAN"):
            return list(self.client.scan_iter(match=escape_glob(self.prefix) + "*", count=1000))


def _forget_connections_after_fork() -> None:
    # A child must not talk on its parent's sockets; redis-py's pool resets
    # itself on a new pid, our idle stacks are reset here.
    for backend in list(_OPEN):
        backend._idle = []


_OPEN: weakref.WeakSet[RedisBackend] = weakref.WeakSet()
os.register_at_fork(after_in_child=_forget_connections_after_fork)


__all__ = [
    "PREFIX_DEFAULT",
    "RedisBackend",
    "client_name",
    "destroy",
    "display_url",
    "escape_glob",
    "parse_url",
    "translated",
]
