"""The pure state machine of one causally consistent replica (no I/O).

Two clocks, each doing one job:

- **Per key, a dotted version vector set** (Riak's ``dvvset``, Preguiça et
  al. 2010, Almeida et al. 2014). Every write gets a *dot* ``(replica,
  counter)``, the counter counting that replica's writes *to this key*. A
  key's state is its *clock* (the dots of every write to it applied here)
  and its *siblings* (the writes no later write has superseded), each tagged
  with its own dot. A write carries the causal context the client read (a
  clock); it supersedes exactly the siblings whose dots that context covers.
  Because each sibling has its own dot, two writes are siblings only if they
  really were concurrent: no false siblings, unlike one version vector per
  value.
- **Per replica, a vector of applied updates** for causal delivery (Birman,
  Schiper and Stephenson's causal broadcast). Update ``seq`` of replica
  ``origin`` carries ``deps``, the vector its origin had applied when it
  wrote it; another replica applies it only once it has applied update
  ``seq - 1`` of ``origin`` and everything in ``deps``. Until then it waits
  in the pending buffer. So no replica ever shows an effect before its cause.

Sessions: a :class:`Session` is the client's own vector of the updates it has
observed (read or written). A replica serves a client only if its applied
vector covers the session; otherwise it raises :class:`SessionBehind` and
changes nothing. That gives read-your-writes, monotonic reads,
monotonic writes and writes-follow-reads for a client that moves between
replicas; the shells decide whether to wait or to let the client go elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from ... import limits
from ...errors import CorruptionError, LimitExceeded, SessionBehind, UsageError

__all__ = [
    "Context",
    "KeyState",
    "ReplicaCore",
    "Session",
    "Sibling",
    "Update",
    "Versions",
    "covers",
    "decode_update",
    "encode_update",
    "merge",
]

Vector = dict[str, int]


def covers(big: Mapping[str, int], small: Mapping[str, int]) -> bool:
    """True if vector ``big`` has seen everything ``small`` has (``small <= big``)."""
    return all(big.get(name, 0) >= count for name, count in small.items())


def merge(a: Mapping[str, int], b: Mapping[str, int]) -> Vector:
    """The pointwise maximum of two vectors."""
    out = dict(a)
    for name, count in b.items():
        if count > out.get(name, 0):
            out[name] = count
    return out


class Sibling(msgspec.Struct, frozen=True, array_like=True):
    """One write still visible for a key: its dot ``(replica, counter)``, the
    update's sequence number at that replica, and the value (``None``: a delete)."""

    replica: str
    counter: int
    seq: int
    value: bytes | None


class KeyState(msgspec.Struct, frozen=True, array_like=True):
    """A key's dotted version vector set: the clock of every write applied to
    it, and the siblings (in dot order). Treat as immutable."""

    clock: dict[str, int]
    siblings: tuple[Sibling, ...]


class Update(msgspec.Struct, frozen=True, array_like=True):
    """One write, as it travels between replicas.

    ``deps`` is its origin's applied vector when it wrote it (without the
    origin itself: that is ``seq - 1`` by construction). ``counter`` is the
    write's dot counter for ``key``; ``context`` the key clock the writer saw,
    which names exactly the siblings this write supersedes.
    """

    origin: str
    seq: int
    deps: dict[str, int]
    key: str
    counter: int
    context: dict[str, int]
    value: bytes | None


_update_encoder = msgspec.msgpack.Encoder()
_update_decoder = msgspec.msgpack.Decoder(Update)


def encode_update(update: Update) -> bytes:
    return _update_encoder.encode(update)


def decode_update(data: bytes) -> Update:
    """The update in ``data``; ``CorruptionError`` if it is not one."""
    try:
        return _update_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptionError(f"not a causal-store update: {exc}") from exc


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(token: str, what: str) -> bytes:
    if not isinstance(token, str):
        raise UsageError(f"a {what} token is a str, got {type(token).__name__}")
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError as exc:
        raise UsageError(f"not a {what} token: {token[:40]!r}") from exc


@dataclass(frozen=True)
class Context:
    """The opaque causal context of a read: pass it back with the write that
    resolves what you read. Cross a process boundary with :meth:`token`."""

    key: str
    clock: tuple[tuple[str, int], ...]

    def vector(self) -> Vector:
        """The context's clock as a dict: replica id -> the last write of this key seen from it."""
        return dict(self.clock)

    def token(self) -> str:
        """The context as a URL-safe string, to hand to another process (say, in
        a web form); :meth:`from_token` reads it back."""
        return _b64(msgspec.msgpack.encode([self.key, [list(item) for item in self.clock]]))

    @classmethod
    def from_token(cls, token: str) -> Context:
        """The context a :meth:`token` string holds; ``UsageError`` for a string
        that is not one."""
        try:
            key, clock = msgspec.msgpack.decode(
                _unb64(token, "context"), type=tuple[str, list[tuple[str, int]]]
            )
        except msgspec.DecodeError as exc:
            raise UsageError(f"not a context token: {token[:40]!r}") from exc
        return cls(key, tuple(sorted(clock)))


class Session:
    """A client's session: the updates it has observed, per origin replica.

    Carry one per client and pass it to every read and write, on whichever
    replica: a replica that has not applied all of it refuses (or its shell
    waits), so the client never reads older than what it saw or wrote.
    Mutable; not thread-safe (one client, one session).
    """

    __slots__ = ("vector",)

    def __init__(self, vector: Mapping[str, int] | None = None) -> None:
        self.vector: Vector = dict(vector or {})

    def observe(self, origin: str, seq: int) -> None:
        """Note that the client saw update ``seq`` of ``origin`` (a no-op for
        one older than what it already saw). Reads and writes do this themselves."""
        if seq > self.vector.get(origin, 0):
            self.vector[origin] = seq

    def token(self) -> str:
        """The session as a URL-safe string, to carry between requests (say, in
        a cookie); :meth:`from_token` reads it back."""
        return _b64(msgspec.msgpack.encode(sorted(self.vector.items())))

    @classmethod
    def from_token(cls, token: str) -> Session:
        """The session a :meth:`token` string holds; ``UsageError`` for a string
        that is not one."""
        try:
            items = msgspec.msgpack.decode(_unb64(token, "session"), type=list[tuple[str, int]])
        except msgspec.DecodeError as exc:
            raise UsageError(f"not a session token: {token[:40]!r}") from exc
        return cls(dict(items))

    def __repr__(self) -> str:
        return f"Session({self.vector!r})"


@dataclass(frozen=True)
class Versions:
    """What a read returns: the live sibling values (one unless concurrent
    writes conflict; none if absent or deleted), the context to resolve them
    with, and every sibling with its dot (deletes included)."""

    key: str
    values: tuple[bytes, ...]
    context: Context
    siblings: tuple[Sibling, ...]

    @property
    def conflict(self) -> bool:
        """True if concurrent writes left more than one sibling."""
        return len(self.siblings) > 1

    @property
    def value(self) -> bytes | None:
        """The one live value; ``None`` if absent or deleted. ``UsageError``
        when there are siblings to resolve: read ``values`` then."""
        if len(self.values) > 1:
            raise UsageError(
                f"key {self.key!r} has {len(self.values)} sibling values: resolve them",
                key=self.key,
            )
        return self.values[0] if self.values else None


def _check_replica_id(replica_id: str) -> str:
    if (
        not isinstance(replica_id, str)
        or not replica_id
        or len(replica_id.encode()) > limits.causal_replica_id_bytes_max
    ):
        raise UsageError(
            f"a replica id is a non-empty str of at most "
            f"{limits.causal_replica_id_bytes_max} bytes, got {replica_id!r}"
        )
    return replica_id


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise UsageError(f"a key is a non-empty str, got {key!r}", key=key)
    if len(key.encode()) > limits.causal_key_bytes_max:
        raise LimitExceeded(f"key longer than {limits.causal_key_bytes_max} bytes", key=key[:64])
    return key


def apply_to_key(state: KeyState | None, update: Update) -> KeyState:
    """The key's state after ``update``: the siblings its context covers go,
    the update's own sibling joins. Pure; the DVV-set rule."""
    clock = dict(state.clock) if state is not None else {}
    siblings = state.siblings if state is not None else ()
    if clock.get(update.origin, 0) + 1 != update.counter:
        # Causal delivery makes every dot the next one of its replica for the key.
        raise CorruptionError(
            f"update {update.origin}:{update.seq} has dot counter {update.counter} for "
            f"{update.key!r}, expected {clock.get(update.origin, 0) + 1}",
            origin=update.origin,
            seq=update.seq,
        )
    context = update.context
    kept = [s for s in siblings if s.counter > context.get(s.replica, 0)]
    kept.append(Sibling(update.origin, update.counter, update.seq, update.value))
    kept.sort(key=lambda s: (s.replica, s.counter))
    clock[update.origin] = update.counter
    return KeyState(clock, tuple(kept))


def versions_of(key: str, state: KeyState | None) -> Versions:
    if state is None:
        return Versions(key, (), Context(key, ()), ())
    values = tuple(s.value for s in state.siblings if s.value is not None)
    return Versions(key, values, Context(key, tuple(sorted(state.clock.items()))), state.siblings)


class ReplicaCore:
    """One replica's state: the keys, the applied vector, the pending buffer.

    The shells (a simulated network, the log) move :class:`Update` values
    between cores; the core decides what is visible when. With
    ``keep_history`` it keeps every applied update in its application order
    (a causal order) so it can re-send what a peer misses (anti-entropy over
    a network; over the log, the log is the history).
    """

    def __init__(
        self,
        replica_id: str,
        *,
        keep_history: bool = False,
        pending_max: int = limits.causal_pending_updates_max,
    ) -> None:
        self.replica_id = _check_replica_id(replica_id)
        self.applied: Vector = {}
        self.store: dict[str, KeyState] = {}
        self.pending: dict[tuple[str, int], Update] = {}
        self.pending_max = pending_max
        self.history: list[Update] | None = [] if keep_history else None

    # --- sessions ----------------------------------------------------------------

    def check_session(self, session: Session | None) -> None:
        """Raise ``SessionBehind`` unless this replica has applied the session."""
        if session is None or covers(self.applied, session.vector):
            return
        missing = {
            origin: seq
            for origin, seq in sorted(session.vector.items())
            if self.applied.get(origin, 0) < seq
        }
        raise SessionBehind(
            f"replica {self.replica_id!r} has not yet applied {missing} of the session",
            replica=self.replica_id,
            missing=missing,
        )

    # --- client operations ---------------------------------------------------------

    def read(self, key: str, session: Session | None = None) -> Versions:
        """The key's siblings and context; the session then includes them."""
        self.check_session(session)
        state = self.store.get(check_key(key))
        if session is not None and state is not None:
            for sibling in state.siblings:
                session.observe(sibling.replica, sibling.seq)
        return versions_of(key, state)

    def peek(self, key: str) -> Versions:
        """The key's state, ignoring sessions and recording nothing (for checkers)."""
        return versions_of(key, self.store.get(key))

    def prepare_write(
        self,
        key: str,
        value: bytes | None,
        context: Context | None = None,
        session: Session | None = None,
    ) -> Update:
        """The update that writes ``value`` (``None`` deletes) to ``key``,
        superseding the siblings ``context`` covers. Changes nothing: the
        shell makes it durable, then calls :meth:`commit_write`."""
        check_key(key)
        if value is not None:
            if not isinstance(value, bytes):
                raise UsageError(f"a value is bytes or None, got {type(value).__name__}")
            if len(value) > limits.causal_value_bytes_max:
                raise LimitExceeded(
                    f"value larger than {limits.causal_value_bytes_max} bytes", key=key
                )
        self.check_session(session)
        state = self.store.get(key)
        clock = state.clock if state is not None else {}
        seen: Vector = {}
        if context is not None:
            if not isinstance(context, Context):
                raise UsageError("context must be the Context a read returned")
            if context.key != key:
                raise UsageError(
                    f"a context read from {context.key!r} cannot resolve {key!r}", key=key
                )
            seen = context.vector()
            if not covers(clock, seen):
                # The client read siblings here that this replica has not applied:
                # writing now would let them reappear after the write.
                raise SessionBehind(
                    f"replica {self.replica_id!r} has not yet applied the writes "
                    f"the context of {key!r} covers",
                    replica=self.replica_id,
                    missing={},
                    key=key,
                )
        me = self.replica_id
        seq = self.applied.get(me, 0) + 1
        deps = {origin: n for origin, n in self.applied.items() if origin != me and n > 0}
        return Update(me, seq, deps, key, clock.get(me, 0) + 1, seen, value)

    def commit_write(self, update: Update, session: Session | None = None) -> Versions:
        """Apply a local write (after the shell made it durable); return the key's state."""
        self.apply(update)
        if session is not None:
            session.observe(update.origin, update.seq)
        return versions_of(update.key, self.store.get(update.key))

    def write(
        self,
        key: str,
        value: bytes | None,
        context: Context | None = None,
        session: Session | None = None,
    ) -> Update:
        """:meth:`prepare_write` then :meth:`commit_write`; return the update to send."""
        update = self.prepare_write(key, value, context, session)
        self.commit_write(update, session)
        return update

    # --- replication ---------------------------------------------------------------

    def is_applied(self, update: Update) -> bool:
        """True if this replica has applied ``update`` (or a later one of its origin)."""
        return update.seq <= self.applied.get(update.origin, 0)

    def deliverable(self, update: Update) -> bool:
        """True if ``update`` is the next one of its origin and its deps are applied."""
        if self.applied.get(update.origin, 0) != update.seq - 1:
            return False
        return covers(self.applied, update.deps)

    def apply(self, update: Update) -> None:
        """Apply a deliverable update (the caller checked :meth:`deliverable`)."""
        if not self.deliverable(update):
            raise CorruptionError(
                f"update {update.origin}:{update.seq} applied before its causal dependencies",
                origin=update.origin,
                seq=update.seq,
            )
        self.store[update.key] = apply_to_key(self.store.get(update.key), update)
        self.applied[update.origin] = update.seq
        if self.history is not None:
            self.history.append(update)

    def receive(self, update: Update) -> list[Update]:
        """An update from the network: ignore it if already applied or
        buffered, apply it if deliverable (and then whatever it unblocks),
        else buffer it. Returns the updates applied, in order. A full buffer
        drops undeliverable updates (anti-entropy sends them again), never
        deliverable ones, so progress is always possible."""
        ident = (update.origin, update.seq)
        if self.is_applied(update) or ident in self.pending:
            return []
        if not self.deliverable(update):
            if len(self.pending) < self.pending_max:
                self.pending[ident] = update
            return []
        self.apply(update)
        done = [update]
        progress = True
        while progress and self.pending:
            progress = False
            for origin in sorted({o for o, _ in self.pending}):
                candidate = self.pending.get((origin, self.applied.get(origin, 0) + 1))
                if candidate is not None and self.deliverable(candidate):
                    del self.pending[(candidate.origin, candidate.seq)]
                    self.apply(candidate)
                    done.append(candidate)
                    progress = True
        # Buffered duplicates of what was applied meanwhile are garbage now.
        for ident in [i for i, u in self.pending.items() if self.is_applied(u)]:
            del self.pending[ident]
        return done

    def missing(self, peer_applied: Mapping[str, int], updates_max: int) -> list[Update]:
        """Updates this replica applied that a peer with ``peer_applied`` lacks,
        in this replica's application order (a causal order), at most ``updates_max``."""
        if self.history is None:
            raise UsageError("missing() needs a core made with keep_history=True")
        out: list[Update] = []
        for update in self.history:
            if update.seq > peer_applied.get(update.origin, 0):
                out.append(update)
                if len(out) >= updates_max:
                    break
        return out

    # --- inspection -------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every key this replica holds state for, sorted; a deleted key stays
        (its clock orders later writes after the delete)."""
        return sorted(self.store)

    def state(self) -> dict[str, KeyState]:
        """Each key's :class:`KeyState` (a copy of the mapping; the states are immutable)."""
        return dict(self.store)

    def digest(self) -> str:
        """A hash of the applied vector and every key's state: equal on two
        replicas exactly when they hold the same data."""
        body = msgspec.msgpack.encode(
            [
                sorted(self.applied.items()),
                [
                    [key, sorted(state.clock.items()), list(state.siblings)]
                    for key, state in sorted(self.store.items())
                ],
            ]
        )
        return hashlib.sha256(body).hexdigest()


def vector_of(updates: Iterable[Update]) -> Vector:
    """The vector of the latest sequence per origin among ``updates``."""
    out: Vector = {}
    for update in updates:
        if update.seq > out.get(update.origin, 0):
            out[update.origin] = update.seq
    return out
