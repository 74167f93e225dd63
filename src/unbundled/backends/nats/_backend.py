"""The NATS backend itself: the connection, its event loop thread and the
bucket (see the package docstring); ``destroy`` builds on it too."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import errors as js_errors
from nats.js.api import KeyValueConfig, StorageType

from ..._bounds import check_seconds
from ..._ground import SyncLevel, Waiter, now_ms
from ...errors import BackendError, Closed, Error, Timeout, Unavailable, UsageError
from ._events import NatsEvents
from ._events_meta import NatsEventDocuments
from ._idempotency import NatsIdempotency
from ._kv import NatsKV
from ._log import DEDUPE_WINDOW_S_DEFAULT
from ._log_groups import NatsLogGroups
from ._log_loop import NatsLoopWriter
from ._log_maintain import NatsLogMaintenance
from ._log_meta import Documents
from ._publish import Acks
from ._streams import ensure_stream

BUCKET_DEFAULT = "unbundled"
# Bucket names are stream-name safe ([A-Za-z0-9_-]); the bound keeps the
# longest subject ($KV.<bucket>.<3072-character key>) well inside NATS's
# 4096-byte protocol line.
BUCKET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TIMEOUT_S_DEFAULT = 5.0
REPLICAS_MAX = 5  # JetStream's own limit
SERVERS_MAX = 16  # servers one URL may name (a seed list of one cluster)
_UNREACHABLE = (
    OSError,  # ConnectionRefusedError, socket errors
    asyncio.TimeoutError,  # nats.errors.TimeoutError is one too
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
)


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words (not the exception's repr)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is nats-server running there, with JetStream?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]  # "name or service not known"
    return str(exc) or type(exc).__name__


def parse_url(url: str) -> tuple[list[str], str, str]:
    """``(server URLs for nats-py, bucket, URL for messages without the password)``.

    ``nats://host:port,host2:port2?bucket=name`` names several servers of one
    cluster (at most ``SERVERS_MAX``): connecting tries each, so a server
    that is down when a process starts does not stop it."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    shown = url
    if parts.password is not None:
        shown = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{hosts}"))
    if parts.scheme != "nats" or not parts.hostname:
        raise UsageError(f"bad NATS URL {shown!r}: write nats://host:port?bucket=name", url=shown)
    servers = []
    for host in hosts.split(","):
        one = urlsplit(f"nats://{host}")
        try:
            one.port  # noqa: B018 (a bad port raises here)
        except ValueError:
            one = one._replace(netloc="")
        if not one.hostname:
            raise UsageError(
                f"bad NATS URL {shown!r}: {host!r} is not host:port "
                "(several servers: nats://host:port,host2:port2?bucket=name)",
                url=shown,
            )
        servers.append(urlunsplit(("nats", f"{userinfo}@{host}" if userinfo else host, "", "", "")))
    if len(servers) > SERVERS_MAX:
        raise UsageError(
            f"bad NATS URL {shown!r}: {len(servers)} servers, at most {SERVERS_MAX}",
            url=shown,
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    unknown = sorted({name for name, _ in query} - {"bucket", "replicas"})
    buckets = [value for name, value in query if name == "bucket"]
    if unknown or len(buckets) > 1 or len([n for n, _ in query if n == "replicas"]) > 1:
        raise UsageError(
            f"bad NATS URL {shown!r}: the query parameters are one bucket=name and "
            "one replicas=N" + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            url=shown,
        )
    bucket = buckets[0] if buckets else BUCKET_DEFAULT
    if not BUCKET_RE.fullmatch(bucket):
        raise UsageError(
            f"bad NATS bucket name {bucket!r} in {shown!r}: 1 to 64 of A-Z, a-z, 0-9, _ and -",
            url=shown,
            bucket=bucket,
        )
    return servers, bucket, shown


def url_replicas(url: str) -> int | None:
    """The ``replicas=N`` of a NATS URL (1 to ``REPLICAS_MAX``), or None."""
    given = [
        v for n, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if n == "replicas"
    ]
    if not given:
        return None
    if not (given[0].isascii() and given[0].isdigit() and 1 <= int(given[0]) <= REPLICAS_MAX):
        raise UsageError(
            f"bad replicas={given[0]!r} in a NATS URL: a number from 1 to {REPLICAS_MAX}",
            replicas=given[0],
        )
    return int(given[0])


class NatsBackend(
    NatsKV, NatsIdempotency, NatsLogGroups, NatsLogMaintenance, NatsEvents, NatsEventDocuments
):
    """The key-value store, idempotency keys, the log and the event store in
    one bucket of a NATS JetStream server (2.9+); the log's records in streams
    named after the bucket (``_log_meta`` says how), the events in the stream
    ``UBES_<bucket>`` (``_events_meta``).

    ``timeout_s`` bounds connecting and every request; raises ``Unavailable``
    if the server cannot be reached, ``UsageError`` for a bad URL or bucket.
    ``clock`` decides group leases, retention and idempotency leases and
    expiry (as on the other backends). ``dedupe_window_s`` is the duplicate
    window of the record streams and the events stream this backend creates
    (NATS's default, two minutes). ``replicas`` (or ``replicas=N`` in the URL) is the replication
    factor of the bucket and the record streams it creates (R1 by default;
    R3 on a cluster survives losing a node); an existing bucket is used as it is.
    """

    serves = "the key-value store, idempotency keys, the log and the event store"
    # How long past 3 x timeout_s a call may take before the loop thread is
    # taken for stuck (nats-py times out each request itself).
    guard_extra_s = 5.0

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        sync: SyncLevel = "full",
        timeout_s: float = TIMEOUT_S_DEFAULT,
        clock: Callable[[], int] = now_ms,
        dedupe_window_s: float = DEDUPE_WINDOW_S_DEFAULT,
        replicas: int | None = None,
    ) -> None:
        if sync not in ("full", "normal", "off"):
            raise UsageError(f"sync must be 'full', 'normal' or 'off', got {sync!r}", sync=sync)
        check_seconds("timeout_s", timeout_s, positive=True)
        check_seconds("dedupe_window_s", dedupe_window_s, positive=True)
        in_url = url_replicas(url)
        if replicas is not None and in_url is not None and replicas != in_url:
            raise UsageError(
                f"replicas={replicas!r} contradicts replicas={in_url} in the URL",
                replicas=replicas,
            )
        replicas = replicas if replicas is not None else (in_url or 1)
        if type(replicas) is not int or not 1 <= replicas <= REPLICAS_MAX:
            raise UsageError(
                f"replicas must be an int from 1 to {REPLICAS_MAX}, got {replicas!r}",
                replicas=replicas,
            )
        self.replicas = replicas
        self.clock = clock
        self.dedupe_window_s = float(dedupe_window_s)
        self._init_records()
        self._init_events()
        servers, self.bucket, self.url = parse_url(url)
        self._servers = servers  # with the password, for the loop writers' connections
        self.sync = sync
        self.timeout_s = float(timeout_s)
        self._stream = f"KV_{self.bucket}"
        self._closed = False
        self._close_lock = threading.Lock()
        self._last_error: BaseException | None = None
        self._msg_bytes_max = -1
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"unbundled-nats {self.url}", daemon=True
        )
        self._thread.start()
        self._nc = Client()
        try:
            self._run(lambda: self._connect(servers), "connecting")
            self._js = self._nc.jetstream(timeout=self.timeout_s)
            self._acks = Acks(self._nc, self.timeout_s)
            self._run(self._acks.subscribe, "subscribing to acknowledgements")
            self._run(self._ensure_bucket, f"opening bucket {self.bucket!r}")
            self._docs = Documents(self._js, self._stream, self.url)
        except BaseException:
            self.close()
            raise

    async def _open_loop_writer(self) -> NatsLoopWriter:
        """Appends from the running event loop on a connection of its own
        (``AsyncLog`` uses it; ``_log_loop`` says why)."""
        if self._closed:
            raise Closed(f"the NATS backend at {self.url} is closed")
        try:
            return await NatsLoopWriter.open(self, self._servers)
        except Error:
            raise
        except Exception as exc:
            raise self._error(exc, "connecting an event loop's writer") from exc

    @property
    def server_version(self) -> tuple[int, ...]:
        """The version of the NATS server this connection reached, e.g. ``(2, 9, 10)``."""
        text = str(self._nc._server_info.get("version", "0"))
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    def __repr__(self) -> str:
        return f"NatsBackend({self.url!r}, bucket={self.bucket!r})"

    async def _connect(self, servers: list[str]) -> None:
        """Connect; a failure of every server ends the attempt (nats-py alone
        would retry a refused first connection for minutes), while a
        connection lost later is retried by nats-py for ever."""
        first_failure: asyncio.Future[BaseException] = self._loop.create_future()
        failures = 0

        async def on_error(exc: Exception) -> None:
            nonlocal failures
            self._last_error = exc  # reported with the next Unavailable
            failures += 1
            if failures >= len(servers) and not first_failure.done():
                first_failure.set_result(exc)

        async def on_reconnect() -> None:
            self._last_error = None  # the last one is over

        connecting = asyncio.ensure_future(
            self._nc.connect(
                servers=servers,
                error_cb=on_error,
                reconnected_cb=on_reconnect,
                name="unbundled",
                connect_timeout=max(1, math.ceil(self.timeout_s)),  # ours bounds it below
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
            )
        )
        racing: set[asyncio.Future[Any]] = {connecting, first_failure}
        done, _ = await asyncio.wait(
            racing,
            timeout=self.timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if connecting in done:
            connecting.result()
            return
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(BaseException):
            await self._nc.close()
        cause = first_failure.result() if first_failure.done() else None
        raise Unavailable(
            f"cannot connect to NATS at {self.url}: "
            + (_reason(cause) if cause is not None else f"no answer in {self.timeout_s} s"),
            url=self.url,
        ) from cause

    async def _ensure_bucket(self) -> None:
        """Create the bucket if it is missing; refuse one with a TTL."""
        config = KeyValueConfig(
            bucket=self.bucket, history=1, storage=StorageType.FILE, replicas=self.replicas
        )
        info = await ensure_stream(
            self._js,
            self._stream,
            lambda: self._js.create_key_value(config),
            self.timeout_s,
            self.url,
        )
        if f"$KV.{self.bucket}.>" not in (info.config.subjects or []):
            raise UsageError(
                f"stream {self._stream!r} at {self.url} is not the NATS KV bucket "
                f"{self.bucket!r} (its subjects: {info.config.subjects})",
                bucket=self.bucket,
            )
        self._msg_bytes_max = info.config.max_msg_size or -1  # -1: no limit of its own
        if info.config.max_age:
            raise UsageError(
                f"NATS bucket {self.bucket!r} at {self.url} has a TTL ({info.config.max_age} s): "
                "expiring messages would take deleted keys' versions with them, and a "
                "version could repeat; use a bucket without a TTL",
                bucket=self.bucket,
            )

    def _payload_bytes_max(self) -> int:
        """The largest message (headers and body) the server and the bucket take."""
        server = int(self._nc.max_payload)
        return server if self._msg_bytes_max < 0 else min(server, self._msg_bytes_max)

    def _run(self, make: Callable[[], Awaitable[Any]], what: str, *, long: bool = False) -> Any:
        """Run ``make()`` on the loop thread and wait for it; nats-py's errors
        become ours, chained. A request nats-py gave up on had an unknown
        outcome: ``Unavailable`` says so. ``long``: work whose time grows
        with the data (a scan of whole partitions), waited for as long as
        the loop thread still answers; each of its requests is bounded by
        ``timeout_s`` on its own."""
        if self._closed:
            raise Closed(f"the NATS backend at {self.url} is closed")

        async def call() -> Any:
            return await make()

        try:
            future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        except RuntimeError as exc:  # the loop closed since the check above
            raise Closed(f"the NATS backend at {self.url} is closed") from exc
        try:
            # nats-py times out each request itself; this bound only guards
            # against a loop that stopped answering.
            while True:
                try:
                    return future.result(timeout=self.timeout_s * 3 + self.guard_extra_s)
                except concurrent.futures.TimeoutError:
                    if not (long and self._loop_answers()):
                        raise
        except Error:
            raise
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise self._error(exc, what) from exc
        except BaseException as exc:
            future.cancel()  # Ctrl-C: a long scan stops too
            raise self._error(exc, what) from exc

    def _loop_answers(self) -> bool:
        """Whether the loop thread runs a callback within ``timeout_s``."""
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # closed
            return False
        return answered.wait(self.timeout_s)

    def _hand_over(
        self, make: Callable[[], Coroutine[Any, Any, Any]], done: Waiter, what: str
    ) -> None:
        """Start ``make()`` on the loop thread and answer ``done`` with its
        result or our error for it (``submit`` of records and of events)."""
        if self._closed:
            done(Closed(f"the NATS backend at {self.url} is closed"))
            return
        try:
            future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        except RuntimeError:  # the loop closed since the check above
            done(Closed(f"the NATS backend at {self.url} is closed"))
            return

        def finished(f: concurrent.futures.Future[Any]) -> None:
            try:
                result: object = f.result()
            except BaseException as exc:
                try:
                    result = self._error(exc, what)
                except BaseException as bug:  # not a NATS error: a bug, said as it is
                    result = bug
            done(result)

        future.add_done_callback(finished)

    def _error(self, exc: BaseException, what: str) -> Error:
        """Our error for what ``what`` raised (chain it: ``raise ... from exc``).
        A request nats-py gave up on had an unknown outcome: ``Unavailable``
        or ``Timeout`` say so."""
        if isinstance(exc, Error):
            return exc
        if isinstance(exc, (concurrent.futures.TimeoutError, *_UNREACHABLE)):
            last = f"; last connection error: {self._last_error!r}" if self._last_error else ""
            # No answer in time: Timeout (as the Redis backend says it); a
            # connection that failed: Unavailable. Either way the outcome is unknown.
            timed_out = isinstance(exc, (concurrent.futures.TimeoutError, asyncio.TimeoutError))
            error: Error = (Timeout if timed_out else Unavailable)(
                f"NATS at {self.url} did not complete {what} (bucket {self.bucket!r}): "
                f"{exc!r}; its outcome is unknown{last}",
                url=self.url,
                bucket=self.bucket,
            )
        elif isinstance(exc, (concurrent.futures.CancelledError, RuntimeError)):
            error = Closed(
                f"the NATS backend at {self.url} was closed during {what}; its outcome is unknown"
            )
        elif isinstance(exc, (nats.errors.Error, js_errors.Error)):
            # str(): nats-py's repr of a server error leaves out its description.
            error = BackendError(
                f"NATS at {self.url} failed {what} (bucket {self.bucket!r}): {exc}",
                url=self.url,
                bucket=self.bucket,
            )
        else:
            raise exc
        error.__cause__ = exc
        return error

    async def _disconnect(self) -> None:
        """Drain if the server still answers (a ping first: nats-py's drain
        would wait its own timeouts for a silent one), else just close."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._nc.flush(timeout=max(1, math.ceil(self.timeout_s))), self.timeout_s
            )
            await self._nc.drain()
        if not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _cancel_the_rest(self) -> None:
        """Cancel what nats-py left running, so the loop closes clean."""
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=self.timeout_s)

    def close(self) -> None:
        """Drain the connection (answers to calls in flight arrive first) and
        stop the loop thread. Idempotent; later calls raise ``Closed``."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for step in (self._disconnect, self._cancel_the_rest):
            done = asyncio.run_coroutine_threadsafe(step(), self._loop)
            with contextlib.suppress(Exception):
                done.result(timeout=self.timeout_s * 3 + 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self.timeout_s + 5)
        if not self._thread.is_alive():
            self._loop.close()
