"""The events change token: moved by this process's commits at once, and by
every other process's through LISTEN/NOTIFY (the writer's transaction sends
``pg_notify``, which PostgreSQL delivers only after the commit is visible).

One listener thread per backend blocks in ``select`` on its connection's
socket and a wake-up pipe: it costs nothing while nothing happens. If the
listening connection is down, waiters fall back to polling the counter row
every ``POLL_S`` while the thread reconnects.

A second token follows idempotency keys (a notification whose payload is
``KEYS_PAYLOAD``, sent when a key completes or is released), and a third
the log (``LOG_PAYLOAD``: records, offsets, groups, topics), so waiters for
a key, subscribers to events and tailing log readers do not wake each other.

If the listener thread fails for a reason it does not expect (not a lost
connection, which it survives by reconnecting), it stops, and every waiting
and later call raises :class:`~unbundled.errors.ThreadFailed` naming the
cause: a subscription must not sleep through commits nobody announces.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

import psycopg

from ..._ground.waiters import Failure
from ...errors import Error
from ._schema import Conn

POLL_S = 0.2
# The payload of an idempotency key's notification: it moves the keys token,
# not the events token, so event subscribers do not wake for it.
KEYS_PAYLOAD = "keys"
# The payload of the log's notification: it moves the log token only.
LOG_PAYLOAD = "log"
_BACKOFF_MAX_S = 2.0


class Notifier:
    """A change token shared by the backend's threads."""

    def __init__(self, connect: Callable[[], Conn], channel: str, position: Callable[[], int]):
        self._connect = connect
        self._channel = channel
        self._position = position
        self._changed = threading.Condition()
        self._token = 0
        self._keys = 0  # moved by idempotency keys settling (KEYS_PAYLOAD)
        self._log = 0  # moved by the log's commits (LOG_PAYLOAD)
        self._listening = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._polled: int | None = None  # the position the poll fallback last saw
        self._failure = Failure()  # why the listener thread stopped, if it failed
        self._live: Conn | None = None  # the listener thread's connection

    def bump(self) -> None:
        with self._changed:
            self._token += 1
            self._changed.notify_all()

    def bump_keys(self) -> None:
        with self._changed:
            self._keys += 1
            self._changed.notify_all()

    def bump_log(self) -> None:
        with self._changed:
            self._log += 1
            self._changed.notify_all()

    def log_token(self) -> int:
        """Like :meth:`token`, for the log."""
        self._start()
        with self._changed:
            return self._log

    def wait_log(self, token: int, timeout_s: float) -> int:
        """Wait until the log token differs from ``token`` or ``timeout_s``
        passes; return it. With nobody listening (the connection is down)
        each wait ends after at most ``POLL_S`` with the token moved, so
        the caller reads again: polling, until the listener is back."""
        self._start()
        with self._changed:
            if not self._listening:
                self._changed.wait_for(
                    lambda: self._log != token or self._closed or self._failure,
                    min(timeout_s, POLL_S),
                )
                self._failure.check()
                if self._log == token and not self._closed:
                    self._log += 1
                return self._log
            self._changed.wait_for(
                lambda: self._log != token or self._closed or self._failure, timeout_s
            )
            self._failure.check()
            return self._log

    def keys_token(self) -> int:
        """Like :meth:`token`, for idempotency keys settling."""
        self._start()
        with self._changed:
            return self._keys

    def wait_keys(self, token: int, timeout_s: float) -> None:
        """Wait until the keys token moves or ``timeout_s`` passes; with
        nobody listening, at most ``POLL_S`` (the caller polls: it reads
        again after every return)."""
        self._start()
        with self._changed:
            if not self._listening:
                timeout_s = min(timeout_s, POLL_S)
            self._changed.wait_for(
                lambda: self._keys != token or self._closed or self._failure, timeout_s
            )
            self._failure.check()

    def token(self) -> int:
        self._start()
        if not self._listening:
            self._poll()  # the baseline a later poll compares against
        with self._changed:
            return self._token

    def wait(self, token: int, timeout_s: float) -> int:
        self._start()
        deadline = time.monotonic() + timeout_s
        while True:
            with self._changed:
                self._failure.check()
                if self._token != token or self._closed:
                    return self._token
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self._token
                if self._listening:
                    self._changed.wait(remaining)
                    continue
                self._changed.wait(min(remaining, POLL_S))
            self._poll()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            os.write(self._wake_w, b"x")
            thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # --- internals --------------------------------------------------------------

    def _poll(self) -> None:
        try:
            position = self._position()
        except Error:
            return  # the server is away: nothing can commit; the next read will say so
        with self._changed:
            if position != self._polled:
                if self._polled is not None:
                    self._token += 1
                    self._changed.notify_all()
                self._polled = position

    def _start(self) -> None:
        """Listen before the first token is handed out, so no commit after it is
        missed; raise the listener's failure, if it failed."""
        if self._thread is not None:
            self._failure.check()
            return
        with self._changed:
            if self._thread is not None or self._closed:
                return
            conn = self._listen()
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(
                target=self._run, args=(conn,), name="unbundled-pg-listener", daemon=True
            )
            self._thread.start()

    def _listen(self) -> Conn | None:
        try:
            conn = self._connect()
        except Error:
            return None
        try:
            conn.execute(f'LISTEN "{self._channel}"')
        except psycopg.Error:
            conn.close()
            return None
        self._set_listening(True)
        return conn

    def _set_listening(self, listening: bool) -> None:
        with self._changed:
            self._listening = listening
            self._keys += 1
            self._log += 1
            # Either way waiters must look again: commits may have gone
            # unannounced while nobody listened, and pollers must start or stop.
            self._token += 1
            self._changed.notify_all()

    def _run(self, conn: Conn | None) -> None:
        self._live = conn
        try:
            self._listen_loop()
        except BaseException as exc:  # not a lost connection (that is retried): a bug
            with self._changed:
                self._failure.set(threading.current_thread().name, exc, "the event store")
                self._listening = False
                self._changed.notify_all()  # waiters raise it now, not at their timeout
        finally:
            if self._live is not None:
                self._live.close()
                self._live = None

    def _listen_loop(self) -> None:
        """Deliver notifications until close(); ``_live`` is the connection."""
        backoff = 0.05
        while not self._closed:
            conn = self._live
            if conn is None:
                ready, _, _ = select.select([self._wake_r], [], [], backoff)
                if ready:
                    break
                backoff = min(2 * backoff, _BACKOFF_MAX_S)
                self._live = self._listen()
                continue
            backoff = 0.05
            try:
                ready, _, _ = select.select([conn.pgconn.socket, self._wake_r], [], [])
                if self._wake_r in ready:
                    break
                conn.pgconn.consume_input()
                got = keys = log = False
                while (note := conn.pgconn.notifies()) is not None:
                    if note.extra == KEYS_PAYLOAD.encode():
                        keys = True
                    elif note.extra == LOG_PAYLOAD.encode():
                        log = True
                    else:
                        got = True
                if got:
                    self.bump()
                if keys:
                    self.bump_keys()
                if log:
                    self.bump_log()
            except (psycopg.Error, OSError):
                self._set_listening(False)
                conn.close()
                self._live = None
