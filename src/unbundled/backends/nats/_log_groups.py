"""Idempotent producers and consumer groups on NATS: one KV document each,
changed by compare-and-set (``_log_meta.Documents.update``).

A group's document holds the whole ``log._groups.GroupState`` *and* the
group's committed offsets, so a commit is decided against the membership it
is stored with: a fenced member's commit (its generation is stale) fails,
and one whose check passed cannot land after a rebalance, because the
rebalance changed the document and the conditional publish then fails and
the commit is decided again. Leases use this backend's clock, like the
other backends' (the members' clocks must roughly agree).

A committed offset names the topic's incarnation: offsets of a topic that
was deleted (and perhaps created again) are ignored rather than rewritten
in every group when the topic goes.

A producer's document holds its epoch, last sequence and the positions of
its recent sequences (``limits.producer_window_requests_max``), so a retry
is answered from it, as on the other backends, for as long as the sequence
is in that window, whatever the stream's duplicate window. The document is
written after the records (step 4 of ``_log``): if the writer dies between
the two, the records' message ids (``<producer>:<sequence>:<index>``) make
a retry of the same sequence land once within the stream's duplicate
window, and twice after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ... import limits
from ...errors import NotFound, TopicNotFound
from ...log import _core, _groups
from ...log._protocol import (
    GroupInfo,
    MemberView,
    OffsetCommit,
    Position,
    ProducerStamp,
    TopicPartition,
)
from ._kv import decode_key
from ._log import NatsLogRecords
from ._log_meta import (
    Catalog,
    ProducerDoc,
    group_subject,
    producer_subject,
)


class GroupDoc(msgspec.Struct):
    generation: int = 0
    version: int = 0
    members: list[_groups.Member] = []
    # topic, partition, owner, generation, previous owner, previous generation
    assignments: list[tuple[str, int, str, int, str | None, int | None]] = []
    # topic, its incarnation, partition, next offset to consume
    committed: list[tuple[str, str, int, int]] = []


_GROUP = msgspec.json.Decoder(GroupDoc)
_PRODUCER = msgspec.json.Decoder(ProducerDoc)


def _state(name: str, doc: GroupDoc) -> _groups.GroupState:
    state = _groups.GroupState(name, doc.generation, doc.version)
    state.members = {m.member_id: m for m in doc.members}
    state.assignments = {
        TopicPartition(t, p): _groups.Assignment(o, g, po, pg)
        for t, p, o, g, po, pg in doc.assignments
    }
    return state


def _doc(state: _groups.GroupState, committed: list[tuple[str, str, int, int]]) -> bytes:
    return msgspec.json.encode(
        GroupDoc(
            state.generation,
            state.version,
            list(state.members.values()),
            [
                (tp.topic, tp.partition, a.owner, a.generation, a.prev_owner, a.prev_generation)
                for tp, a in state.assignments.items()
            ],
            committed,
        )
    )


class NatsLogGroups(NatsLogRecords):
    """The log's methods of :class:`~unbundled.backends.nats.NatsBackend`:
    the records' (inherited) with producers and consumer groups."""

    # --- producers ------------------------------------------------------------

    def init_producer(self, producer_id: str) -> tuple[int, int]:
        def decide(body: bytes | None) -> tuple[bytes, tuple[int, int]]:
            doc = _PRODUCER.decode(body) if body else ProducerDoc()
            doc.epoch += 1
            return msgspec.json.encode(doc), (doc.epoch, doc.last_sequence)

        subject = producer_subject(self.bucket, producer_id)
        result: tuple[int, int] = self._run(
            lambda: self._docs.update(subject, decide), f"registering producer {producer_id!r}"
        )
        return result

    async def _producer_check(self, stamp: ProducerStamp) -> list[Position] | None:
        body, _ = await self._docs.load(producer_subject(self.bucket, stamp.producer_id))
        doc = _PRODUCER.decode(body) if body else None
        window = {
            seq: [Position(t, p, o) for t, p, o in positions]
            for seq, positions in (doc.window if doc else [])
        }
        return _core.check_sequence(
            stamp, doc.epoch if doc else None, doc.last_sequence if doc else -1, window
        )

    async def _producer_record(self, stamp: ProducerStamp, positions: list[Position]) -> None:
        def decide(body: bytes | None) -> tuple[bytes, None]:
            doc = _PRODUCER.decode(body) if body else ProducerDoc()
            # Not re-checked against the epoch: the records are in, so the
            # sequence is used even if a new incarnation registered meanwhile
            # (their message ids would answer that sequence anyway, within
            # the duplicate window; docs/explanation/log.md, N4).
            doc.last_sequence = max(doc.last_sequence, stamp.sequence)
            doc.window.append(
                (stamp.sequence, [(p.topic, p.partition, p.offset) for p in positions])
            )
            del doc.window[: -limits.producer_window_requests_max]
            return msgspec.json.encode(doc), None

        await self._docs.update(producer_subject(self.bucket, stamp.producer_id), decide)

    # --- groups ---------------------------------------------------------------

    async def _change_group(
        self,
        group: str,
        change: Callable[[_groups.GroupState, dict[str, int]], Any],
        create: bool = True,
    ) -> Any:
        """Apply ``change(state, partition counts)`` to the group's document."""
        catalog: Catalog = await self._load_catalog()
        counts = {n: e.config.partitions for n, e in catalog.topics.items()}

        def decide(body: bytes | None) -> tuple[bytes | None, Any]:
            doc = _GROUP.decode(body) if body else GroupDoc()
            state = _state(group, doc)
            answer = change(state, counts)
            if body is None and not create:
                return None, answer
            return _doc(state, doc.committed), answer

        answer = await self._docs.update(group_subject(self.bucket, group), decide)
        await self._announce()
        return answer

    @staticmethod
    def _subscribed(
        state: _groups.GroupState, counts: dict[str, int], extra: tuple[str, ...] = ()
    ) -> dict[str, int]:
        topics = {t for m in state.members.values() for t in m.topics} | set(extra)
        return {t: counts[t] for t in topics if t in counts}

    def group_join(
        self,
        group: str,
        member_id: str,
        topics: tuple[str, ...],
        lease_ms: int,
        instance_id: str | None = None,
        replace: bool = False,
    ) -> MemberView:
        def change(state: _groups.GroupState, counts: dict[str, int]) -> MemberView:
            for t in topics:
                if t not in counts:
                    raise TopicNotFound(f"topic {t!r} does not exist", topic=t)
            return _groups.join(
                state,
                member_id,
                topics,
                lease_ms,
                self.clock(),
                self._subscribed(state, counts, topics),
                instance_id,
                replace,
            )

        view: MemberView = self._run(
            lambda: self._change_group(group, change), f"joining group {group!r}"
        )
        return view

    def group_heartbeat(self, group: str, member_id: str, acked_generation: int) -> MemberView:
        def change(state: _groups.GroupState, counts: dict[str, int]) -> MemberView:
            return _groups.heartbeat(
                state, member_id, acked_generation, self.clock(), self._subscribed(state, counts)
            )

        view: MemberView = self._run(
            lambda: self._change_group(group, change, create=False), f"heartbeat in {group!r}"
        )
        return view

    def group_leave(self, group: str, member_id: str) -> None:
        def change(state: _groups.GroupState, counts: dict[str, int]) -> None:
            _groups.leave(state, member_id, self._subscribed(state, counts))

        self._run(lambda: self._change_group(group, change, create=False), f"leaving {group!r}")

    async def _load_group(self, group: str) -> tuple[GroupDoc | None, Catalog]:
        body, _ = await self._docs.load(group_subject(self.bucket, group))
        catalog: Catalog = await self._load_catalog()
        return (_GROUP.decode(body) if body else None), catalog

    def group_version(self, group: str) -> int:
        doc, _ = self._run(lambda: self._load_group(group), f"reading group {group!r}")
        return doc.version if doc is not None else 0

    @staticmethod
    def _live_offsets(doc: GroupDoc | None, catalog: Catalog) -> dict[TopicPartition, int]:
        """Committed offsets of topics that still exist in that incarnation."""
        out = {}
        for topic, incarnation, partition, offset in doc.committed if doc else []:
            entry = catalog.topics.get(topic)
            if entry is not None and entry.incarnation == incarnation:
                out[TopicPartition(topic, partition)] = offset
        return dict(sorted(out.items()))

    def committed(self, group: str) -> dict[TopicPartition, int]:
        doc, catalog = self._run(lambda: self._load_group(group), f"reading group {group!r}")
        return self._live_offsets(doc, catalog)

    def list_groups(self) -> list[str]:
        async def names() -> list[str]:
            prefix = group_subject(self.bucket, "")
            info = await self._js.stream_info(self._stream, subjects_filter=f"{prefix}>")
            found = []
            for subject in info.state.subjects or {}:
                name = decode_key(subject[len(prefix) :])
                doc, catalog = await self._load_group(name)
                if doc is not None and (doc.members or self._live_offsets(doc, catalog)):
                    found.append(name)
            return sorted(found)

        result: list[str] = self._run(names, "listing groups")
        return result

    def describe_group(self, group: str) -> GroupInfo:
        doc, catalog = self._run(lambda: self._load_group(group), f"reading group {group!r}")
        offsets = self._live_offsets(doc, catalog)
        if doc is None and not offsets:
            raise NotFound(f"group {group!r} does not exist", group=group)
        state = _state(group, doc or GroupDoc())
        return _groups.describe(state, offsets)

    async def _commit_offsets(self, commits: tuple[OffsetCommit, ...]) -> None:
        """Each group's commit in one conditional change of its document:
        fenced first, then its partitions checked (the memory model's order)."""
        catalog: Catalog = await self._load_catalog()

        def check_partitions(commit: OffsetCommit) -> None:
            for tp in commit.offsets:
                entry = catalog.topics.get(tp.topic)
                if entry is None:
                    raise TopicNotFound(f"topic {tp.topic!r} does not exist", topic=tp.topic)
                _core.check_partition(tp.topic, tp.partition, entry.config.partitions)

        for commit in commits:

            def decide(body: bytes | None, commit: OffsetCommit = commit) -> tuple[bytes, None]:
                doc = _GROUP.decode(body) if body else GroupDoc()
                _groups.check_commit(_state(commit.group, doc), commit)
                check_partitions(commit)
                kept = {(t, i, p): o for t, i, p, o in doc.committed}
                for tp, offset in commit.offsets.items():
                    incarnation = catalog.topics[tp.topic].incarnation
                    # Drop the offsets of the topic's earlier incarnations.
                    kept = {
                        k: o for k, o in kept.items() if k[0] != tp.topic or k[1] == incarnation
                    }
                    kept[(tp.topic, incarnation, tp.partition)] = offset
                doc.committed = [(t, i, p, o) for (t, i, p), o in sorted(kept.items())]
                return msgspec.json.encode(doc), None

            await self._docs.update(group_subject(self.bucket, commit.group), decide)
