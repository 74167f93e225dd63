"""Where the log on NATS keeps what is not records: names, and documents
changed by compare-and-set.

Names (``<bucket>`` is the URL's ``bucket=``, so one bucket is one store):

* partition ``p`` of a topic is the stream ``UBLOG_<bucket>_<incarnation>_<p>``
  holding the one subject ``ublog.<bucket>.<incarnation>.<p>``. The
  incarnation is 16 random hex digits chosen when the topic is created, so
  topic names need no encoding and a topic deleted and created again never
  meets its predecessor's streams (or their duplicate windows).
* the catalog (topic name -> config and incarnation), each producer's epoch
  and sequence window, and each consumer group's state with its committed
  offsets are one message each in the store's KV bucket, on subjects
  ``$KV.<bucket>._log.catalog``, ``..._log.p.<id>`` and ``..._log.g.<name>``.
  ``_log`` starts with ``_l``, which :func:`~._kv.encode_key` never writes
  (its escapes are ``_`` and two hex digits) and a user key is one token, so
  these subjects can never be a key of the key-value store.
* ``ublog.<bucket>.changed``: a core NATS subject (no stream) on which every
  write announces itself, so that waiting readers wake without polling.

A document changes the way a key of the key-value store does (``_kv``):
read its latest message, decide, publish with
``Nats-Expected-Last-Subject-Sequence`` = the sequence read, start over if
another writer came first. So every change of a group (a join, a commit) is
atomic: a fenced member's commit is decided against the state that is
stored, or it fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.js import errors as js_errors

from ...errors import Unavailable
from ...log._protocol import TopicConfig
from ._kv import (
    CONFLICT_RETRIES_MAX,
    EXPECTED_LAST_HEADER,
    NO_MESSAGE_CODE,
    VERSION_HEADER,
    WRONG_LAST_CODES,
    encode_key,
)

T = TypeVar("T")


class TopicEntry(msgspec.Struct, frozen=True):
    config: TopicConfig
    incarnation: str


class Catalog(msgspec.Struct):
    topics: dict[str, TopicEntry] = {}


class ProducerDoc(msgspec.Struct):
    epoch: int = 0
    last_sequence: int = -1
    # sequence -> [[topic, partition, offset], ...], the most recent last.
    window: list[tuple[int, list[tuple[str, int, int]]]] = []


def new_incarnation() -> str:
    return uuid.uuid4().hex[:16]


def stream_name(bucket: str, incarnation: str, partition: int) -> str:
    return f"UBLOG_{bucket}_{incarnation}_{partition}"


def record_subject(bucket: str, incarnation: str, partition: int) -> str:
    return f"ublog.{bucket}.{incarnation}.{partition}"


def changed_subject(bucket: str) -> str:
    return f"ublog.{bucket}.changed"


def catalog_subject(bucket: str) -> str:
    return f"$KV.{bucket}._log.catalog"


def producer_subject(bucket: str, producer_id: str) -> str:
    return f"$KV.{bucket}._log.p.{encode_key(producer_id)}"


def group_subject(bucket: str, group: str) -> str:
    return f"$KV.{bucket}._log.g.{encode_key(group)}"


def stream_pattern(bucket: str) -> str:
    """A regular expression matching every stream of ``bucket`` but its KV
    stream (and no other bucket's): the log's record streams and the event
    store's ``UBES_<bucket>`` (``_events_meta``)."""
    return rf"UBLOG_{bucket}_[0-9a-f]{{16}}_[0-9]+|UBES_{bucket}"


class Documents:
    """Load and change the documents of one bucket (coroutines, on the loop)."""

    def __init__(self, js: Any, stream: str, url: str) -> None:
        self._js = js
        self._stream = stream
        self._url = url

    async def load(self, subject: str) -> tuple[bytes | None, int]:
        """The document's body and the stream sequence of its message
        (``None, 0`` if never written), read from the stream leader."""
        try:
            msg = await self._js.get_msg(self._stream, subject=subject, direct=False)
        except js_errors.NotFoundError as exc:
            if exc.err_code == NO_MESSAGE_CODE:
                return None, 0
            raise Unavailable(
                f"NATS stream {self._stream!r} at {self._url} is gone ({exc.description}); "
                "was the store destroyed?",
                url=self._url,
            ) from exc
        return (msg.data or b""), int(msg.seq)

    async def store(self, subject: str, body: bytes, last: int) -> bool:
        """Publish ``body`` if the subject's latest message is still ``last``."""
        # The version header marks the message as ours for destroy().
        headers = {EXPECTED_LAST_HEADER: str(last), VERSION_HEADER: "1"}
        try:
            await self._js.publish(subject, body, headers=headers)
        except js_errors.APIError as exc:
            if exc.err_code in WRONG_LAST_CODES:
                return False
            raise
        return True

    async def update(
        self, subject: str, decide: Callable[[bytes | None], tuple[bytes | None, T]]
    ) -> T:
        """Read, ``decide`` (the new body or None to write nothing, and the
        answer), publish conditionally; start over when another writer won.
        ``decide`` may raise: then nothing is written."""
        for _ in range(CONFLICT_RETRIES_MAX):
            body, last = await self.load(subject)
            new, answer = decide(body)
            if new is None or await self.store(subject, new, last):
                return answer
        raise Unavailable(
            f"{subject} changed under every one of {CONFLICT_RETRIES_MAX} attempts to "
            "change it; nothing was changed",
            url=self._url,
        )
