"""The pgoutput decoder against a test-side encoder: round trips and damaged bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.cdc._pgencode import encode
from unbundled.cdc._change import UNAVAILABLE
from unbundled.cdc._pgoutput import (
    Begin,
    Binary,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    Value,
    decode,
)
from unbundled.errors import CorruptionError, NotSupported

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
name = st.text(st.characters(exclude_characters="\x00"), max_size=20)
xid_or_none = st.none() | u32
value: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.just(UNAVAILABLE),
    st.text(max_size=30),
    st.binary(max_size=30).map(Binary),
)
tuples = st.lists(value, max_size=8).map(tuple)
old_kind = st.sampled_from(["K", "O"])


def _with_xid(draw: st.DrawFn, cls: type, *args: object) -> Message:
    return cls(*args, xid=draw(xid_or_none))  # type: ignore[no-any-return]


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.integers(0, 13))
    if kind == 0:
        return Begin(draw(u64), draw(i64), draw(u32))
    if kind == 1:
        return Commit(draw(st.integers(0, 255)), draw(u64), draw(u64), draw(i64))
    if kind == 2:
        return Origin(draw(u64), draw(name))
    if kind == 3:
        columns = draw(
            st.lists(
                st.builds(
                    RelationColumn, name, u32, st.integers(-(2**31), 2**31 - 1), st.booleans()
                ),
                max_size=6,
            )
        )
        identity = draw(st.sampled_from(["d", "n", "f", "i"]))
        return _with_xid(
            draw, Relation, draw(u32), draw(name), draw(name), identity, tuple(columns)
        )
    if kind == 4:
        return _with_xid(draw, Type, draw(u32), draw(name), draw(name))
    if kind == 5:
        return _with_xid(draw, Insert, draw(u32), draw(tuples))
    if kind == 6:
        if draw(st.booleans()):
            return _with_xid(draw, Update, draw(u32), draw(tuples))
        return _with_xid(draw, Update, draw(u32), draw(tuples), draw(tuples), draw(old_kind))
    if kind == 7:
        return _with_xid(draw, Delete, draw(u32), draw(tuples), draw(old_kind))
    if kind == 8:
        ids = tuple(draw(st.lists(u32, max_size=5)))
        return _with_xid(draw, Truncate, ids, draw(st.booleans()), draw(st.booleans()))
    if kind == 9:
        content = draw(st.binary(max_size=40))
        return _with_xid(draw, LogicalMessage, draw(st.booleans()), draw(u64), draw(name), content)
    if kind == 10:
        return StreamStart(draw(u32), draw(st.booleans()))
    if kind == 11:
        return StreamStop()
    if kind == 12:
        return StreamCommit(draw(u32), draw(st.integers(0, 255)), draw(u64), draw(u64), draw(i64))
    if draw(st.booleans()):
        return StreamAbort(draw(u32), draw(u32), draw(u64), draw(i64))
    return StreamAbort(draw(u32), draw(u32))


def _decode(data: bytes, message: Message) -> Message:
    in_stream = getattr(message, "xid", None) is not None and not isinstance(
        message, Begin | StreamStart | StreamCommit | StreamAbort
    )
    abort_info = isinstance(message, StreamAbort) and message.abort_lsn is not None
    return decode(data, in_stream=in_stream, abort_info=abort_info)


@given(messages())
def test_every_message_round_trips(message: Message) -> None:
    assert _decode(encode(message), message) == message


@given(messages())
def test_every_truncation_is_corruption_naming_the_type(message: Message) -> None:
    data = encode(message)
    for size in range(len(data)):
        with pytest.raises(CorruptionError) as caught:
            _decode(data[:size], message)
        assert caught.value.offset <= max(size, 1)
        assert "pgoutput" in str(caught.value)


@given(messages(), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_corruption(message: Message, extra: bytes) -> None:
    with pytest.raises(CorruptionError, match="unexpected bytes"):
        _decode(encode(message) + extra, message)


@given(messages(), st.data())
def test_damaged_bytes_never_escape_as_other_errors(message: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    for in_stream in (False, True):
        try:
            decoded = decode(bytes(raw), in_stream=in_stream)
        except (CorruptionError, NotSupported):
            continue
        # What still decodes is a well-formed message that encodes to the same bytes.
        if not isinstance(decoded, StreamAbort):
            assert encode(decoded) == bytes(raw)


@given(st.binary(max_size=64))
def test_random_bytes_are_corruption_or_a_message(raw: bytes) -> None:
    try:
        decoded = Decoder(2).decode(raw)
    except (CorruptionError, NotSupported):
        return
    assert encode(decoded) == raw  # whatever decodes was a well-formed message


def test_corruption_names_the_message_type_and_offset() -> None:
    data = encode(Insert(7, ("a", None, "b")))
    with pytest.raises(CorruptionError) as caught:
        decode(data[:-1])
    assert caught.value.message_type == "Insert"
    assert caught.value.offset == len(data) - 1  # where the 1-byte value was to start
    bad_kind = data.replace(b"n", b"x")
    with pytest.raises(CorruptionError, match="unknown column kind 0x78") as caught:
        decode(bad_kind)
    assert caught.value.offset == data.index(b"n")
    with pytest.raises(CorruptionError, match="unknown message type 0x5a"):
        decode(b"Z")
    with pytest.raises(CorruptionError, match="not UTF-8"):
        decode(encode(Origin(1, "x")).replace(b"x", b"\xff"))


def test_two_phase_messages_are_not_supported() -> None:
    with pytest.raises(NotSupported, match="two-phase"):
        decode(b"P" + bytes(40))


def test_the_decoder_tracks_streams_and_rejects_impossible_orders() -> None:
    decoder = Decoder(2)
    assert decoder.decode(encode(StreamStart(5, True))) == StreamStart(5, True)
    assert decoder.in_stream
    # Inside a stream the row messages carry the (sub)transaction's xid.
    assert decoder.decode(encode(Insert(3, ("1",), xid=6))) == Insert(3, ("1",), xid=6)
    with pytest.raises(CorruptionError, match="inside a stream"):
        decoder.decode(encode(StreamStart(5, False)))
    assert decoder.decode(encode(StreamStop())) == StreamStop()
    assert not decoder.in_stream
    assert decoder.decode(encode(Insert(3, ("1",)))) == Insert(3, ("1",))
    with pytest.raises(CorruptionError, match="outside a stream"):
        decoder.decode(encode(StreamStop()))
    with pytest.raises(CorruptionError, match="protocol version 1"):
        Decoder(1).decode(encode(StreamStart(5, True)))
    inside = Decoder(2)
    inside.decode(encode(StreamStart(5, True)))
    with pytest.raises(CorruptionError, match="inside a stream block"):
        inside.decode(encode(Begin(1, 2, 3)))
