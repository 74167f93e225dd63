"""Every verdict on Porcupine's test histories matches Porcupine's own.

The files are copies in tests/data/porcupine/ (see its README for where they
came from and their licence; bench/porcupine.py lists them with their
verdicts); nothing here reads outside the repository.
"""

from __future__ import annotations

import hashlib

import pytest
from bench.porcupine import DATA, ETCD, ETCD_EMPTY, ETCD_LINEARIZABLE, KV, etcd_path

from unbundled.consistency.checker import Verdict, check, kv, parse_history, register


@pytest.mark.parametrize("n", ETCD, ids=[f"etcd_{n:03d}" for n in ETCD])
def test_etcd_verdict(n: int) -> None:
    history = parse_history(etcd_path(n), "jepsen", "register")
    assert 73 <= len(history) <= 90
    result = check(history, register(), budget_s=60)
    expected = Verdict.LINEARIZABLE if n in ETCD_LINEARIZABLE else Verdict.NOT_LINEARIZABLE
    assert result.verdict is expected
    if expected is Verdict.NOT_LINEARIZABLE:
        assert result.violation is not None
        assert 0 < len(result.violation.operations) <= len(history)


def test_etcd_counts_match_the_readme() -> None:
    """The parser sees every operation: 8,523 in all, 23 + 79 verdicts."""
    assert etcd_path(ETCD_EMPTY).read_text() == ""
    assert len(parse_history(etcd_path(ETCD_EMPTY), "jepsen", "register")) == 0
    histories = {n: parse_history(etcd_path(n), "jepsen", "register") for n in ETCD}
    assert sum(len(h) for h in histories.values()) == 8523
    assert len(ETCD_LINEARIZABLE) == 23 and len(ETCD) - len(ETCD_LINEARIZABLE) == 79
    # etcd_000: 85 operations, 19 process ids, 16 crashed; 102: 7 timed-out reads.
    first = histories[0]
    assert (len(first), len(first.clients)) == (85, 19)
    assert sum(not op.returned for op in first) == 16
    timed_out = [op for op in histories[102] if op.input == ("read",) and not op.known]
    assert len(timed_out) == 7 and all(op.returned for op in timed_out)


@pytest.mark.parametrize("name", list(KV))
def test_kv_verdict(name: str) -> None:
    operations, expected = KV[name]
    history = parse_history(DATA / "kv" / f"{name}.txt", "porcupine-kv", "kv")
    assert len(history) == operations
    result = check(history, kv(initial=""), budget_s=60)
    assert result.verdict is expected
    assert result.partitions == len({op.input[1] for op in history})


def test_kv_unpartitioned_agrees_on_small_files() -> None:
    """Without the per-key split (one state holding the whole map) the answer
    is the same; the split is only about speed."""
    for name in ("c01-ok", "c01-bad", "c10-bad"):
        history = parse_history(DATA / "kv" / f"{name}.txt", "porcupine-kv", "kv")
        result = check(history, kv(initial=""), partition=False, budget_s=60, explain=False)
        assert result.verdict is KV[name][1]


def test_copies_match_their_checksums_and_carry_the_licence() -> None:
    sums = (DATA / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 109
    for line in sums:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
    licence = (DATA / "LICENSE-porcupine-MIT.md").read_text()
    assert "MIT" in licence and "Anish Athalye" in licence
    assert "github.com/anishathalye/porcupine" in (DATA / "README.md").read_text()
