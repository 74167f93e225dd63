"""The relation cache and the change builder, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unbundled.cdc._change import UNAVAILABLE, SourcePosition
from unbundled.cdc._pgchanges import Relations, Transaction, to_changes
from unbundled.cdc._pgoutput import (
    PG_EPOCH_UNIX_US,
    Binary,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    RelationColumn,
    Truncate,
    Update,
)
from unbundled.errors import CorruptionError, NotSupported

INT4, TEXT = 23, 25


def _relation(rid: int = 1, identity: str = "d", *extra: RelationColumn) -> Relation:
    columns = (
        RelationColumn("id", INT4, -1, identity in "df"),
        RelationColumn("v", TEXT, -1, identity == "f"),
    )
    return Relation(rid, "public", f"t{rid}", identity, columns + extra)  # type: ignore[arg-type]


def _tx() -> Transaction:
    return Transaction("db", commit_lsn=1000, commit_ts=5_000_000, xid=7)


def test_identical_relation_messages_keep_the_version_and_changes_bump_it() -> None:
    relations = Relations()
    assert relations.apply(_relation()).version == 1
    assert relations.apply(_relation()).version == 1  # resent at each session start
    added = relations.apply(_relation(1, "d", RelationColumn("w", INT4, -1, False)))
    assert added.version == 2
    retyped = relations.apply(_relation(1, "d", RelationColumn("w", 20, -1, False)))
    assert retyped.version == 3
    assert relations.apply(_relation(1, "f", RelationColumn("w", 20, -1, False))).version == 4
    assert relations.apply(_relation(2)).version == 1  # another table counts apart


def test_keys_come_from_the_identity_flags_or_the_catalog_under_full() -> None:
    relations = Relations()
    assert relations.apply(_relation(1, "d")).primary_key == ("id",)
    assert relations.apply(_relation(2, "f")).primary_key is None
    assert relations.apply(_relation(3, "n")).primary_key is None
    relations.set_primary_key("public", "t2", ["id"])
    assert relations[2].primary_key == ("id",)
    assert relations.apply(_relation(2, "f")).primary_key == ("id",)


def test_changes_carry_place_time_version_and_key() -> None:
    relations = Relations()
    relations.apply(_relation())
    tx = _tx()
    (insert,) = to_changes(Insert(1, ("5", "a")), relations, tx, lsn=900)
    assert insert.op == "c" and insert.after == {"id": 5, "v": "a"} and insert.key == {"id": 5}
    assert insert.position == SourcePosition(1000, 0) and insert.lsn == 900
    assert insert.ts_ms == (5_000_000 + PG_EPOCH_UNIX_US) // 1000
    assert insert.tx_id == 7 and insert.relation_version == 1 and insert.total_order == 1
    (delete,) = to_changes(Delete(1, ("5", None), "K"), relations, tx)
    assert delete.before == {"id": 5} and delete.after is None and delete.key == {"id": 5}
    assert delete.position == SourcePosition(1000, 1)


def test_unchanged_toast_is_filled_from_a_full_old_row_only() -> None:
    relations = Relations()
    relations.apply(_relation(1, "f"))
    relations.set_primary_key("public", "t1", ["id"])
    (update,) = to_changes(Update(1, ("5", UNAVAILABLE), ("5", "big"), "O"), relations, _tx())
    assert update.before == {"id": 5, "v": "big"} and update.after == {"id": 5, "v": "big"}
    relations.apply(_relation(2, "d"))
    (update,) = to_changes(Update(2, ("5", UNAVAILABLE)), relations, _tx())
    assert update.before is None and update.after == {"id": 5, "v": UNAVAILABLE}
    (moved,) = to_changes(Update(2, ("6", UNAVAILABLE), ("5", None), "K"), relations, _tx())
    assert moved.before == {"id": 5} and moved.after == {"id": 6, "v": UNAVAILABLE}


def test_damaged_or_unsupported_rows_raise() -> None:
    relations = Relations()
    with pytest.raises(CorruptionError, match="before its Relation"):
        to_changes(Insert(1, ("1", "a")), relations, _tx())
    relations.apply(_relation())
    with pytest.raises(CorruptionError, match="tuple of 1 columns"):
        to_changes(Insert(1, ("1",)), relations, _tx())
    with pytest.raises(NotSupported, match="binary"):
        to_changes(Insert(1, ("1", Binary(b"a"))), relations, _tx())
    with pytest.raises(CorruptionError, match="does not parse"):
        to_changes(Insert(1, ("one", "a")), relations, _tx())


rows = st.lists(
    st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from(["ins", "del", "trunc", "msg"])),
    max_size=30,
)


@given(rows)
def test_positions_are_distinct_and_orders_count_per_transaction_and_table(
    script: list[tuple[int, str]],
) -> None:
    relations = Relations()
    for rid in (1, 2, 3):
        relations.apply(_relation(rid))
    tx = _tx()
    changes = []
    for rid, kind in script:
        options: dict[str, Insert | Delete | Truncate | LogicalMessage] = {
            "ins": Insert(rid, (str(rid), "x")),
            "del": Delete(rid, (str(rid), None), "K"),
            "trunc": Truncate((rid, 3), False, False),
            "msg": LogicalMessage(True, 5, "p", b"c"),
        }
        message = options[kind]
        changes += to_changes(message, relations, tx, lsn=999)  # one LSN for all
    assert [c.position for c in changes] == [SourcePosition(1000, i) for i in range(len(changes))]
    assert [c.total_order for c in changes] == list(range(1, len(changes) + 1))
    seen: dict[tuple[str, str], int] = {}
    for change in changes:
        seen[(change.schema, change.table)] = seen.get((change.schema, change.table), 0) + 1
        assert change.data_collection_order == seen[(change.schema, change.table)]
