"""Destroy a NATS store: delete the key-value bucket (its stream ``KV_<bucket>``).

1. The bucket must exist (``NotFound``) and be a KV bucket: its stream
   carries the subjects ``$KV.<bucket>.>``.
2. It must be ours: empty, or its first and last messages carry
   unbundled's version header (every message we write does). A bucket
   written by other NATS clients is refused (``UsageError``).
3. Delete the stream.

NATS does not tell a client who else uses a bucket (that takes the system
account), so an open store is not detected: stop the processes that use the
bucket first. One of them still writing gets ``Unavailable`` once the bucket
is gone.
"""

from __future__ import annotations

from typing import Any

from nats.js import errors as js_errors

from ...errors import NotFound, UsageError
from .._report import DestroyReport
from ._backend import NatsBackend
from ._kv import VERSION_HEADER


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


def destroy(url: str, *, dry_run: bool) -> DestroyReport:
    """Delete the bucket of ``url`` (see the module docstring)."""

    class Admin(NatsBackend):
        """A connection that opens the bucket without creating it."""

        async def _ensure_bucket(self) -> None:
            pass

    admin = Admin(url)
    try:
        messages, size = admin._run(lambda: _check(admin), "checking the bucket")
        if not dry_run:
            admin._run(lambda: admin._js.delete_stream(admin._stream), "deleting the bucket")
    finally:
        admin.close()
    items = (f"stream {admin._stream}: {messages:,} messages ({size:,} bytes)",)
    what = f"the NATS bucket {admin.bucket!r} at {admin.url}"
    return DestroyReport("nats", admin.url, admin.bucket, what, items, dry_run)
