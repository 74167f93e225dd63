"""The event store on NATS: names, the message format, and what is not
events (snapshots, subject keys, the refused projections).

Names (``<bucket>`` is the URL's ``bucket=``):

* the events of every stream are in one JetStream stream, ``UBES_<bucket>``,
  with subjects ``ubes.<bucket>.>``. An event stream's subject is
  ``ubes.<bucket>.c<category>.r<rest>``: the stream's name split after its
  category (``account-42`` -> ``account`` and ``-42``), each half in
  lower-case base32 without padding, so any name is two subject tokens and
  a category is the wildcard ``ubes.<bucket>.c<category>.*``. The longest
  name (``limits.stream_name_bytes_max``, 1024 bytes) makes a subject of
  about 1,700 characters, inside NATS's 4,096-byte protocol line.
* snapshots and subject keys are documents in the bucket (``_log_meta``'s
  :class:`~._log_meta.Documents`, changed by compare-and-set), on subjects
  ``$KV.<bucket>._events.snap.<key>`` and ``$KV.<bucket>._events.key.<key>``
  (:func:`~._kv.encode_key`). Being several tokens, they are never a user
  key of the key-value store.

A message is one append to one stream or one deletion marker. Its body is
msgpack :class:`Entry`; its ``Ub-Crc`` header is the body's CRC-32, checked
on every read (``CorruptionError``, as the log's records are).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..._ground import crc32
from ...errors import CorruptionError, LimitExceeded, NotSupported, SubjectForgotten, UsageError
from ...eventstore import _core
from ...eventstore._protocol import (
    NO_STREAM,
    ProjectionTxn,
    RecordedEvent,
    Snapshot,
    StreamState,
    category_of,
)
from ._kv import encode_key
from ._log_meta import Documents

CRC_HEADER = "Ub-Crc"
APPEND, SOFT_DELETE, HARD_DELETE = 0, 1, 2
# Subject keys and forgotten subjects: the bound keeps a document's subject
# within the protocol line, as the key-value store's keys are.
SUBJECT_BYTES_MAX = 1024


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One message of ``UBES_<bucket>``: an append (``events``) or a deletion
    marker (no events), with the state of its stream after it."""

    kind: int  # APPEND, SOFT_DELETE or HARD_DELETE
    stream: str
    version: int  # the stream's version after this message (NO_STREAM: none yet)
    start: int  # the first version readable after it (a soft delete moves it)
    end: int  # the global position of the last event up to this message
    prev: int  # the sequence of the stream's previous message (0: none)
    after: int  # the sequence of its last soft delete before this message (0: none)
    recorded_ms: int
    # id, type, schema version, data, metadata
    events: list[tuple[str, str, int, bytes, bytes]] = []

    def state(self) -> StreamState:
        return StreamState(
            self.stream,
            self.version,
            self.kind == SOFT_DELETE,
            self.kind == HARD_DELETE,
        )

    def recorded(self) -> list[RecordedEvent]:
        """The events of an append, with their versions and positions."""
        first_version = self.version - len(self.events) + 1
        first_position = self.end - len(self.events) + 1
        return [
            RecordedEvent(
                event_id,
                self.stream,
                first_version + i,
                first_position + i,
                kind,
                schema_version,
                data,
                metadata,
                self.recorded_ms,
            )
            for i, (event_id, kind, schema_version, data, metadata) in enumerate(self.events)
        ]


_ENCODER = msgspec.msgpack.Encoder()
_ENTRY = msgspec.msgpack.Decoder(Entry)
_SNAPSHOTS = msgspec.msgpack.Decoder(list[tuple[int, str, int, bytes, int]])
_SUBJECT_KEY = msgspec.msgpack.Decoder(bytes | None)


def events_stream(bucket: str) -> str:
    return f"UBES_{bucket}"


def events_wildcard(bucket: str) -> str:
    return f"ubes.{bucket}.>"


def _token(text: str) -> str:
    return base64.b32encode(text.encode()).decode().rstrip("=").lower()


def _untoken(token: str) -> str:
    padded = token.upper() + "=" * (-len(token) % 8)
    return base64.b32decode(padded).decode()


def stream_subject(bucket: str, stream: str) -> str:
    category = category_of(stream)
    return f"ubes.{bucket}.c{_token(category)}.r{_token(stream[len(category) :])}"


def category_subject(bucket: str, category: str) -> str:
    return f"ubes.{bucket}.c{_token(category)}.*"


def subject_stream(bucket: str, subject: str) -> str:
    """The stream name of an event subject; ``CorruptionError`` for one we never write."""
    parts = subject.split(".")
    try:
        if len(parts) != 4 or parts[:2] != ["ubes", bucket] or parts[2][:1] != "c":
            raise ValueError(subject)
        if parts[3][:1] != "r":
            raise ValueError(subject)
        return _untoken(parts[2][1:]) + _untoken(parts[3][1:])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise CorruptionError(
            f"subject {subject!r} in NATS stream {events_stream(bucket)} is not an event "
            "stream's subject",
            subject=subject,
        ) from exc


def encode_entry(entry: Entry) -> tuple[bytes, dict[str, str]]:
    body = _ENCODER.encode(entry)
    return body, {CRC_HEADER: str(crc32(body, 0))}


def decode_entry(bucket: str, msg: Any) -> Entry:
    """The entry of a stored message; ``CorruptionError`` if its checksum,
    its body or its subject is not what we wrote."""
    body: bytes = msg.data or b""
    crc = (msg.headers or {}).get(CRC_HEADER)
    where = f"message {msg.seq} of NATS stream {events_stream(bucket)}"
    if crc is None or crc != str(crc32(body, 0)):
        raise CorruptionError(
            f"{where} fails its checksum (stored {crc!r}, computed {crc32(body, 0)})",
            sequence=int(msg.seq),
        )
    try:
        entry = _ENTRY.decode(body)
    except msgspec.DecodeError as exc:
        raise CorruptionError(
            f"{where} is not an event entry: {exc}", sequence=int(msg.seq)
        ) from exc
    if subject_stream(bucket, msg.subject) != entry.stream:
        raise CorruptionError(
            f"{where} holds stream {entry.stream!r} under another stream's subject",
            sequence=int(msg.seq),
        )
    return entry


def _check_subject(subject: object) -> str:
    if not isinstance(subject, str) or not 1 <= len(subject.encode()) <= SUBJECT_BYTES_MAX:
        raise UsageError(
            f"subject {subject!r} must be a string of 1 to {SUBJECT_BYTES_MAX} bytes",
            subject=subject,
        )
    return subject


class NatsEventDocuments:
    """Snapshots and subject keys as documents of the bucket, and the
    projections NATS refuses. Mixed into :class:`~.NatsBackend`."""

    bucket: str
    url: str
    _docs: Documents
    _run: Callable[..., Any]
    _payload_bytes_max: Callable[[], int]

    def _snapshot_subject(self, stream: str) -> str:
        return f"$KV.{self.bucket}._events.snap.{encode_key(_core.check_stream_name(stream))}"

    def _key_subject(self, subject: str) -> str:
        return f"$KV.{self.bucket}._events.key.{encode_key(_check_subject(subject))}"

    # --- snapshots: one document per stream, every kept version in it --------

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Kept beside the older ones in the stream's document; when the
        document would outgrow a NATS message, the oldest are dropped, and
        a snapshot that alone does not fit raises ``LimitExceeded``."""
        size_max = self._payload_bytes_max() - 256  # room for the headers
        item = (snapshot.version, snapshot.type, snapshot.schema_version, snapshot.data,
                snapshot.recorded_ms)  # fmt: skip

        def decide(body: bytes | None) -> tuple[bytes, None]:
            kept = [s for s in (_SNAPSHOTS.decode(body) if body else []) if s[0] != item[0]]
            kept = sorted([*kept, item], key=lambda s: s[0])
            new = _ENCODER.encode(kept)
            while len(new) > size_max and len(kept) > 1:
                kept = kept[1:] if kept[0] is not item else kept[:1] + kept[2:]
                new = _ENCODER.encode(kept)
            if len(new) > size_max:
                raise LimitExceeded(
                    f"a snapshot of {snapshot.stream!r} of {len(snapshot.data)} bytes does not "
                    f"fit a NATS message ({size_max} bytes) at {self.url}",
                    stream=snapshot.stream,
                )
            return new, None

        subject = self._snapshot_subject(snapshot.stream)
        self._run(lambda: self._docs.update(subject, decide), f"saving a snapshot of {subject}")

    def load_snapshot(self, stream: str, max_version: int | None = None) -> Snapshot | None:
        subject = self._snapshot_subject(stream)
        body, _ = self._run(lambda: self._docs.load(subject), f"loading a snapshot of {stream!r}")
        for version, kind, schema_version, data, recorded_ms in reversed(
            _SNAPSHOTS.decode(body) if body else []
        ):
            if max_version is None or version <= max_version:
                return Snapshot(stream, version, kind, schema_version, data, recorded_ms)
        return None

    # --- subject keys: a document per subject; forgotten is final -----------

    def subject_key(self, subject: str, new_key: bytes) -> bytes:
        def decide(body: bytes | None) -> tuple[bytes | None, bytes]:
            if body is None:
                return _ENCODER.encode(new_key), new_key
            key = _SUBJECT_KEY.decode(body)
            if key is None:
                raise SubjectForgotten(f"subject {subject!r} was forgotten", subject=subject)
            return None, key

        doc = self._key_subject(subject)
        key: bytes = self._run(lambda: self._docs.update(doc, decide), f"the key of {subject!r}")
        return key

    def find_subject_keys(self, subjects: Sequence[str]) -> dict[str, bytes | None]:
        docs = [self._key_subject(s) for s in subjects]

        async def find() -> list[tuple[bytes | None, int]]:
            return list(await asyncio.gather(*(self._docs.load(d) for d in docs)))

        found = self._run(find, "finding subject keys")
        return {
            s: _SUBJECT_KEY.decode(body)
            for s, (body, _) in zip(subjects, found, strict=True)
            if body is not None
        }

    def forget_subject(self, subject: str) -> None:
        """Once its document says forgotten, no writer puts a key back
        (every change is a compare-and-set decided on the stored document)."""

        def decide(body: bytes | None) -> tuple[bytes | None, None]:
            if body is not None and _SUBJECT_KEY.decode(body) is None:
                return None, None
            return _ENCODER.encode(None), None

        doc = self._key_subject(subject)
        self._run(lambda: self._docs.update(doc, decide), f"forgetting {subject!r}")

    # --- projections: refused -------------------------------------------------

    def _refuse_projections(self, what: str) -> NotSupported:
        return NotSupported(
            f"{what}: the NATS backend cannot commit a read model's documents with its "
            "checkpoint in one transaction (JetStream 2.9 has no transaction over several "
            "subjects); keep read models on SQLite or PostgreSQL, reading the events from "
            f"NATS ({self.url})",
            backend="nats",
            part="projections",
        )

    def project(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        apply: Callable[[ProjectionTxn], None],
    ) -> None:
        raise self._refuse_projections(f"projection {name!r}")

    def reset_projection(
        self,
        name: str,
        collections: Sequence[str],
        apply: Callable[[ProjectionTxn], None] | None = None,
    ) -> None:
        raise self._refuse_projections(f"resetting projection {name!r}")

    def checkpoints(self) -> dict[str, int]:
        """None: no projection can run here."""
        return {}

    def get_document(self, collection: str, key: str) -> bytes | None:
        """None: no projection can write one here."""
        return None

    def list_documents(self, collection: str, after: str, limit: int) -> list[tuple[str, bytes]]:
        return []


__all__ = [
    "APPEND",
    "HARD_DELETE",
    "NO_STREAM",
    "SOFT_DELETE",
    "Entry",
    "NatsEventDocuments",
    "category_subject",
    "decode_entry",
    "encode_entry",
    "events_stream",
    "events_wildcard",
    "stream_subject",
    "subject_stream",
]
