"""Power cuts of every durable part on SQLite (issue 13): the log (appends,
batches, transactions, the idempotent producer's state), the event store
(appends, a projection's checkpoint), idempotency records, the key-value
store and the unit of work, each at ``sync="full"`` and ``"normal"``.

Each case cuts the power of one LazyFS mount ``CUTS`` times (5 by default:
5 parts x 2 levels x 5 = 50 cuts), writing more on the same file after each
reboot; see ``bench/powercut.py`` for the writers and the models. ``full``:
every acknowledged write is there exactly once, batches and units whole or
absent. ``normal``: what is there is a prefix of what was acknowledged (a
suffix may be missing, never a middle part). Both: the file opens without
``CorruptionError``.

Every case prints its seed; a failure names the case seed and the cut's.
Set ``UNBUNDLED_POWERCUT_SEED`` to replay a seed, ``UNBUNDLED_POWERCUT_CUTS``
for more cuts per case (``make bench`` runs 1,000 in all:
``bench/run.py --only powercut``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from bench.powercut import run_case

from .conftest import require_fuse

SEED = int(os.environ.get("UNBUNDLED_POWERCUT_SEED", random.SystemRandom().randrange(2**31)))
CUTS = int(os.environ.get("UNBUNDLED_POWERCUT_CUTS", "5"))


def cut_and_check(tmp_path: Path, part: str, sync: str) -> None:
    require_fuse()
    print(f"powercut part={part} sync={sync} seed={SEED} cuts={CUTS}")
    result = run_case(part, sync, CUTS, SEED, tmp_path)
    print(
        f"  checked {result.checked} acknowledged writes, lost {result.lost}, cut seeds "
        f"{result.cut_seeds}"
    )
    assert result.cuts == CUTS
    if sync == "full":
        assert result.lost == 0


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_log_survives_power_cuts(tmp_path: Path, sync: str) -> None:
    """Plain appends, batches, transactions with an offset commit, and an
    idempotent producer's batches; its last sequence matches the records."""
    cut_and_check(tmp_path, "log", sync)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_event_store_survives_power_cuts(tmp_path: Path, sync: str) -> None:
    """Appends, multi-stream appends, and a projection whose read model
    agrees with its checkpoint."""
    cut_and_check(tmp_path, "events", sync)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_idempotency_records_survive_power_cuts(tmp_path: Path, sync: str) -> None:
    """Claims and completions with their results."""
    cut_and_check(tmp_path, "idempotency", sync)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kv_survives_power_cuts(tmp_path: Path, sync: str) -> None:
    """Writes and compare-and-sets; values and versions."""
    cut_and_check(tmp_path, "kv", sync)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_unit_of_work_survives_power_cuts(tmp_path: Path, sync: str) -> None:
    """A claim, then one transaction: a record, an event at an expected
    version, the key's completion, a compare-and-set and an offset commit."""
    cut_and_check(tmp_path, "unit", sync)
