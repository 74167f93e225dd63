"""The event store's appends and deletes on NATS JetStream: one stream
``UBES_<bucket>`` holding every event stream as a subject. ``_events_meta``
gives the names and the message format, ``_events_read`` the reads, and
docs/explanation/eventstore.md ("On NATS JetStream") the guarantees.

Why one JetStream stream for all: the global position must grow in commit
order without gaps. JetStream numbers a stream's messages in the order its
leader stores them; every message carries ``end``, the position of the last
event up to it, and is published with ``Nats-Expected-Last-Sequence`` = the
sequence of the message it follows. So two writers can never both extend
the same tail: the loser gets error 10071, reads the tail again and decides
again. Positions are dense from 1, and ``$all`` is the stream in sequence
order.

Appending to one stream (``_append``), under a lock of this process (so its
own writers queue instead of conflicting), in this order:

1. Validate (``_core.check_write``); a call writing several streams is
   refused with ``NotSupported``: one message holds one subject, and two
   messages cannot be made visible together on NATS 2.9.
2. The tail (sequence and ``end``) and the event stream's last message,
   as this backend knows them from its last write (one round trip saved
   each), else read (the tail first).
3. ``_core.plan_append`` decides on the stream's state, as on every
   backend. A refusal decided on what was known is decided again on what
   is read: only a publish checks that what was known is still true.
4. Publish one message with every event of the append (so it is atomic),
   ``Nats-Expected-Last-Sequence`` = the tail, and ``Nats-Msg-Id`` = a
   hash of the sorted event ids. Another writer came first (10071): back
   to 2 with the tail read again. The stream saw the same ids within its
   duplicate window: it answers with the first message's sequence, which
   is read and compared (the original result, or ``DuplicateEventId``).
5. A conflicting expected version or a deleted stream (step 3) may be a
   retry whose first attempt landed: the stream's messages that could hold
   it are read back (``_as_retry``), and if they hold the same events the
   original result is returned.
6. ``ublog.<bucket>.changed`` is announced (the log's; one token for both).

Deleting is the same with a marker message instead of events.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from nats.js import errors as js_errors

from ..._ground import Waiter
from ...errors import (
    LimitExceeded,
    NotSupported,
    StreamDeleted,
    Unavailable,
    WrongExpectedVersion,
)
from ...eventstore import _core
from ...eventstore._protocol import (
    NO_STREAM,
    AppendResult,
    StreamState,
    StreamWrite,
)
from ._events_meta import (
    APPEND,
    HARD_DELETE,
    SOFT_DELETE,
    Entry,
    decode_entry,
    encode_entry,
    stream_subject,
)
from ._events_read import NatsEventReads, Tail
from ._kv import CONFLICT_RETRIES_MAX, WRONG_LAST_CODES

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
HEADERS_BYTES_ROOM = 512  # our headers, within the server's max payload
KNOWN_STREAMS_MAX = 10_000  # streams whose last message a backend remembers


class NatsEvents(NatsEventReads):
    """The event-storage methods of :class:`~unbundled.backends.nats.NatsBackend`."""

    clock: Callable[[], int]
    _loop: asyncio.AbstractEventLoop
    _closed: bool
    _payload_bytes_max: Callable[[], int]
    _announce: Callable[[], Any]
    _hand_over: Callable[[Callable[[], Any], Waiter, str], None]

    def _init_events(self) -> None:
        self._events_ready = False
        self._events_direct = False  # reads by direct get (R1 streams)
        # The tail and the last messages of streams as this backend last
        # knew them. Every publish is conditional on that tail, so a decision
        # taken on them lands only if they are still true; a refusal is
        # never decided on them (step 3 of the docstring reads again).
        self._events_tail: Tail | None = None
        self._events_known: dict[str, tuple[int, Entry | None]] = {}
        self._events_lock: asyncio.Lock | None = None  # made on the loop

    # --- appending ----------------------------------------------------------

    def submit_events(self, writes: Sequence[StreamWrite], done: Waiter) -> None:
        self._hand_over(lambda: self._append(writes), done, "an append of events")

    async def _append(self, writes: Sequence[StreamWrite]) -> list[AppendResult]:
        for write in writes:
            _core.check_write(write)
        if len(writes) != 1:
            raise NotSupported(
                f"an append to {len(writes)} streams at once: the NATS backend appends to one "
                "stream atomically, not to several (JetStream 2.9 cannot make two messages "
                f"visible together); append to each stream on its own ({self.url})",
                backend="nats",
                part="an append to several streams",
            )
        write = writes[0]
        # The ids as a set: the same ids in another order are a conflict
        # (DuplicateEventId) the stream should answer too, not a new append.
        ids = ",".join(sorted(e.id for e in write.events))
        msg_id = "ubes:" + hashlib.sha256(ids.encode()).hexdigest()[:40]
        await self._ensure_events()
        if self._events_lock is None:
            self._events_lock = asyncio.Lock()
        async with self._events_lock:
            result = await self._append_one(write, msg_id)
        await self._announce()
        return [result]

    async def _append_one(self, write: StreamWrite, msg_id: str) -> AppendResult:
        subject = stream_subject(self.bucket, write.stream)
        for _ in range(CONFLICT_RETRIES_MAX):
            cached = self._events_tail is not None and write.stream in self._events_known
            tail, (last_seq, last) = await self._events_known_last(write.stream)
            states = {write.stream: last.state()} if last is not None else {}
            try:
                plan = _core.plan_append([write], states, {})
            except (WrongExpectedVersion, StreamDeleted):
                if cached:  # refuse on what is stored, not on what we knew
                    self._events_forget()
                    continue
                retried = await self._as_retry(write, last_seq, last)
                if retried is None:
                    raise
                return retried
            first = plan.first_versions[0]
            count = len(write.events)
            entry = Entry(
                APPEND,
                write.stream,
                first + count - 1,
                last.start if last is not None else 0,
                tail[1] + count,
                last_seq,
                _after(last_seq, last),
                self.clock(),
                [(e.id, e.type, e.schema_version, e.data, e.metadata) for e in write.events],
            )
            body, headers = encode_entry(entry)
            self._check_size(write.stream, body)
            headers[MSG_ID_HEADER] = msg_id
            ack = await self._events_publish(subject, body, headers, tail, write.stream, entry)
            if ack is None:
                continue  # another writer came first: decide again
            if ack.duplicate:
                return await self._duplicate(write, states, int(ack.seq))
            positions = tuple(range(tail[1] + 1, entry.end + 1))
            return AppendResult(write.stream, first, entry.version, positions)
        raise Unavailable(
            f"the events at {self.url} changed under every one of {CONFLICT_RETRIES_MAX} "
            f"attempts to append to {write.stream!r}; nothing was appended",
            url=self.url,
        )

    async def _events_known_last(self, stream: str) -> tuple[Tail, tuple[int, Entry | None]]:
        """The tail and ``stream``'s last message (sequence and entry), as
        known, else read (the tail first: a later read is as new or newer)."""
        if self._events_tail is None:
            self._events_known.clear()
            self._events_tail = await self._tail()
        found = self._events_known.get(stream)
        if found is None:
            found = await self._last(stream)
            if len(self._events_known) >= KNOWN_STREAMS_MAX:
                self._events_known.clear()
            self._events_known[stream] = found
        return self._events_tail, found

    def _events_forget(self) -> None:
        self._events_tail = None
        self._events_known.clear()

    async def _events_publish(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        tail: Tail,
        stream: str,
        entry: Entry,
    ) -> Any:
        """Publish if the tail is still ``tail``: the ack, or None if another
        writer came first. What is known moves with the new message."""
        headers[EXPECTED_LAST_SEQUENCE] = str(tail[0])
        try:
            ack = await self._js.publish(subject, body, headers=headers)
        except js_errors.APIError as exc:
            self._events_forget()
            if exc.err_code in WRONG_LAST_CODES:
                return None
            raise
        except BaseException:
            self._events_forget()  # landed or not: unknown
            raise
        if not ack.duplicate:
            self._events_tail = (int(ack.seq), entry.end)
            self._events_known[stream] = (int(ack.seq), entry)
        return ack

    def _check_size(self, stream: str, body: bytes) -> None:
        size_max = self._payload_bytes_max() - HEADERS_BYTES_ROOM
        if len(body) > size_max:
            raise LimitExceeded(
                f"an append to {stream!r} of {len(body)} bytes exceeds the {size_max} bytes "
                f"one NATS message holds at {self.url} (the server's max_payload): an append "
                "is one message, so that it is atomic",
                stream=stream,
            )

    async def _duplicate(
        self, write: StreamWrite, states: dict[str, StreamState], seq: int
    ) -> AppendResult:
        """The stream already holds a message with these event ids (its
        duplicate window said so): the original result, or ``DuplicateEventId``."""
        msg = await self._events_get(seq=seq)
        if msg is None:
            raise Unavailable(
                f"NATS at {self.url} answered an append as a duplicate of message {seq}, "
                "which is gone",
                url=self.url,
            )
        existing = {e.id: e for e in decode_entry(self.bucket, msg).recorded()}
        plan = _core.plan_append([write], states, existing)
        assert plan.duplicate is not None, "existing events make a retry or a conflict"
        return plan.duplicate[0]

    async def _as_retry(
        self, write: StreamWrite, last_seq: int, last: Entry | None
    ) -> AppendResult | None:
        """Whether an append refused for its expected version had already
        landed (a retry after its window): read back the stream's messages
        that could hold it. For an exact expected version ``e``, those down
        to version ``e + 1``; for ``NO_STREAM``, the first message after
        each soft delete (such an append starts a stream); for the others,
        every message."""
        if last is None:
            return None
        if write.expected_version == NO_STREAM:
            candidates = await self._firsts(write.stream, last_seq, last)
        else:
            candidates = await self._back_to(write, last)
        wanted = {e.id for e in write.events}
        existing = {e.id: e for entry in candidates for e in entry.recorded() if e.id in wanted}
        if not existing:
            return None
        plan = _core.plan_append([write], {write.stream: last.state()}, existing)
        assert plan.duplicate is not None
        return plan.duplicate[0]

    async def _back_to(self, write: StreamWrite, last: Entry) -> list[Entry]:
        """The stream's messages from its last back to the one holding
        version ``expected + 1`` (the first, for ``ANY`` and ``STREAM_EXISTS``)."""
        lowest = write.expected_version + 1 if write.expected_version >= 0 else 0
        wanted = {e.id for e in write.events}
        found: set[str] = set()
        out: list[Entry] = []
        entry = last
        while entry.version >= lowest:
            out.append(entry)
            found |= {e[0] for e in entry.events} & wanted
            if not entry.prev or found == wanted:
                break
            entry = await self._entry_at(entry.prev, write.stream)
        return out

    async def _firsts(self, stream: str, last_seq: int, last: Entry) -> list[Entry]:
        """The first message of each life of ``stream`` (after each soft
        delete, and the very first), newest first: one message get per
        soft delete and one per life."""
        subject = stream_subject(self.bucket, stream)
        out: list[Entry] = []
        after = last_seq if last.kind == SOFT_DELETE else last.after
        while True:
            msg = await self._events_next(subject, after + 1)
            if msg is not None and int(msg.seq) <= last_seq:
                out.append(decode_entry(self.bucket, msg))
            if not after:
                return out
            after = (await self._entry_at(after, stream)).after

    # --- deleting -------------------------------------------------------------

    def delete_stream(self, stream: str, expected_version: int, hard: bool) -> None:
        async def delete() -> None:
            await self._ensure_events()
            if self._events_lock is None:
                self._events_lock = asyncio.Lock()
            async with self._events_lock:
                await self._delete(stream, expected_version, hard)
            await self._announce()

        self._run(delete, f"deleting stream {stream!r}")

    async def _delete(self, stream: str, expected: int, hard: bool) -> None:
        subject = stream_subject(self.bucket, stream)
        for _ in range(CONFLICT_RETRIES_MAX):
            cached = self._events_tail is not None and stream in self._events_known
            tail, (last_seq, last) = await self._events_known_last(stream)
            try:
                version = _core.check_expected(stream, expected, last.state() if last else None)
            except (WrongExpectedVersion, StreamDeleted):
                if cached:
                    self._events_forget()
                    continue
                raise
            entry = Entry(
                HARD_DELETE if hard else SOFT_DELETE,
                stream,
                version,
                version + 1,
                tail[1],
                last_seq,
                _after(last_seq, last),
                self.clock(),
            )
            body, headers = encode_entry(entry)
            if await self._events_publish(subject, body, headers, tail, stream, entry) is not None:
                return
        raise Unavailable(
            f"the events at {self.url} changed under every one of {CONFLICT_RETRIES_MAX} "
            f"attempts to delete {stream!r}; nothing was deleted",
            url=self.url,
        )


def _after(last_seq: int, last: Entry | None) -> int:
    """The sequence of a stream's last soft delete, as its next message records it."""
    if last is None:
        return 0
    return last_seq if last.kind == SOFT_DELETE else last.after
