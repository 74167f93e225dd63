"""The outbox router: an outbox row's insert becomes one record of its aggregate's topic.

Guarantees (docs/explanation/cdc.md): inserts (and snapshot rows) of an outbox table are
routed to ``outbox.event.<aggregatetype>``, keyed by ``aggregateid``, the payload as is;
updates, deletes and truncates of outbox rows are dropped; a row that cannot be routed
is kept as an ordinary change event, never lost; other tables are untouched.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled.cdc import Change, SourcePosition
from unbundled.cdc._outbox import AS_CHANGE, DROP, Outbox
from unbundled.errors import UsageError


def row_change(op: str, after: dict[str, Any] | None, table: str = "outbox") -> Change:
    return Change(
        op=op,  # type: ignore[arg-type]
        connector="postgresql",
        db="shop",
        schema="public",
        table=table,
        position=SourcePosition(42, 3),
        ts_ms=1_700_000_000_000,
        key={"id": "e1"},
        after=after,
    )


ROW = {
    "id": "e1",
    "aggregatetype": "order",
    "aggregateid": "o-7",
    "type": "OrderPlaced",
    "payload": '{"total": "12.50"}',
}


@pytest.mark.parametrize("op", ["c", "r"])
def test_an_insert_is_routed_by_aggregate_type_and_keyed_by_aggregate_id(op: str) -> None:
    routed = Outbox(["public.outbox"]).route(row_change(op, ROW))
    assert not isinstance(routed, str)
    topic, message = routed
    assert topic == "outbox.event.order"
    assert message.key == b"o-7" and message.value == b'{"total": "12.50"}'
    assert dict(message.headers) == {
        "cdc.position": b"42:3",
        "id": b"e1",
        "type": b"OrderPlaced",
    }
    assert message.timestamp == 1_700_000_000_000


@pytest.mark.parametrize("op", ["u", "d", "t"])
def test_updates_deletes_and_truncates_of_the_outbox_are_dropped(op: str) -> None:
    assert Outbox(["outbox"]).route(row_change(op, ROW)) == DROP


@pytest.mark.parametrize("kind", [None, "", "has space", "slash/no", 7, "x" * 201], ids=repr)
def test_a_row_that_cannot_be_routed_stays_a_change_event(kind: Any) -> None:
    assert Outbox(["outbox"]).route(row_change("c", {**ROW, "aggregatetype": kind})) == AS_CHANGE


def test_other_tables_and_schemas_are_untouched() -> None:
    assert Outbox(["public.outbox"]).route(row_change("c", ROW, table="orders")) == AS_CHANGE
    assert Outbox(["audit.outbox"]).route(row_change("c", ROW)) == AS_CHANGE
    assert not Outbox([])


@given(
    st.one_of(
        st.none(),
        st.text(),
        st.binary(),
        st.dictionaries(st.text(), st.integers() | st.text()),
        st.integers(),
    ),
    st.one_of(st.text(min_size=1), st.integers()),
)
def test_any_payload_and_aggregate_id_survive_routing(payload: Any, aggregate: Any) -> None:
    routed = Outbox(["outbox"]).route(
        row_change("c", {**ROW, "payload": payload, "aggregateid": aggregate})
    )
    assert not isinstance(routed, str)
    _, message = routed
    if payload is None:
        assert message.value is None
    elif isinstance(payload, bytes):
        assert message.value == payload
    elif isinstance(payload, str):
        assert message.value == payload.encode()
    else:
        assert json.loads(message.value or b"") == payload
    expected = aggregate if isinstance(aggregate, str) else json.dumps(aggregate)
    assert message.key == expected.encode()


@pytest.mark.parametrize("name", ["", "a.b.c", "with space", 7])
def test_bad_outbox_table_names_are_refused(name: Any) -> None:
    with pytest.raises(UsageError, match="outbox table"):
        Outbox([name])
