"""The event store's reads on NATS JetStream, and the message gets both
reads and appends (``_events``) build on: direct gets on an R1 stream (its
one server answers), the API's message get, which the leader answers, on a
replicated one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from nats.js import errors as js_errors
from nats.js.api import StorageType, StreamConfig

from ...errors import BackendError, CorruptionError, Error, UsageError
from ...eventstore import _core
from ...eventstore._protocol import NO_STREAM, RecordedEvent, StreamState
from ._events_meta import (
    APPEND,
    Entry,
    category_subject,
    decode_entry,
    events_stream,
    events_wildcard,
    stream_subject,
    subject_stream,
)
from ._kv import NO_MESSAGE_CODE
from ._streams import ensure_stream

# The JetStream API's subjects: the backend's context has no domain or prefix.
JS_API = "$JS.API"
READ_PIPELINE_MAX = 64  # message gets in flight at once while reading $all
Tail = tuple[int, int]  # (sequence, end) of the last message


class NatsEventReads:
    """The event-reading methods of :class:`~unbundled.backends.nats.NatsBackend`."""

    bucket: str
    url: str
    replicas: int
    dedupe_window_s: float
    timeout_s: float
    _js: Any
    _nc: Any
    _run: Callable[..., Any]
    _error: Callable[[BaseException, str], Error]
    _events_ready: bool
    _events_direct: bool
    change_token: Callable[[], int]
    wait_for_change: Callable[[int, float], int]

    # --- the stream and its messages --------------------------------------

    async def _ensure_events(self) -> None:
        """Create ``UBES_<bucket>`` if missing (once per backend)."""
        if self._events_ready:
            return
        name = events_stream(self.bucket)
        config = StreamConfig(
            name=name,
            subjects=[events_wildcard(self.bucket)],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=self.dedupe_window_s,
            allow_direct=True,
        )
        info = await ensure_stream(
            self._js, name, lambda: self._js.add_stream(config), self.timeout_s, self.url
        )
        config = info.config
        limited = [
            f"{field}={value}"
            for field, value in (
                ("max_age", config.max_age),
                ("max_msgs", config.max_msgs),
                ("max_bytes", config.max_bytes),
                ("max_msgs_per_subject", config.max_msgs_per_subject),
            )
            if value not in (None, 0, -1)
        ]
        if config.subjects != [events_wildcard(self.bucket)] or limited:
            raise UsageError(
                f"NATS stream {name!r} at {self.url} is not the event store's: its subjects "
                f"are {config.subjects} (expected [{events_wildcard(self.bucket)!r}])"
                + (f" and it drops messages ({', '.join(limited)})" if limited else "")
                + "; events are never removed, so a stream with limits cannot hold them",
                stream=name,
            )
        # Direct gets skip the API's JSON and base64 (several times faster);
        # on an R1 stream its one server answers them, as fresh as a leader.
        # On a replicated stream a follower might answer stale: not used there.
        self._events_direct = bool(config.allow_direct) and (config.num_replicas or 1) == 1
        self._events_ready = True

    async def _events_get(self, seq: int | None = None, subject: str | None = None) -> Any:
        """The message at ``seq``, or the last one of ``subject`` (None if
        none), from the stream leader."""
        direct = self._events_direct
        try:
            return await self._js.get_msg(
                events_stream(self.bucket), seq=seq, subject=subject, direct=direct
            )
        except js_errors.NotFoundError as exc:
            # A direct get says "none" with status 404 (no error code).
            if exc.err_code == NO_MESSAGE_CODE or (direct and exc.err_code is None):
                return None
            raise

    async def _events_next(self, subject: str, seq: int) -> Any:
        """The first message of ``subject`` at or after ``seq`` (None if none)."""
        direct = self._events_direct
        try:
            return await self._js.get_msg(
                events_stream(self.bucket), seq=seq, subject=subject, next=True, direct=direct
            )
        except js_errors.NotFoundError as exc:
            if exc.err_code == NO_MESSAGE_CODE or (direct and exc.err_code is None):
                return None
            raise

    async def _entry_at(self, seq: int, stream: str) -> Entry:
        """The message a stream's later one names as its ``prev``: there,
        or the stream lost a message (``CorruptionError``), never skipped."""
        msg = await self._events_get(seq=seq)
        if msg is None:
            raise CorruptionError(
                f"message {seq} of stream {stream!r} is missing from NATS stream "
                f"{events_stream(self.bucket)} (deleted by hand?); its events are lost",
                stream=stream,
                sequence=seq,
            )
        entry = decode_entry(self.bucket, msg)
        if entry.stream != stream:
            raise CorruptionError(
                f"message {seq} of NATS stream {events_stream(self.bucket)}, named by stream "
                f"{stream!r} as its previous, belongs to {entry.stream!r}",
                stream=stream,
                sequence=seq,
            )
        return entry

    async def _last(self, stream: str) -> tuple[int, Entry | None]:
        msg = await self._events_get(subject=stream_subject(self.bucket, stream))
        return (0, None) if msg is None else (int(msg.seq), decode_entry(self.bucket, msg))

    async def _tail(self) -> Tail:
        msg = await self._events_get(subject=events_wildcard(self.bucket))
        return (0, 0) if msg is None else (int(msg.seq), decode_entry(self.bucket, msg).end)

    # --- reading one stream ---------------------------------------------------

    def read_stream(
        self, stream: str, from_version: int, limit: int, backwards: bool = False
    ) -> list[RecordedEvent]:
        async def read() -> list[RecordedEvent]:
            await self._ensure_events()
            last_seq, last = await self._last(stream)
            _core.check_readable(stream, last.state() if last is not None else None)
            assert last is not None
            if backwards:
                top = min(from_version, last.version)
                low = max(top - limit + 1, last.start)
                events = await self._walk_back(last_seq, last, low, top)
                return events[::-1]
            low = max(from_version, last.start)
            top = min(low + limit - 1, last.version)
            if low > top:
                return []
            # From the end through ``prev`` when that reads fewer versions
            # than forward from the stream's last soft delete.
            if last.version - low <= top - last.start:
                return await self._walk_back(last_seq, last, low, top)
            return await self._walk_forward(stream, last.after, low, top)

        result: list[RecordedEvent] = self._run(read, f"a read of stream {stream!r}")
        return result

    async def _walk_back(self, seq: int, entry: Entry, low: int, top: int) -> list[RecordedEvent]:
        """Events with versions ``low..top``, in version order, from the
        message at ``seq`` back through ``prev``."""
        newest_first: list[RecordedEvent] = []
        current = entry
        while current.version >= low:
            newest_first += [e for e in reversed(current.recorded()) if low <= e.version <= top]
            if not current.prev:
                break
            current = await self._entry_at(current.prev, current.stream)
        return newest_first[::-1]

    async def _walk_forward(
        self, stream: str, after: int, low: int, top: int
    ) -> list[RecordedEvent]:
        subject = stream_subject(self.bucket, stream)
        out: list[RecordedEvent] = []
        seq = after + 1
        while (msg := await self._events_next(subject, seq)) is not None:
            entry = decode_entry(self.bucket, msg)
            out.extend(e for e in entry.recorded() if low <= e.version <= top)
            if entry.version >= top:
                break
            seq = int(msg.seq) + 1
        return out

    def stream_state(self, stream: str) -> StreamState:
        async def state() -> StreamState:
            await self._ensure_events()
            _, last = await self._last(stream)
            return (
                last.state() if last is not None else StreamState(stream, NO_STREAM, False, False)
            )

        result: StreamState = self._run(state, f"the state of stream {stream!r}")
        return result

    def list_streams(self, after: str, limit: int, category: str | None = None) -> list[str]:
        """From the stream's subjects (``stream_info`` with a subject filter,
        one request), then each candidate's last message for its deletion."""

        async def names() -> list[str]:
            await self._ensure_events()
            pattern = (
                events_wildcard(self.bucket)
                if category is None
                else category_subject(self.bucket, category)
            )
            found = sorted(subject_stream(self.bucket, s) for s in await self._subjects(pattern))
            candidates = [n for n in found if n > after]
            out: list[str] = []
            for i in range(0, len(candidates), READ_PIPELINE_MAX):
                chunk = candidates[i : i + READ_PIPELINE_MAX]
                lasts = await asyncio.gather(*(self._last(n) for n in chunk))
                for name, (_, entry) in zip(chunk, lasts, strict=True):
                    if entry is not None and entry.kind == APPEND:
                        out.append(name)
                        if len(out) >= limit:
                            return out
            return out

        result: list[str] = self._run(names, "listing streams")
        return result

    async def _subjects(self, pattern: str) -> list[str]:
        """Every subject of the events stream matching ``pattern``: stream
        info with a subject filter, page by page (the server sends at most
        100,000 a page; nats-py's ``stream_info`` reads the first page only)."""
        subjects: list[str] = []
        while True:
            request = {"subjects_filter": pattern, "offset": len(subjects)}
            reply = await self._nc.request(
                f"{JS_API}.STREAM.INFO.{events_stream(self.bucket)}",
                json.dumps(request).encode(),
                timeout=self.timeout_s,
            )
            answer = json.loads(reply.data)
            if "error" in answer:
                raise BackendError(
                    f"NATS at {self.url} refused the stream info of "
                    f"{events_stream(self.bucket)}: {answer['error']}",
                    url=self.url,
                )
            page = list((answer.get("state") or {}).get("subjects") or {})
            subjects += page
            if not page or len(subjects) >= int(answer.get("total", 0)):
                return subjects

    # --- reading $all -----------------------------------------------------------

    def safe_position(self) -> int:
        async def safe() -> int:
            await self._ensure_events()
            return (await self._tail())[1]

        result: int = self._run(safe, "reading the head of $all")
        return result

    def read_all(
        self,
        after_position: int,
        limit: int,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        """Every message is scanned from the first holding a position after
        ``after_position`` (found by bisection); one category is a subject
        filter on the server, several or types are filtered here."""
        if (categories is not None and not categories) or (types is not None and not types):
            self._run(self._ensure_events, "reading $all")  # still Closed when closed
            return []
        wanted_categories = set(categories) if categories is not None else None
        wanted_types = set(types) if types is not None else None

        async def read() -> list[RecordedEvent]:
            await self._ensure_events()
            tail_seq, end = await self._tail()
            if after_position >= end:
                return []
            seq = await self._first_after(max(after_position, 0), tail_seq)
            subject = (
                category_subject(self.bucket, next(iter(wanted_categories)))
                if wanted_categories is not None and len(wanted_categories) == 1
                else events_wildcard(self.bucket)
            )
            # Reading every message, from the one before: a gap is lost events.
            every = subject == events_wildcard(self.bucket)
            seq = max(seq - 1, 1) if every else seq
            end_before: int | None = None
            out: list[RecordedEvent] = []
            while seq <= tail_seq:
                count = min(READ_PIPELINE_MAX, tail_seq - seq + 1)
                # Every message: gets by sequence (the server looks each up
                # at once); one category: the next message of its subjects.
                msgs = await asyncio.gather(
                    *(
                        self._events_get(seq=seq + i)
                        if every
                        else self._events_next(subject, seq + i)
                        for i in range(count)
                    )
                )
                last = seq - 1
                for msg in msgs:
                    if msg is None or int(msg.seq) <= last or int(msg.seq) > tail_seq:
                        continue
                    if every and int(msg.seq) != last + 1:
                        raise CorruptionError(
                            f"messages {last + 1}..{int(msg.seq) - 1} of NATS stream "
                            f"{events_stream(self.bucket)} are missing (deleted by hand?): "
                            "their events are lost, and $all is never read past them",
                            sequence=last + 1,
                        )
                    last = int(msg.seq)
                    entry = decode_entry(self.bucket, msg)
                    if (
                        every
                        and end_before is not None
                        and end_before != entry.end - len(entry.events)
                    ):
                        raise CorruptionError(
                            f"message {last} of NATS stream {events_stream(self.bucket)} holds "
                            f"positions up to {entry.end}, not following {end_before}",
                            sequence=last,
                        )
                    end_before = entry.end
                    for event in entry.recorded():
                        if event.position <= after_position or (
                            wanted_types is not None and event.type not in wanted_types
                        ):
                            continue
                        if wanted_categories is not None and event.category not in (
                            wanted_categories
                        ):
                            continue
                        out.append(event)
                        if len(out) >= limit:
                            return out
                if last < seq:
                    break
                seq = last + 1
            return out

        result: list[RecordedEvent] = self._run(read, "a read of $all")
        return result

    async def _first_after(self, position: int, tail_seq: int) -> int:
        """The first sequence whose message's ``end`` exceeds ``position``
        (messages' ends never decrease): a bisection of message gets."""
        low, high = 1, tail_seq
        while low < high:
            middle = (low + high) // 2
            msg = await self._events_get(seq=middle)
            if msg is None:
                raise CorruptionError(
                    f"message {middle} of NATS stream {events_stream(self.bucket)} is missing "
                    "(deleted by hand?): its events are lost",
                    sequence=middle,
                )
            if decode_entry(self.bucket, msg).end <= position:
                low = middle + 1
            else:
                high = middle
        return low

    # --- change notification (the log's token) -------------------------------

    def events_change_token(self) -> int:
        return self.change_token()

    def wait_for_events(self, token: int, timeout_s: float) -> int:
        return self.wait_for_change(token, timeout_s)
