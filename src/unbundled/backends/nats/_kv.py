"""The key-value store on a NATS JetStream KV bucket.

A key is one subject of the bucket's stream, ``$KV.<bucket>.<encoded key>``
(:func:`encode_key`); its latest message is its slot. NATS revisions are
stream sequences, global and not dense per key, so each message carries the
key's own version in a header (``Unbundled-Version``); a deleted key is a
message with ``Unbundled-Deleted: 1`` and an empty body, never a NATS
delete or purge marker, so the version survives and is never reused.
History 1 is enough: only the latest message of a key is ever read.

Every change is *read the latest message, decide with* ``kv._core``, *publish
with* ``Nats-Expected-Last-Subject-Sequence`` *= the sequence read* (``0``
for a key never written). The stream leader stores the message only if no
other message of the key came in between, atomically; if one did, the
server refuses (error 10071) and the change starts over from a fresh read.
So the successful conditional publish is a change's linearization point; a
compare-and-set (or delete) whose read shows the expectation failing returns
at that read, changing nothing.

A read is ``$JS.API.STREAM.MSG.GET`` (last message of the subject), which
the stream leader answers from its store, holding every message it
acknowledged. nats-py's ``KeyValue.get`` uses *direct get* when the bucket
allows it, which any replica or mirror may answer, possibly stale: we never
use it.
"""

from __future__ import annotations

import string
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.js import errors as js_errors

from ... import limits
from ...consistency.kv import _core
from ...consistency.kv._protocol import Expect, Versioned
from ...errors import CorruptionError, LimitExceeded, Unavailable

T = TypeVar("T")

VERSION_HEADER = "Unbundled-Version"
DELETED_HEADER = "Unbundled-Deleted"
EXPECTED_LAST_HEADER = "Nats-Expected-Last-Subject-Sequence"
NO_MESSAGE_CODE = 10037  # JSNoMessageFoundErr: the subject has no message
WRONG_LAST_CODES = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err
# Each lost race means another client's change of the key succeeded, so the
# retries make progress overall; the bound only stops a client starved by
# an endless stream of faster writers of one key.
CONFLICT_RETRIES_MAX = 1000

# Characters NATS KV keys allow that we keep as they are; everything else
# (including "_" and ".", which would end a subject token) is escaped.
_PLAIN = frozenset(string.ascii_letters + string.digits + "-/=")
_HEX = frozenset("0123456789ABCDEF")


def encode_key(key: str) -> str:
    """The NATS KV key (``[-/_=.a-zA-Z0-9]+``) of one of our keys: letters,
    digits, ``-``, ``/`` and ``=`` stay, every other character becomes ``_XX``
    per byte of its UTF-8 (``"clé.x"`` -> ``"cl_C3_A9_2Ex"``). Reversible by
    :func:`decode_key`, and readable in ``nats kv`` for plain keys. At most
    3 characters per byte: 3072 for the longest key."""
    return "".join(c if c in _PLAIN else "".join(f"_{b:02X}" for b in c.encode()) for c in key)


def decode_key(encoded: str) -> str:
    """The key :func:`encode_key` turned into ``encoded``; ``ValueError`` if
    ``encoded`` is not such a key."""
    out = bytearray()
    i = 0
    while i < len(encoded):
        c = encoded[i]
        if c == "_":
            digits = encoded[i + 1 : i + 3]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise ValueError(f"bad escape at {i} in {encoded!r}")
            out.append(int(digits, 16))
            i += 3
        elif c in _PLAIN:
            out.append(ord(c))
            i += 1
        else:
            raise ValueError(f"character {c!r} at {i} cannot occur in {encoded!r}")
    key = out.decode()  # UnicodeDecodeError is a ValueError
    if encode_key(key) != encoded:  # e.g. "_41" for "A": not what we write
        raise ValueError(f"{encoded!r} is not the canonical encoding of {key!r}")
    return key


def headers_size(headers: dict[str, str]) -> int:
    """Bytes of a header block as NATS sends it (``NATS/1.0``, one
    ``Name: value`` line each, a blank line): it counts toward ``max_payload``."""
    return len("NATS/1.0\r\n\r\n") + sum(len(f"{k}: {v}\r\n") for k, v in headers.items())


# The headers of a live value at their largest (20 digits: any uint64).
HEADERS_BYTES_MAX = headers_size({EXPECTED_LAST_HEADER: "9" * 20, VERSION_HEADER: "9" * 20})


class NatsKV:
    """The key-value methods of :class:`unbundled.backends.nats.NatsBackend`."""

    bucket: str
    url: str
    _stream: str
    _js: Any  # nats.js.JetStreamContext, untyped
    _run: Callable[[Callable[[], Awaitable[Any]], str], Any]
    _payload_bytes_max: Callable[[], int]

    @property
    def kv_value_bytes_max(self) -> int:
        """The largest value this server surely takes: ``limits.kv_value_bytes_max``,
        or less when the server's message limit (``max_payload``, 1 MiB by
        default, or the bucket's own) leaves less beside our headers."""
        return min(limits.kv_value_bytes_max, self._payload_bytes_max() - HEADERS_BYTES_MAX)

    def _subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{encode_key(key)}"

    def _decode(self, key: str, msg: Any) -> _core.Slot:
        """The slot of a key's latest message; ``CorruptionError`` if it is
        not one we wrote (no version header: written or deleted by another
        NATS client, and then the key's versions are lost)."""
        headers: dict[str, str] = msg.headers or {}
        raw = headers.get(VERSION_HEADER)
        deleted = headers.get(DELETED_HEADER)
        data: bytes = msg.data or b""  # nats-py gives None for an empty body
        if (
            raw is None
            or not (raw.isascii() and raw.isdigit())
            or int(raw) < 1
            or deleted not in (None, "1")
            or (deleted is not None and data)
        ):
            op = headers.get("KV-Operation")
            found = f"a NATS {op} marker" if op else f"headers {headers!r}"
            raise CorruptionError(
                f"key {key!r} in NATS bucket {self.bucket!r} holds a message unbundled "
                f"did not write ({found}, stream sequence {msg.seq}): its version is "
                "lost. Was the key put, deleted or purged with another NATS client?",
                key=key,
                bucket=self.bucket,
            )
        return (None if deleted else data, int(raw))

    async def _latest(self, key: str) -> tuple[_core.Slot | None, int]:
        """The key's slot and the stream sequence of its message (``None, 0``
        for a key never written), read from the stream leader."""
        msg = await self._last_message(self._subject(key))
        if msg is None:
            return None, 0
        return self._decode(key, msg), int(msg.seq)

    async def _last_message(self, subject: str) -> Any | None:
        """The subject's last message in the bucket (None if it has none),
        read from the stream leader; ``Unavailable`` if the bucket is gone."""
        try:
            return await self._js.get_msg(self._stream, subject=subject, direct=False)
        except js_errors.NotFoundError as exc:
            if exc.err_code == NO_MESSAGE_CODE:
                return None
            raise Unavailable(
                f"NATS bucket {self.bucket!r} at {self.url} is gone ({exc.description}); "
                "was it deleted?",
                url=self.url,
                bucket=self.bucket,
            ) from exc

    async def _publish(self, key: str, slot: _core.Slot, last: int) -> bool:
        """Store ``slot`` as the key's message if the key's latest message is
        still at sequence ``last``: True if stored, False if another change
        came first."""
        value, version = slot
        headers = {EXPECTED_LAST_HEADER: str(last), VERSION_HEADER: str(version)}
        if value is None:
            headers[DELETED_HEADER] = "1"
        body = b"" if value is None else value
        if len(body) > (limit := self.kv_value_bytes_max):
            # A message over the server's max_payload makes it close the
            # connection: refuse it here, before anything is sent.
            raise LimitExceeded(
                f"the value for key {key!r} is {len(body)} bytes; this NATS server takes "
                f"values of at most {limit} bytes (its max_payload, 1 MiB by default, or "
                "the bucket's max value size, holds the value and unbundled's "
                f"{HEADERS_BYTES_MAX} bytes of headers; raise them to store values up "
                f"to unbundled's kv_value_bytes_max, {limits.kv_value_bytes_max})",
                key=key,
                size=len(body),
                limit=limit,
            )
        try:
            await self._js.publish(self._subject(key), body, headers=headers)
        except js_errors.APIError as exc:
            if exc.err_code in WRONG_LAST_CODES:
                return False
            raise
        return True

    def _change(
        self, key: str, decide: Callable[[_core.Slot | None], tuple[_core.Slot | None, T]]
    ) -> T:
        """Read, ``decide`` (the slot to store, or None to store nothing; and
        the answer), publish conditionally; start over on a lost race."""

        async def attempt() -> T:
            for _ in range(CONFLICT_RETRIES_MAX):
                slot, last = await self._latest(key)
                stored, answer = decide(slot)
                if stored is None or await self._publish(key, stored, last):
                    return answer
            raise Unavailable(
                f"key {key!r} in NATS bucket {self.bucket!r} changed under every one of "
                f"{CONFLICT_RETRIES_MAX} attempts to change it; nothing was changed",
                key=key,
                url=self.url,
            )

        result: T = self._run(attempt, f"a change of key {key!r}")
        return result

    def kv_read(self, key: str) -> Versioned | None:
        async def read() -> _core.Slot | None:
            slot, _ = await self._latest(key)
            return slot

        slot: _core.Slot | None = self._run(read, f"a read of key {key!r}")
        if slot is None or slot[0] is None:
            return None
        return Versioned(slot[0], slot[1])

    def kv_write(self, key: str, value: bytes) -> int:
        def decide(slot: _core.Slot | None) -> tuple[_core.Slot, int]:
            version = _core.next_version(slot)
            return (value, version), version

        return self._change(key, decide)

    def kv_compare_and_set(self, key: str, expected: Expect, new: bytes) -> int | None:
        def decide(slot: _core.Slot | None) -> tuple[_core.Slot | None, int | None]:
            if not _core.matches(slot, expected):
                return None, None
            version = _core.next_version(slot)
            return (new, version), version

        return self._change(key, decide)

    def kv_delete(self, key: str) -> bool:
        def decide(slot: _core.Slot | None) -> tuple[_core.Slot | None, bool]:
            if slot is None or slot[0] is None:
                return None, False
            return (None, slot[1] + 1), True

        return self._change(key, decide)
