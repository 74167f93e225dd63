"""The worked examples run as their docstrings say: ``windowed_count`` gives
the batch answer (clicks per user per 10 s, one click late), and
``exactly_once_processing`` survives a SIGKILLed worker with every payment
applied exactly once (its ``check`` raises otherwise)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from unbundled.examples import exactly_once_processing, windowed_count


def test_windowed_count_main_gives_the_batch_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = windowed_count.main(str(tmp_path / "clicks.db"))
    # The batch answer: every click in its 10 s window, except the one that
    # came after its window closed (ada at 15 s, seen after bob at 33 s).
    on_time = windowed_count.CLICKS.copy()
    on_time.remove(("ada", 15))
    batch = Counter((user, second // 10 * 10) for user, second in on_time)
    assert rows == sorted((user, s, s + 10, n) for (user, s), n in batch.items())
    printed = capsys.readouterr().out
    assert ["ada", "[0,", "10)", "3"] in [line.split() for line in printed.splitlines()]
    assert printed.rstrip().endswith("20 records in, 1 epoch(s), 1 late")


def test_windowed_count_main_twice_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "clicks.db")
    assert windowed_count.main(path) == windowed_count.main(path)


def test_exactly_once_main_survives_a_sigkill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = exactly_once_processing.payments(1000)
    balances = exactly_once_processing.main(str(tmp_path / "payments.db"), count=1000)
    expected: Counter[str] = Counter()
    for p in items:
        expected[p["account"]] += p["amount"]
    assert balances == dict(expected)
    printed = capsys.readouterr().out
    assert "worker SIGKILLed after" in printed
    assert "exactly once: no payment lost, none applied twice" in printed
