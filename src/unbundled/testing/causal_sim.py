"""A deterministic simulation of the causal store, with a checker (VOPR-style).

:func:`simulate` runs ``ReplicaCore`` replicas on a :class:`~.netsim.Network`
that delays, reorders, duplicates, loses and partitions their messages, and
drives them with random client operations (reads, writes with or without the
context of an earlier read, deletes) from clients that move between replicas
carrying a :class:`~unbundled.consistency.causal.Session`. Replicas broadcast
each write and run anti-entropy (send their applied vector; a peer answers
with the updates it lacks). At the end the partition heals, loss stops, and
the run drains until every replica has applied everything.

:class:`CausalChecker` knows nothing of the implementation's clocks. It
names every write, tracks its causal past (what its client had observed) and
which earlier writes of its key its context covered, and checks on every read:

1. **causal order**: every cause of every value shown is present at that
   replica (shown, or superseded by something shown): no effect before its cause;
2. **siblings**: no value shown is one that another shown value superseded;
3. **sessions**: every write to the key that the client saw or made is
   present in what it reads (read-your-writes, monotonic reads), and before a
   write the replica has every write the client saw (writes follow reads);

and at the end **convergence**: all replicas hold the same data, and each key
shows exactly the writes no other write superseded (concurrent writes are
all kept). Everything random comes from the seed, so a failing seed replays
exactly::

    python -m unbundled.testing.causal_sim --seed 1234
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..consistency.causal._core import Context, ReplicaCore, Session, Update, Versions
from ..errors import SessionBehind
from .netsim import NetConfig, Network

__all__ = ["CausalChecker", "SimConfig", "SimReport", "simulate"]


@dataclass(frozen=True)
class SimConfig:
    """The shape of one simulated run (all counts; probabilities per operation)."""

    replicas: int = 3
    clients: int = 4
    keys: int = 4
    operations: int = 200
    write_fraction: float = 0.5
    delete_fraction: float = 0.1  # of writes
    blind_fraction: float = 0.15  # writes without a context: they make siblings
    move_probability: float = 0.3  # a client switches replica before an operation
    step_ms_max: int = 25  # simulated time between two client operations
    anti_entropy_ms: int = 150
    partition_probability: float = 0.03  # when the network is whole
    heal_probability: float = 0.08  # when it is partitioned
    missing_updates_max: int = 64  # updates in one anti-entropy answer
    pending_max: int = 64  # each replica's buffer of undeliverable updates
    drain_ms_max: int = 120_000
    net: NetConfig = field(default_factory=NetConfig)


@dataclass(frozen=True)
class UpdateMsg:
    update: Update


@dataclass(frozen=True)
class SummaryMsg:
    applied: dict[str, int]


@dataclass(frozen=True)
class MissingMsg:
    updates: tuple[Update, ...]


Msg = UpdateMsg | SummaryMsg | MissingMsg
ReplicaFactory = Callable[[str, int], ReplicaCore]


def default_replica(name: str, pending_max: int) -> ReplicaCore:
    return ReplicaCore(name, keep_history=True, pending_max=pending_max)


@dataclass(frozen=True)
class WriteInfo:
    wid: int
    key: str
    deps: frozenset[int]  # every write in its causal past (its client had observed them)
    supersedes: frozenset[int]  # writes of its key its context covered, transitively


@dataclass
class CausalChecker:
    """Black-box checks of causal consistency; see the module docstring."""

    writes: dict[int, WriteInfo] = field(default_factory=dict)
    by_dot: dict[tuple[str, str, int], int] = field(default_factory=dict)
    past: dict[int, set[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def next_wid(self) -> int:
        """The id the next write will get (write ids count from 1)."""
        return len(self.writes) + 1

    def fail(self, message: str) -> None:
        """Record a failure (the first 50 are kept)."""
        if len(self.failures) < 50:
            self.failures.append(message)

    def shown(self, versions: Versions, where: str) -> list[int]:
        """The write ids of the siblings ``versions`` shows (deletes included)."""
        out = []
        for sibling in versions.siblings:
            wid = self.by_dot.get((versions.key, sibling.replica, sibling.counter))
            if wid is None:
                self.fail(f"{where}: {versions.key} shows a value nobody wrote: {sibling}")
                continue
            out.append(wid)
        return out

    def _present(self, wid: int, shown: Sequence[int]) -> bool:
        return any(v == wid or wid in self.writes[v].supersedes for v in shown)

    def _present_at(self, wid: int, core: ReplicaCore, cache: dict[str, list[int]]) -> bool:
        key = self.writes[wid].key
        if key not in cache:
            cache[key] = self.shown(core.peek(key), core.replica_id)
        return self._present(wid, cache[key])

    def before_write(self, client: int, core: ReplicaCore, where: str) -> None:
        """Writes follow reads: the replica must hold everything the client saw."""
        cache: dict[str, list[int]] = {}
        for wid in sorted(self.past.get(client, ())):
            if not self._present_at(wid, core, cache):
                self.fail(f"{where}: c{client} writes at a replica missing w{wid} it saw")

    def on_write(
        self, client: int, key: str, update: Update, context_shown: Sequence[int] | None
    ) -> int:
        """Register a write by ``client`` and return its id. ``context_shown``
        is what the read whose context the write passed showed (``None`` for a blind
        write): the write supersedes those writes and what they superseded."""
        supersedes: set[int] = set()
        for v in context_shown or ():
            supersedes.add(v)
            supersedes |= self.writes[v].supersedes
        past = self.past.setdefault(client, set())
        wid = self.next_wid()
        self.writes[wid] = WriteInfo(wid, key, frozenset(past), frozenset(supersedes))
        self.by_dot[(key, update.origin, update.counter)] = wid
        past.add(wid)
        return wid

    def on_read(self, client: int, core: ReplicaCore, versions: Versions, where: str) -> list[int]:
        """Check a read by ``client`` at ``core`` (causal order, siblings,
        sessions; see the module docstring), record failures, and return the write ids
        it showed."""
        shown = self.shown(versions, where)
        for a in shown:
            for b in shown:
                if a != b and a in self.writes[b].supersedes:
                    self.fail(f"{where}: {versions.key} shows w{a} although w{b} superseded it")
        cache: dict[str, list[int]] = {versions.key: shown}
        for v in shown:
            for cause in sorted(self.writes[v].deps):
                if not self._present_at(cause, core, cache):
                    self.fail(
                        f"{where}: shows w{v} ({versions.key}) before its cause w{cause} "
                        f"({self.writes[cause].key})"
                    )
        past = self.past.setdefault(client, set())
        for wid in sorted(past):
            if self.writes[wid].key == versions.key and not self._present(wid, shown):
                self.fail(f"{where}: c{client} saw or wrote w{wid} but reads {shown}")
        for v in shown:
            past.add(v)
            past |= self.writes[v].deps
        return shown

    def expected(self, key: str) -> list[int]:
        """The writes of ``key`` that no write superseded: what must survive."""
        mine = [w for w in self.writes.values() if w.key == key]
        gone = set().union(*(w.supersedes for w in mine)) if mine else set()
        return sorted(w.wid for w in mine if w.wid not in gone)


@dataclass(frozen=True)
class SimReport:
    """What one :func:`simulate` run found: the checker's failures (none if
    :attr:`ok`), the whole trace, and counts of what happened."""

    seed: int
    config: SimConfig
    failures: tuple[str, ...]
    trace: tuple[str, ...]
    stats: dict[str, int]

    @property
    def ok(self) -> bool:
        """True if the run found no failure."""
        return not self.failures

    def trace_digest(self) -> str:
        """A hash of the whole trace: equal for two runs exactly when they did the same."""
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()

    def summary(self) -> str:
        """One line of counts if the run was fine; else the failures (the first
        20) and the command that replays the run."""
        stats = " ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))
        head = f"causal simulation seed={self.seed}: {stats}"
        if self.ok:
            return head
        replay = f"replay: python -m unbundled.testing.causal_sim --seed {self.seed}"
        if self.config != SimConfig():
            replay += f"  (with {self.config})"
        return "\n".join([f"FAILED {head}", *self.failures[:20], replay])


class _Run:
    """One simulation run; state lives here so the steps stay small."""

    def __init__(self, seed: int, config: SimConfig, factory: ReplicaFactory) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.trace: list[str] = []
        self.names = [f"r{i}" for i in range(config.replicas)]
        self.net: Network[Msg] = Network(self.names, self.rng, config.net, self.trace)
        self.cores = {name: factory(name, config.pending_max) for name in self.names}
        self.checker = CausalChecker()
        self.homes = [self.rng.choice(self.names) for _ in range(config.clients)]
        self.sessions = [Session() for _ in range(config.clients)]
        self.contexts: dict[tuple[int, str], tuple[Context, list[int]]] = {}
        self.stats = dict.fromkeys(
            ["reads", "writes", "refused", "unserved", "sibling_reads", "resolutions"], 0
        )
        self.stats["partitions"] = 0
        self.next_anti_entropy_ms = config.anti_entropy_ms

    # --- the network side ---------------------------------------------------------------

    def handle(self, src: str, dst: str, msg: Msg) -> None:
        core = self.cores[dst]
        if isinstance(msg, UpdateMsg):
            core.receive(msg.update)
        elif isinstance(msg, SummaryMsg):
            missing = core.missing(msg.applied, self.config.missing_updates_max)
            if missing:
                self.net.send(dst, src, MissingMsg(tuple(missing)), f"missing x{len(missing)}")
        else:
            for update in msg.updates:
                core.receive(update)

    def pump(self) -> None:
        for src, dst, msg in self.net.deliver_due():
            self.handle(src, dst, msg)
        while self.net.now_ms >= self.next_anti_entropy_ms:
            self.next_anti_entropy_ms += self.config.anti_entropy_ms
            for name in self.names:
                applied = dict(self.cores[name].applied)
                for peer in self.names:
                    if peer != name:
                        self.net.send(name, peer, SummaryMsg(applied), "summary")

    def weather(self) -> None:
        """Maybe cut the network in two, or heal it."""
        if self.net.partitioned:
            if self.rng.random() < self.config.heal_probability:
                self.net.heal()
        elif self.rng.random() < self.config.partition_probability and len(self.names) > 1:
            names = list(self.names)
            self.rng.shuffle(names)
            cut = self.rng.randint(1, len(names) - 1)
            self.net.partition([names[:cut], names[cut:]])
            self.stats["partitions"] += 1

    # --- the client side ----------------------------------------------------------------

    def client_op(self) -> None:
        rng, config = self.rng, self.config
        client = rng.randrange(config.clients)
        if rng.random() < config.move_probability:
            self.homes[client] = rng.choice(self.names)
        key = f"k{rng.randrange(config.keys)}"
        write = rng.random() < config.write_fraction
        delete = write and rng.random() < config.delete_fraction
        blind = write and rng.random() < config.blind_fraction
        others = [n for n in self.names if n != self.homes[client]]
        rng.shuffle(others)
        for name in [self.homes[client], *others]:
            where = f"{self.net.now_ms} c{client}@{name}"
            try:
                if write:
                    self.do_write(client, name, key, delete, blind, where)
                else:
                    self.do_read(client, name, key, where)
            except SessionBehind as exc:
                self.stats["refused"] += 1
                self.trace.append(f"{where} refused {exc.details.get('missing')}")
                continue
            self.homes[client] = name
            return
        self.stats["unserved"] += 1
        self.trace.append(f"{self.net.now_ms} c{client} unserved")

    def do_read(self, client: int, name: str, key: str, where: str) -> None:
        core = self.cores[name]
        versions = core.read(key, self.sessions[client])
        shown = self.checker.on_read(client, core, versions, where)
        self.contexts[(client, key)] = (versions.context, shown)
        self.stats["reads"] += 1
        self.stats["sibling_reads"] += len(shown) > 1
        self.trace.append(f"{where} read {key} -> {shown}")

    def do_write(
        self, client: int, name: str, key: str, delete: bool, blind: bool, where: str
    ) -> None:
        core = self.cores[name]
        known = None if blind else self.contexts.get((client, key))
        context, shown = known if known is not None else (None, None)
        value = None if delete else b"w%d" % self.checker.next_wid()
        # prepare first: a refusal must leave the checker untouched.
        update = core.prepare_write(key, value, context, self.sessions[client])
        self.checker.before_write(client, core, where)
        wid = self.checker.on_write(client, key, update, shown)
        versions = core.commit_write(update, self.sessions[client])
        self.contexts[(client, key)] = (
            versions.context,
            self.checker.on_read(client, core, versions, where),
        )
        self.stats["writes"] += 1
        self.stats["resolutions"] += len(shown or ()) > 1
        label = f"u {update.origin}:{update.seq}"
        self.trace.append(f"{where} write {key}=w{wid} over {shown} -> {label}")
        for peer in self.names:
            if peer != name:
                self.net.send(name, peer, UpdateMsg(update), label)

    # --- the run --------------------------------------------------------------------------

    def run(self) -> SimReport:
        for _ in range(self.config.operations):
            self.net.advance(self.rng.randint(0, self.config.step_ms_max))
            self.pump()
            self.weather()
            self.client_op()
        self.drain()
        self.final_checks()
        stats = dict(self.stats)
        stats.update(
            sent=self.net.sent,
            dropped=self.net.dropped,
            duplicated=self.net.duplicated,
            drained_at_ms=self.net.now_ms,
        )
        return SimReport(
            self.seed, self.config, tuple(self.checker.failures), tuple(self.trace), stats
        )

    def converged(self) -> bool:
        cores = list(self.cores.values())
        return all(not c.pending and c.applied == cores[0].applied for c in cores)

    def drain(self) -> None:
        """Heal, stop losing messages, and run until every replica has everything."""
        self.net.heal()
        self.net.config = dataclasses.replace(self.net.config, drop_probability=0.0)
        deadline = self.net.now_ms + self.config.drain_ms_max
        while not self.converged():
            if self.net.now_ms > deadline:
                applied = {n: c.applied for n, c in self.cores.items()}
                self.checker.fail(
                    f"no convergence {self.config.drain_ms_max} ms after healing: {applied}"
                )
                return
            due = self.net.next_due_ms()
            step = self.next_anti_entropy_ms if due is None else min(due, self.next_anti_entropy_ms)
            self.net.advance(max(0, step - self.net.now_ms))
            self.pump()
        self.trace.append(f"{self.net.now_ms} converged")

    def final_checks(self) -> None:
        if self.checker.failures:
            return
        digests = {name: core.digest() for name, core in self.cores.items()}
        if len(set(digests.values())) != 1:
            self.checker.fail(f"replicas differ after convergence: {digests}")
        keys = sorted({w.key for w in self.checker.writes.values()})
        for name, core in self.cores.items():
            for key in keys:
                shown = self.checker.shown(core.peek(key), name)
                expected = self.checker.expected(key)
                if sorted(shown) != expected:
                    self.checker.fail(f"{name}: {key} shows {sorted(shown)}, expected {expected}")
            # Every client can now be served everywhere, and its reads check out.
            for client in range(self.config.clients):
                for key in keys:
                    try:
                        self.do_read(client, name, key, f"final c{client}@{name}")
                    except SessionBehind as exc:
                        self.checker.fail(f"{name} still refuses c{client} after draining: {exc}")


def simulate(
    seed: int, config: SimConfig = SimConfig(), replica: ReplicaFactory = default_replica
) -> SimReport:
    """Run one seeded simulation; the same seed and config give the same trace."""
    return _Run(seed, config, replica).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--operations", type=int, default=SimConfig.operations)
    parser.add_argument("--replicas", type=int, default=SimConfig.replicas)
    parser.add_argument("--trace", action="store_true", help="print the whole trace")
    args = parser.parse_args(argv)
    config = SimConfig(operations=args.operations, replicas=args.replicas)
    report = simulate(args.seed, config)
    if args.trace:
        print("\n".join(report.trace))
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
