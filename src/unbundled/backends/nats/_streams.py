"""Streams the backend makes for itself (the KV bucket's, the event store's):
created once, by whichever process comes first, and then looked up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import errors as js_errors

from ...errors import Unavailable

STREAM_IN_USE_CODE = 10058  # JSStreamNameExistErr: created by someone else meanwhile
_FIRST_WAIT_S = 0.02
_LONGEST_WAIT_S = 0.25


async def ensure_stream(
    js: Any, name: str, create: Callable[[], Awaitable[object]], timeout_s: float, url: str
) -> Any:
    """The ``StreamInfo`` of stream ``name``, made by ``create()`` if missing.

    On a cluster a stream just made (by us, or by a racer whose create we
    lost to with ``STREAM_IN_USE_CODE``) may be unknown to the server that
    answers the next lookup for a moment: seen under load on a three-node
    cluster, where a lookup right after a create said 404. So a lookup
    after a create is retried for up to ``timeout_s``, then ``Unavailable``
    (retryable: the stream exists or will), never a ``NotFoundError``.
    """
    try:
        return await js.stream_info(name)
    except js_errors.NotFoundError:
        pass
    try:
        await create()
    except js_errors.APIError as exc:
        if exc.err_code != STREAM_IN_USE_CODE:
            raise
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    wait = _FIRST_WAIT_S
    while True:
        try:
            return await js.stream_info(name)
        except js_errors.NotFoundError as exc:
            if loop.time() + wait > deadline:
                raise Unavailable(
                    f"NATS at {url} made stream {name!r} but did not report it within "
                    f"{timeout_s} s (a cluster still placing it?); try again",
                    url=url,
                    stream=name,
                ) from exc
            await asyncio.sleep(wait)
            wait = min(2 * wait, _LONGEST_WAIT_S)
