"""Consumer groups on PostgreSQL: membership with leases and generations
(fencing tokens) and committed offsets, shared by every process.

Each membership change is one transaction on a pooled connection: the
group's row is locked ``FOR UPDATE``, its state loaded, changed by
``log._groups`` (the state machine every backend runs) and saved
(``_log_rows``). Offsets are committed by the log's writer, fenced by the
generations in the same transaction as the records (``_log_stage``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import NotFound, TopicNotFound
from ...log import _groups
from ...log._protocol import GroupInfo, MemberView, TopicPartition
from ._log_rows import GroupStatements, load_groups, lock_group, save_group
from ._schema import Conn


class _Sql:
    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.groups = GroupStatements(schema)
        self.counts = f"SELECT name, partitions FROM {s}.log_topics WHERE name = ANY(%s::text[])"
        self.version = f"SELECT version FROM {s}.log_groups WHERE name = %s"
        self.committed = (
            f"SELECT topic, partition, next_offset FROM {s}.log_offsets WHERE grp = %s "
            "ORDER BY topic, partition"
        )
        self.list = (
            f"SELECT grp FROM {s}.log_group_members UNION "
            f"SELECT grp FROM {s}.log_offsets ORDER BY 1"
        )


class PostgresLogGroups:
    """The consumer-group methods of :class:`unbundled.backends.PostgresBackend`."""

    schema: str
    clock: Callable[[], int]
    _run: Callable[[Callable[[Conn], Any]], Any]
    _log_call: Callable[..., Any]
    _group_sql_cached: _Sql | None = None

    @property
    def _group_sql(self) -> _Sql:
        sql = self._group_sql_cached
        if sql is None:
            sql = self._group_sql_cached = _Sql(self.schema)
        return sql

    def _counts(
        self, conn: Conn, state: _groups.GroupState, extra: tuple[str, ...] = ()
    ) -> dict[str, int]:
        """The partition counts of the topics the group's members subscribe to."""
        topics = sorted({t for m in state.members.values() for t in m.topics} | set(extra))
        rows = conn.execute(self._group_sql.counts, (topics,)).fetchall()
        return {name: int(count) for name, count in rows}

    def _change(
        self,
        group: str,
        create: bool,
        change: Callable[[Conn, _groups.GroupState], Any],
    ) -> Any:
        sql = self._group_sql.groups

        def run(conn: Conn) -> tuple[Any, bool]:
            state = lock_group(conn, sql, group, create)
            before = (state.generation, state.version)
            result = change(conn, state)
            save_group(conn, sql, state)
            return result, (state.generation, state.version) != before

        # Waiters are told of a rebalance or a release (the group's version
        # moved), not of every heartbeat that only renews a lease.
        result, _ = self._log_call(run, notify=lambda done: done[1])
        return result

    def group_join(
        self,
        group: str,
        member_id: str,
        topics: tuple[str, ...],
        lease_ms: int,
        instance_id: str | None = None,
        replace: bool = False,
    ) -> MemberView:
        def join(conn: Conn, state: _groups.GroupState) -> MemberView:
            counts = self._counts(conn, state, topics)
            for t in topics:
                if t not in counts:
                    raise TopicNotFound(f"topic {t!r} does not exist", topic=t)
            return _groups.join(
                state, member_id, topics, lease_ms, self.clock(), counts, instance_id, replace
            )

        result: MemberView = self._change(group, True, join)
        return result

    def group_heartbeat(self, group: str, member_id: str, acked_generation: int) -> MemberView:
        def beat(conn: Conn, state: _groups.GroupState) -> MemberView:
            return _groups.heartbeat(
                state, member_id, acked_generation, self.clock(), self._counts(conn, state)
            )

        result: MemberView = self._change(group, False, beat)
        return result

    def group_version(self, group: str) -> int:
        row = self._run(lambda c: c.execute(self._group_sql.version, (group,)).fetchone())
        return int(row[0]) if row is not None else 0

    def group_leave(self, group: str, member_id: str) -> None:
        def leave(conn: Conn, state: _groups.GroupState) -> None:
            _groups.leave(state, member_id, self._counts(conn, state))

        self._change(group, False, leave)

    def committed(self, group: str) -> dict[TopicPartition, int]:
        rows = self._run(lambda c: c.execute(self._group_sql.committed, (group,)).fetchall())
        return {TopicPartition(t, p): int(o) for t, p, o in rows}

    def list_groups(self) -> list[str]:
        rows = self._run(lambda c: c.execute(self._group_sql.list).fetchall())
        return [r[0] for r in rows]

    def describe_group(self, group: str) -> GroupInfo:
        sql = self._group_sql

        def describe(conn: Conn) -> tuple[_groups.GroupState, list[tuple[Any, ...]]]:
            with conn.transaction():  # one snapshot for both
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                groups = sql.groups
                with conn.pipeline():
                    rows = conn.execute(groups.lock.replace(" FOR UPDATE", ""), ([group],))
                    members = conn.execute(groups.members, ([group],))
                    assignments = conn.execute(groups.assignments, ([group],))
                    committed = conn.execute(sql.committed, (group,))
                state = load_groups(rows, members, assignments, [group])[group]
                return state, committed.fetchall()

        state, rows = self._run(describe)
        committed = {TopicPartition(t, p): int(o) for t, p, o in rows}
        if not state.members and not committed and state.generation == 0:
            raise NotFound(f"group {group!r} does not exist", group=group)
        return _groups.describe(state, committed)
