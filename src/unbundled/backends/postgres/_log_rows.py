"""The log's rows on PostgreSQL: topics, consumer groups, and the statements
that read them (shared by the writer, units of work and the calls).

Consumer-group state is loaded, handed to ``log._groups`` (the pure state
machine every backend runs) and saved inside one transaction, with the
group's row locked: ``FOR UPDATE`` by a membership change, ``FOR SHARE`` by
an offset commit (which only checks generations), so commits of many
members go on together and a rebalance waits for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from ...errors import CorruptionError
from ...log import _groups
from ...log._protocol import TopicConfig, TopicPartition
from ._schema import Conn

_decode_config = msgspec.json.Decoder(TopicConfig).decode
encode_headers = msgspec.msgpack.encode
decode_headers = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode

TOPIC_COLUMNS = "id, name, partitions, config"
MEMBER_COLUMNS = "grp, member_id, topics, lease_ms, lease_until_ms, acked_generation, instance_id"
ASSIGNMENT_COLUMNS = "grp, topic, partition, owner, generation, prev_owner, prev_generation"


class Topic(msgspec.Struct, frozen=True):
    """A row of ``log_topics``, its config decoded."""

    id: int
    name: str
    config: TopicConfig


def topic(row: Sequence[Any], where: str) -> Topic:
    """A topic row, checked: its config must agree with its partition count."""
    tid, name, partitions, raw = row
    try:
        config = _decode_config(raw)
    except msgspec.DecodeError as exc:
        raise CorruptionError(
            f"{where}: the config of topic {name!r} is unreadable", url=where, topic=name
        ) from exc
    if config.partitions != partitions:
        raise CorruptionError(
            f"{where}: topic {name!r} disagrees about its partition count", url=where, topic=name
        )
    return Topic(int(tid), name, config)


class GroupStatements:
    """The consumer groups' SQL for one schema."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.create = f"INSERT INTO {s}.log_groups VALUES (%s, 0, 0) ON CONFLICT DO NOTHING"
        self.lock = (
            f"SELECT name, generation, version FROM {s}.log_groups "
            "WHERE name = ANY(%s::text[]) ORDER BY name FOR UPDATE"
        )
        self.share = (
            f"SELECT name, generation, version FROM {s}.log_groups "
            "WHERE name = ANY(%s::text[]) ORDER BY name FOR SHARE"
        )
        self.members = (
            f"SELECT {MEMBER_COLUMNS} FROM {s}.log_group_members "
            "WHERE grp = ANY(%s::text[]) ORDER BY grp, member_id"
        )
        self.assignments = (
            f"SELECT {ASSIGNMENT_COLUMNS} FROM {s}.log_group_assignments "
            "WHERE grp = ANY(%s::text[]) ORDER BY grp, topic, partition"
        )
        self.save_group = (
            f"INSERT INTO {s}.log_groups VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE "
            "SET generation = excluded.generation, version = excluded.version"
        )
        self.delete_members = f"DELETE FROM {s}.log_group_members WHERE grp = %s"
        self.insert_members = (
            f"INSERT INTO {s}.log_group_members ({MEMBER_COLUMNS}) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::int8[], "
            "%s::int8[], %s::text[])"
        )
        self.delete_assignments = f"DELETE FROM {s}.log_group_assignments WHERE grp = %s"
        self.insert_assignments = (
            f"INSERT INTO {s}.log_group_assignments ({ASSIGNMENT_COLUMNS}) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::text[], %s::int8[], "
            "%s::text[], %s::int8[])"
        )


def load_groups(
    groups: Iterable[Sequence[Any]],
    members: Iterable[Sequence[Any]],
    assignments: Iterable[Sequence[Any]],
    names: Sequence[str],
) -> dict[str, _groups.GroupState]:
    """Group states from the rows of :class:`GroupStatements`' three reads;
    a group without a row is empty."""
    states = {name: _groups.GroupState(name) for name in names}
    for name, generation, version in groups:
        state = states[name]
        state.generation, state.version = int(generation), int(version)
    for grp, member_id, topics, lease_ms, lease_until, acked, instance_id in members:
        states[grp].members[member_id] = _groups.Member(
            member_id,
            tuple(msgspec.json.decode(topics)),
            int(lease_ms),
            int(lease_until),
            int(acked),
            instance_id,
        )
    for grp, topic_name, partition, owner, gen, prev_owner, prev_gen in assignments:
        states[grp].assignments[TopicPartition(topic_name, partition)] = _groups.Assignment(
            owner, int(gen), prev_owner, None if prev_gen is None else int(prev_gen)
        )
    return states


def lock_group(conn: Conn, sql: GroupStatements, name: str, create: bool) -> _groups.GroupState:
    """The group's state, its row locked ``FOR UPDATE`` (made first if ``create``)."""
    with conn.pipeline():
        if create:
            conn.execute(sql.create, (name,))
        locked = conn.execute(sql.lock, ([name],))
        members = conn.execute(sql.members, ([name],))
        assignments = conn.execute(sql.assignments, ([name],))
    return load_groups(locked.fetchall(), members.fetchall(), assignments.fetchall(), [name])[name]


def save_group(conn: Conn, sql: GroupStatements, state: _groups.GroupState) -> None:
    """Rewrite the group's rows (groups are small; rewriting keeps this obvious)."""
    name = state.name
    members = list(state.members.values())
    assignments = list(state.assignments.items())
    with conn.pipeline():
        conn.execute(sql.save_group, (name, state.generation, state.version))
        conn.execute(sql.delete_members, (name,))
        if members:
            conn.execute(
                sql.insert_members,
                (
                    [name] * len(members),
                    [m.member_id for m in members],
                    [msgspec.json.encode(list(m.topics)).decode() for m in members],
                    [m.lease_ms for m in members],
                    [m.lease_until_ms for m in members],
                    [m.acked_generation for m in members],
                    [m.instance_id for m in members],
                ),
            )
        conn.execute(sql.delete_assignments, (name,))
        if assignments:
            conn.execute(
                sql.insert_assignments,
                (
                    [name] * len(assignments),
                    [tp.topic for tp, _ in assignments],
                    [tp.partition for tp, _ in assignments],
                    [a.owner for _, a in assignments],
                    [a.generation for _, a in assignments],
                    [a.prev_owner for _, a in assignments],
                    [a.prev_generation for _, a in assignments],
                ),
            )
