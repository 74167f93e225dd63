"""Destroy a NATS store: delete the log's record streams
(``UBLOG_<bucket>_<incarnation>_<partition>``), the event store's stream
(``UBES_<bucket>``) and the key-value bucket (its stream ``KV_<bucket>``,
which holds the log's catalog, producers and groups, and the event store's
snapshots and subject keys too).

1. The bucket must exist (``NotFound``) and be a KV bucket: its stream
   carries the subjects ``$KV.<bucket>.>``.
2. It must be ours: empty, or its first and last messages carry
   unbundled's version header (every message we write does). A bucket
   written by other NATS clients is refused (``UsageError``).
3. Delete the record and event streams named after the bucket, then the bucket's
   stream (so a failure half-way leaves the bucket, and running it again
   finishes).

NATS does not tell a client who else uses a bucket (that takes the system
account), so an open store is not detected: stop the processes that use the
bucket first. One of them still writing gets ``Unavailable`` once the bucket
is gone.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from nats.js import errors as js_errors

from ...errors import NotFound, UsageError
from .._report import DestroyReport
from ._backend import NatsBackend
from ._kv import VERSION_HEADER
from ._log_meta import stream_pattern


async def _check(admin: Any) -> tuple[int, int]:
    """Steps 1 and 2: the bucket's message count and bytes."""
    js, stream, bucket = admin._js, admin._stream, admin.bucket
    try:
        info = await js.stream_info(stream)
    except js_errors.NotFoundError:
        raise NotFound(
            f"there is no NATS bucket {bucket!r} at {admin.url}: nothing to destroy",
            url=admin.url,
            bucket=bucket,
        ) from None
    if f"$KV.{bucket}.>" not in (info.config.subjects or []):
        raise UsageError(
            f"refusing to destroy stream {stream!r} at {admin.url}: it is not the KV bucket "
            f"{bucket!r} (its subjects: {info.config.subjects})",
            url=admin.url,
            bucket=bucket,
        )
    state = info.state
    if state.messages:
        for seq in (state.first_seq, state.last_seq):
            msg = await js.get_msg(stream, seq=seq, next=True)
            if VERSION_HEADER not in (msg.headers or {}):
                raise UsageError(
                    f"refusing to destroy NATS bucket {bucket!r} at {admin.url}: its message "
                    f"{msg.seq} was not written by unbundled (no {VERSION_HEADER} header)",
                    url=admin.url,
                    bucket=bucket,
                )
    return int(state.messages), int(state.bytes)


async def _record_streams(admin: Any) -> list[tuple[str, int, int]]:
    """The log's record streams and the events stream of the bucket: name,
    messages, bytes."""
    pattern = re.compile(stream_pattern(admin.bucket))
    found = []
    offset = 0
    while True:  # the server pages its stream list
        page = await admin._js.streams_info(offset=offset)
        for info in page:
            if pattern.fullmatch(info.config.name):
                found.append((info.config.name, int(info.state.messages), int(info.state.bytes)))
        if not page:
            return sorted(found)
        offset += len(page)


def destroy(url: str, *, dry_run: bool) -> DestroyReport:
    """Delete the bucket of ``url`` (see the module docstring)."""

    class Admin(NatsBackend):
        """A connection that opens the bucket without creating it."""

        async def _ensure_bucket(self) -> None:
            pass

    admin = Admin(url)
    try:
        messages, size = admin._run(lambda: _check(admin), "checking the bucket")
        streams = admin._run(lambda: _record_streams(admin), "listing the log's streams")
        if not dry_run:
            for name, _, _ in streams:
                admin._run(partial(admin._js.delete_stream, name), f"deleting {name}")
            admin._run(lambda: admin._js.delete_stream(admin._stream), "deleting the bucket")
    finally:
        admin.close()
    items = tuple(
        f"stream {name}: {count:,} messages ({nbytes:,} bytes)"
        for name, count, nbytes in [*streams, (admin._stream, messages, size)]
    )
    what = f"the NATS bucket {admin.bucket!r} at {admin.url}"
    return DestroyReport("nats", admin.url, admin.bucket, what, items, dry_run)
