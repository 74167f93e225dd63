"""The node-loss checks (``_logcheck``) on the SQLite log, which serves today:
a run without faults passes, and a loss, a duplicate or a moved record is
caught (so the skipped PostgreSQL and NATS tests have teeth once they run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster._logcheck import TOPIC, log_or_skip, run_producers_through
from unbundled import NotSupported


def test_a_run_without_faults_passes_and_damage_is_caught(tmp_path: Path) -> None:
    with log_or_skip(str(tmp_path / "log.db")) as log:
        run = run_producers_through(log, lambda: None, consume=True, before_s=0.3, after_s=0.3)
        run.assert_no_loss_no_duplicates(consumed=True)
        assert len(run.acked) >= 30 and not run.errors, run.summary()

        lost = dict(run.acked)
        run.acked[b"never-written"] = (0, 10**9)
        with pytest.raises(AssertionError, match="acknowledged and lost"):
            run.assert_no_loss_no_duplicates()
        run.acked = lost

        value, (partition, offset) = next(iter(run.acked.items()))
        run.acked[value] = (partition, offset + 10**6)
        with pytest.raises(AssertionError, match="not where their append said"):
            run.assert_no_loss_no_duplicates()
        run.acked[value] = (partition, offset)

        log.append(TOPIC, value, partition=partition)  # the same record twice
        with pytest.raises(AssertionError, match="duplicates"):
            run.assert_no_loss_no_duplicates()


def test_a_backend_without_the_log_fails_with_its_reason() -> None:
    with pytest.raises(NotSupported, match=r"redis://.*not the log"):
        log_or_skip("redis://127.0.0.1:6379")
