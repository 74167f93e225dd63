"""Porcupine's test histories, as the checker's tests and the consistency
benchmark both use them: where the copies are (``tests/data/porcupine/``,
see its README for their origin and licence) and the verdict Porcupine's own
tests give each. Here, below both, so that the benchmark imports no test."""

from __future__ import annotations

from pathlib import Path

from unbundled.consistency.checker import Verdict

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "porcupine"

# The files porcupine_test.go asserts linearizable; all other non-empty ones are not.
ETCD_LINEARIZABLE = {2, 5, 7, 18, 25, 31, 38, 45, 48, 49, 51, 53, 56, 67, 75, 76}
ETCD_LINEARIZABLE |= {80, 87, 92, 98, 100, 101, 102}
ETCD_EMPTY = 95
ETCD = [n for n in range(103) if n != ETCD_EMPTY]

# file -> (operations, expected verdict), from the data's README.
KV = {
    "c01-ok": (58, Verdict.LINEARIZABLE),
    "c01-bad": (38, Verdict.NOT_LINEARIZABLE),
    "c10-ok": (337, Verdict.LINEARIZABLE),
    "c10-bad": (405, Verdict.NOT_LINEARIZABLE),
    "c50-ok": (1712, Verdict.LINEARIZABLE),
    "c50-bad": (2024, Verdict.NOT_LINEARIZABLE),
}


def etcd_path(n: int) -> Path:
    """The copy of Porcupine's ``etcd_<n>.log`` (a Jepsen history of a register)."""
    return DATA / "jepsen" / f"etcd_{n:03d}.log"
