"""The log's record format on NATS (``backends/nats/_log_format``), without a
server: what is encoded decodes to the same record, and damage anywhere in
the body is ``CorruptionError``, never a different record."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled import CorruptionError, RecordTooLarge
from unbundled.backends.nats import _log_format
from unbundled.log._protocol import AppendItem

items = st.builds(
    AppendItem,
    partition=st.just(0),
    key=st.none() | st.binary(max_size=20),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3).map(tuple),
    timestamp=st.integers(0, 2**62),
)


def _msg(body: bytes, headers: dict[str, str] | None = None, seq: int = 8) -> SimpleNamespace:
    return SimpleNamespace(data=body, headers=headers, seq=seq)


@given(items, st.none() | st.text(min_size=1, max_size=10))
def test_a_record_decodes_to_what_was_encoded(item: AppendItem, msg_id: str | None) -> None:
    body, headers = _log_format.encode("t", item, msg_id, 1 << 20)
    assert headers == (None if msg_id is None else {"Nats-Msg-Id": msg_id})
    record = _log_format.decode("t", 0, "S", _msg(body, headers))
    assert (record.offset, record.key, record.value, record.timestamp) == (
        7,
        item.key,
        item.value,
        item.timestamp,
    )
    assert record.headers == item.headers


@given(items, st.data())
def test_any_damaged_byte_is_corruption(item: AppendItem, data: st.DataObject) -> None:
    body, _ = _log_format.encode("t", item, None, 1 << 20)
    at = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = body[:at] + bytes([body[at] ^ flip]) + body[at + 1 :]
    with pytest.raises(CorruptionError) as info:
        _log_format.decode("t", 3, "S", _msg(damaged))
    assert info.value.details == {"topic": "t", "partition": 3, "offset": 7}


@given(st.binary(max_size=40))
def test_bytes_with_a_matching_crc_that_are_no_record_are_corruption(junk: bytes) -> None:
    body = zlib.crc32(junk).to_bytes(4, "big") + junk
    try:
        msgspec.msgpack.Decoder(
            tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]
        ).decode(junk)
    except msgspec.DecodeError:
        with pytest.raises(CorruptionError):
            _log_format.decode("t", 0, "S", _msg(body))


def test_the_earlier_format_with_its_crc_in_a_header_still_reads() -> None:
    body = msgspec.msgpack.encode((b"k", b"v", [], 5))
    record = _log_format.decode("t", 0, "S", _msg(body, {"Ub-Crc": str(zlib.crc32(body))}))
    assert (record.key, record.value, record.timestamp) == (b"k", b"v", 5)
    with pytest.raises(CorruptionError):
        _log_format.decode("t", 0, "S", _msg(body, {"Ub-Crc": "1"}))


def test_a_record_too_large_for_the_server_is_refused() -> None:
    item = AppendItem(0, None, b"x" * 1000, (), 0)
    with pytest.raises(RecordTooLarge) as info:
        _log_format.encode("t", item, None, 1000)
    assert info.value.details["limit"] == 800
