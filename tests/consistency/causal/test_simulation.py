"""The deterministic simulation: replicas on a network that delays,
reorders, duplicates, loses and partitions messages, random clients moving
between replicas, and a black-box checker of causal order, siblings,
sessions and convergence. A failing seed prints itself and replays exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unbundled.consistency.causal import ReplicaCore, Update
from unbundled.consistency.causal._core import KeyState, Session
from unbundled.testing.causal_sim import SimConfig, main, simulate
from unbundled.testing.netsim import NetConfig


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_every_seed_keeps_causality_siblings_sessions_and_converges(seed: int) -> None:
    report = simulate(seed)
    assert report.ok, report.summary()


@pytest.mark.parametrize(
    "config",
    [
        SimConfig(replicas=5, clients=6, keys=3, operations=300),
        SimConfig(replicas=2, keys=1, operations=200, blind_fraction=0.5),
        SimConfig(
            operations=300,
            partition_probability=0.2,
            heal_probability=0.02,
            pending_max=2,
            net=NetConfig(delay_ms_max=400, duplicate_probability=0.3, drop_probability=0.2),
        ),
    ],
    ids=["five-replicas", "one-hot-key", "long-partitions-lossy"],
)
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_harsher_shapes_hold_too(config: SimConfig, seed: int) -> None:
    report = simulate(seed, config)
    assert report.ok, report.summary()


def test_the_runs_exercise_what_they_claim_to_check() -> None:
    """Siblings, resolutions, partitions, refusals, loss and duplicates all
    happen: a checker that never sees a conflict proves nothing."""
    totals: dict[str, int] = {}
    for seed in range(10):
        report = simulate(seed)
        assert report.ok, report.summary()
        for name, count in report.stats.items():
            totals[name] = totals.get(name, 0) + count
    for name in ("sibling_reads", "resolutions", "partitions", "refused", "dropped", "duplicated"):
        assert totals[name] > 0, name


def test_a_seed_replays_exactly() -> None:
    first, again, other = simulate(1234), simulate(1234), simulate(1235)
    assert first.trace == again.trace and first.stats == again.stats
    assert first.trace_digest() == again.trace_digest()
    assert first.trace != other.trace


def test_a_failing_seed_prints_how_to_replay_it(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate(3, replica=lambda name, pending: NoCausalDelivery(name, keep_history=True))
    assert not report.ok
    assert "seed=3" in report.summary()
    assert "replay: python -m unbundled.testing.causal_sim --seed 3" in report.summary()
    assert main(["--seed", "3", "--operations", "50"]) == 0
    assert "causal simulation seed=3" in capsys.readouterr().out


# --- the checker catches broken replicas -------------------------------------------------


class NoCausalDelivery(ReplicaCore):
    """Applies each origin's updates in order but ignores cross-replica deps."""

    def deliverable(self, update: Update) -> bool:
        return self.applied.get(update.origin, 0) == update.seq - 1


class LastWriterWins(ReplicaCore):
    """Keeps only the newest write of a key: concurrent siblings are lost."""

    def apply(self, update: Update) -> None:
        super().apply(update)
        state = self.store[update.key]
        newest = tuple(s for s in state.siblings if s.replica == update.origin)[-1:]
        self.store[update.key] = KeyState(state.clock, newest)


class NoSessions(ReplicaCore):
    """Serves every client whether or not it has caught up with its session."""

    def check_session(self, session: Session | None) -> None:
        return None


class IgnoresContext(ReplicaCore):
    """Treats every write as blind: siblings are never resolved."""

    def prepare_write(self, key, value, context=None, session=None):  # type: ignore[no-untyped-def]
        return super().prepare_write(key, value, None, session)


@pytest.mark.parametrize(
    ("broken", "symptom"),
    [
        (NoCausalDelivery, "before its cause"),
        (LastWriterWins, "before its cause"),  # a lost sibling is a missing cause
        (NoSessions, "saw or wrote"),
        (IgnoresContext, "superseded it"),
    ],
)
def test_the_checker_catches_a_broken_replica(broken: type[ReplicaCore], symptom: str) -> None:
    failing = []
    for seed in range(20):
        report = simulate(seed, replica=lambda name, pending: broken(name, keep_history=True))
        if not report.ok:
            failing.append(report)
    assert failing, f"{broken.__name__} passed every seed"
    assert any(symptom in failure for r in failing for failure in r.failures), [
        r.failures[:3] for r in failing
    ]
