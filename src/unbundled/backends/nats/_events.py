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

Appending to one stream (``_append``), deciding and sending under a lock of
this process (so its own writers queue instead of conflicting), but not
waiting under it for the answer, in this order:

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
   hash of the sorted event ids; if the tail is a message of ours that was
   sent but not yet answered, also ``Nats-Expected-Last-Msg-Id`` = its id,
   so this one lands only after it (the next append is decided as if it
   landed, and sent at once: appends are pipelined). Another writer came
   first (10071), or the message before did not land (10070): back to 2
   with the tail read again. The stream saw the same ids within its
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
from dataclasses import dataclass
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
from ._publish import MSG_ID_HEADER, Acks, PubAck

EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
WRONG_LAST_MSG_ID_CODE = 10070  # JSStreamWrongLastMsgIDErrF
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
    _acks: Acks

    def _init_events(self) -> None:
        self._events_ready = False
        self._events_direct = False  # reads by direct get (R1 streams)
        # The tail and the last messages of streams as this backend last
        # knew them. Every publish is conditional on that tail, so a decision
        # taken on them lands only if they are still true; a refusal is
        # never decided on them (step 3 of the docstring reads again).
        self._events_tail: Tail | None = None
        self._events_known: dict[str, tuple[int, Entry | None]] = {}
        # The message id of the message the known tail is, if it is one of
        # ours whose answer may not have come yet (see _events_send).
        self._events_tail_id: str | None = None
        self._events_epoch = 0  # moves on each forget (_events_known_last)
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
        result = await self._append_one(write, msg_id)
        await self._announce()
        return [result]

    async def _append_one(self, write: StreamWrite, msg_id: str) -> AppendResult:
        for _ in range(CONFLICT_RETRIES_MAX):
            assert self._events_lock is not None
            async with self._events_lock:  # decide and send; the next may follow at once
                sent = await self._append_send(write, msg_id)
            if isinstance(sent, _Sent):
                result = await self._append_settle(write, sent)
            else:
                result = sent
            if result is not None:
                return result
        raise Unavailable(
            f"the events at {self.url} changed under every one of {CONFLICT_RETRIES_MAX} "
            f"attempts to append to {write.stream!r}; nothing was appended",
            url=self.url,
        )

    async def _append_send(self, write: StreamWrite, msg_id: str) -> AppendResult | _Sent | None:
        """Decide on what is known and send: what was sent, or the result
        (a retry that had landed), or None to decide again on what is read."""
        cached = self._events_tail is not None and write.stream in self._events_known
        tail, tail_id, (last_seq, last) = await self._events_known_last(write.stream)
        states = {write.stream: last.state()} if last is not None else {}
        try:
            plan = _core.plan_append([write], states, {})
        except (WrongExpectedVersion, StreamDeleted):
            if cached:  # refuse on what is stored, not on what we knew
                self._events_forget()
                return None
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
        subject = stream_subject(self.bucket, write.stream)
        ack = self._events_send(subject, body, headers, tail, tail_id)
        self._events_predict(tail, write.stream, entry, msg_id)
        positions = tuple(range(tail[1] + 1, entry.end + 1))
        return _Sent(ack, states, AppendResult(write.stream, first, entry.version, positions))

    async def _append_settle(self, write: StreamWrite, sent: _Sent) -> AppendResult | None:
        """The result once the server answered; None if another writer came first."""
        ack = await self._events_ack(sent.ack)
        if ack is None:
            return None
        if ack.duplicate:
            return await self._duplicate(write, sent.states, ack.seq)
        return sent.result

    async def _events_known_last(
        self, stream: str
    ) -> tuple[Tail, str | None, tuple[int, Entry | None]]:
        """The tail, the message id it must have if it is a message of ours
        (``_events_send``) and ``stream``'s last message (sequence and entry),
        as known, else read (the tail first: a later read is as new or
        newer). One consistent view: what was forgotten while reading (an
        answer came outside the lock) is read again."""
        if stream not in self._events_known and len(self._events_known) >= KNOWN_STREAMS_MAX:
            # Forget the tail too: a stream read now is only as new as a
            # tail read before it (a message of ours may be in flight).
            self._events_forget()
        while True:
            epoch = self._events_epoch
            if self._events_tail is None:
                self._events_known.clear()
                tail = await self._tail()
                if epoch != self._events_epoch:
                    continue
                self._events_tail, self._events_tail_id = tail, None
            found = self._events_known.get(stream)
            if found is None:
                found = await self._last(stream)
                if epoch != self._events_epoch:
                    continue
                self._events_known[stream] = found
            assert self._events_tail is not None
            return self._events_tail, self._events_tail_id, found

    def _events_forget(self) -> None:
        self._events_epoch += 1
        self._events_tail = None
        self._events_tail_id = None
        self._events_known.clear()

    def _events_send(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        tail: Tail,
        tail_id: str | None,
    ) -> asyncio.Future[PubAck]:
        """Publish if the tail is still ``tail``; when that tail is a message
        of ours that may still be in flight (``tail_id``, its message id),
        also only if it landed. Sent in the order of the calls."""
        headers[EXPECTED_LAST_SEQUENCE] = str(tail[0])
        if tail_id is not None:
            headers[EXPECTED_LAST_MSG_ID] = tail_id
        # A task per publish: tasks start in the order they are made, and a
        # task writes its message before it first yields, so the order holds.
        return asyncio.ensure_future(self._acks.publish_ack(subject, body, headers))

    def _events_predict(self, tail: Tail, stream: str, entry: Entry, msg_id: str | None) -> None:
        """What is known, as if the message just sent landed: the next append
        follows it at once, conditional on it (``_events_send``)."""
        seq = tail[0] + 1
        self._events_tail = (seq, entry.end)
        self._events_tail_id = msg_id
        self._events_known[stream] = (seq, entry)

    async def _events_ack(self, sending: asyncio.Future[PubAck]) -> PubAck | None:
        """The answer to a publish; None if another writer came first (or a
        message it followed did not land)."""
        try:
            ack = await sending
        except js_errors.APIError as exc:
            self._events_forget()
            if exc.err_code in WRONG_LAST_CODES or exc.err_code == WRONG_LAST_MSG_ID_CODE:
                return None
            raise
        except BaseException:
            self._events_forget()  # landed or not: unknown
            raise
        if ack.duplicate:
            self._events_forget()  # not stored again: what was predicted is wrong
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
            tail, tail_id, (last_seq, last) = await self._events_known_last(stream)
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
            sending = self._events_send(subject, body, headers, tail, tail_id)
            self._events_predict(tail, stream, entry, None)  # a marker has no message id
            if await self._events_ack(sending) is not None:
                return
        raise Unavailable(
            f"the events at {self.url} changed under every one of {CONFLICT_RETRIES_MAX} "
            f"attempts to delete {stream!r}; nothing was deleted",
            url=self.url,
        )


@dataclass(frozen=True)
class _Sent:
    """An append sent and not yet answered: its answer to come, the states it
    was decided on, and its result if it lands."""

    ack: asyncio.Future[PubAck]
    states: dict[str, StreamState]
    result: AppendResult


def _after(last_seq: int, last: Entry | None) -> int:
    """The sequence of a stream's last soft delete, as its next message records it."""
    if last is None:
        return 0
    return last_seq if last.kind == SOFT_DELETE else last.after
