"""Consumer-group state in SQLite: load a group, let ``log._groups`` decide,
write it back, all inside one writer transaction."""

from __future__ import annotations

import sqlite3

import msgspec

from ...log import _groups
from ...log._protocol import TopicPartition


def load(conn: sqlite3.Connection, name: str) -> _groups.GroupState:
    state = _groups.GroupState(name)
    row = conn.execute("SELECT generation, version FROM groups WHERE name = ?", (name,)).fetchone()
    if row is None:
        return state
    state.generation, state.version = row
    for member_id, topics, lease_ms, lease_until, acked, instance_id in conn.execute(
        "SELECT member_id, topics, lease_ms, lease_until_ms, acked_generation, instance_id "
        "FROM group_members WHERE grp = ? ORDER BY member_id",
        (name,),
    ):
        state.members[member_id] = _groups.Member(
            member_id, tuple(msgspec.json.decode(topics)), lease_ms, lease_until, acked, instance_id
        )
    for topic, partition, owner, gen, prev_owner, prev_gen in conn.execute(
        "SELECT topic, partition, owner, generation, prev_owner, prev_generation "
        "FROM group_assignments WHERE grp = ? ORDER BY topic, partition",
        (name,),
    ):
        state.assignments[TopicPartition(topic, partition)] = _groups.Assignment(
            owner, gen, prev_owner, prev_gen
        )
    return state


def save(conn: sqlite3.Connection, state: _groups.GroupState) -> None:
    """Rewrite the group's rows. Groups are small; rewriting keeps this obvious."""
    name = state.name
    conn.execute(
        "INSERT INTO groups VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "generation = excluded.generation, version = excluded.version",
        (name, state.generation, state.version),
    )
    conn.execute("DELETE FROM group_members WHERE grp = ?", (name,))
    conn.executemany(
        "INSERT INTO group_members(grp, member_id, topics, lease_ms, lease_until_ms, "
        "acked_generation, instance_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                name,
                m.member_id,
                msgspec.json.encode(list(m.topics)).decode(),
                m.lease_ms,
                m.lease_until_ms,
                m.acked_generation,
                m.instance_id,
            )
            for m in state.members.values()
        ],
    )
    conn.execute("DELETE FROM group_assignments WHERE grp = ?", (name,))
    conn.executemany(
        "INSERT INTO group_assignments VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (name, tp.topic, tp.partition, a.owner, a.generation, a.prev_owner, a.prev_generation)
            for tp, a in state.assignments.items()
        ],
    )
