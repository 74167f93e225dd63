"""A log record as a JetStream message (``_log`` writes it, reads it back).

The body is the CRC-32 (4 bytes, big-endian) of the rest, then msgpack
``[key, value, headers, timestamp]`` (``value`` nil for a tombstone). Only a
record that may be sent again (a batch's, an idempotent producer's) carries
a header, ``Nats-Msg-Id``; see ``_log`` for why a single append has none.
Records written by earlier versions kept the CRC in a ``Ub-Crc`` header over
the whole body; a message with that header is read that way.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..._ground import crc32
from ...errors import CorruptionError, RecordTooLarge
from ...log._protocol import AppendItem, Record
from ._publish import MSG_ID_HEADER

CRC_HEADER = "Ub-Crc"  # the earlier format's
CRC_BYTES = 4
# Room left in the server's max_payload for the subject and headers.
HEADERS_BYTES_ROOM = 200
_ENCODER = msgspec.msgpack.Encoder()
_BODY = msgspec.msgpack.Decoder(tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int])


def encode(
    topic: str, item: AppendItem, msg_id: str | None, payload_bytes_max: int
) -> tuple[bytes, dict[str, str] | None]:
    """``(body, headers)`` of ``item``; ``RecordTooLarge`` if the server's
    ``payload_bytes_max`` cannot hold it."""
    payload = _ENCODER.encode((item.key, item.value, list(item.headers), item.timestamp))
    body = crc32(payload, 0).to_bytes(CRC_BYTES, "big") + payload
    limit = payload_bytes_max - HEADERS_BYTES_ROOM
    if len(body) > limit:
        raise RecordTooLarge(
            f"a record of {len(body)} bytes (encoded) does not fit this NATS server's "
            f"message limit ({limit} bytes beside unbundled's headers; raise the "
            "server's max_payload for larger records)",
            topic=topic,
            size=len(body),
            limit=limit,
            backend="nats",
        )
    return body, ({MSG_ID_HEADER: msg_id} if msg_id is not None else None)


def decode(topic: str, partition: int, stream: str, msg: Any) -> Record:
    """The record in ``msg`` (a message of ``stream``), its CRC checked:
    ``CorruptionError`` naming topic, partition and offset if it fails."""
    data: bytes = msg.data or b""
    headers: dict[str, str] | None = msg.headers
    offset = int(msg.seq) - 1
    header_crc = headers.get(CRC_HEADER) if headers else None
    stored: object
    if header_crc is not None:  # the earlier format
        body = memoryview(data)
        stored = header_crc
        good = header_crc == str(crc32(body, 0))
    else:
        body = memoryview(data)[CRC_BYTES:]
        stored = int.from_bytes(data[:CRC_BYTES], "big") if len(data) >= CRC_BYTES else None
        good = stored == crc32(body, 0)
    if not good:
        raise CorruptionError(
            f"record {topic}[{partition}]@{offset} in NATS stream {stream} fails its "
            f"checksum (stored {stored!r}, computed {crc32(body, 0)})",
            topic=topic,
            partition=partition,
            offset=offset,
        )
    try:
        key, value, rheaders, timestamp = _BODY.decode(body)
    except msgspec.DecodeError as exc:  # a matching CRC over bytes that are no record
        raise CorruptionError(
            f"record {topic}[{partition}]@{offset} in NATS stream {stream} is not a record: {exc}",
            topic=topic,
            partition=partition,
            offset=offset,
        ) from None
    return Record(topic, partition, offset, key, value, tuple(rheaders), timestamp)
