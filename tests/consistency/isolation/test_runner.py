"""The runner's promises on scripts Hermitage does not have: a lock nobody
releases, a statement that never returns, and a statement that is simply wrong.

Short timings (a 0.2 s step timeout, 1 s lock timeouts) keep these fast; the
scripts are built from the same steps as the Hermitage ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import require_server
from unbundled.consistency.isolation import Variant
from unbundled.consistency.isolation._drivers import open_target
from unbundled.consistency.isolation._runner import Entry, Timing, run_script
from unbundled.consistency.isolation._scripts import Results, Script, Step, Verdict
from unbundled.errors import BackendError

FAST = Timing(step_timeout_s=0.2, settle_s=0.1, lock_timeout_s=1.0)


def _never_judged(results: Results) -> Verdict:
    return Verdict(False, f"final state {dict(results.final)}")


def script(name: str, *steps: Step) -> Script:
    return Script(name, name, steps, _never_judged)


# T1 locks row 1 and never ends its transaction; T2 then writes row 1.
STUCK = script(
    "stuck",
    Step("T1", "begin"),
    Step("T1", "sql", "UPDATE {t} SET value = 11 WHERE id = 1"),
    Step("T2", "begin"),
    Step("T2", "sql", "UPDATE {t} SET value = 12 WHERE id = 1"),
)


def play(url: str, played: Script, variant: Variant) -> tuple[Verdict, tuple[Entry, ...]]:
    target = open_target(url, FAST.lock_timeout_s)
    fixture = target.prepare(played.name, variant)
    try:
        return run_script(played, fixture, variant, FAST)
    finally:
        fixture.drop()


def test_sqlite_lock_never_released_ends_in_busy(tmp_path: Path) -> None:
    started = time.monotonic()
    verdict, transcript = play(
        f"sqlite:///{tmp_path}/x.db", STUCK, Variant("serializable", "journal_mode=delete")
    )
    assert time.monotonic() - started < 10
    write = transcript[3]
    assert write.blocked  # waited past the step timeout...
    assert write.error is not None and write.error.startswith("SQLITE_BUSY")  # ...then gave up
    assert verdict.reason == "final state {1: 10, 2: 20}"  # T1 never committed
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("server", "url", "error"),
    [
        pytest.param(
            "postgres",
            "postgresql://postgres@127.0.0.1/test",
            "55P03: ",  # lock_not_available
            marks=pytest.mark.postgres,
        ),
        pytest.param(
            "mariadb",
            "mysql://root@127.0.0.1:3306/test",
            "1205: Lock wait timeout",
            marks=pytest.mark.mariadb,
        ),
    ],
)
def test_a_lock_never_released_ends_in_the_servers_lock_timeout(
    server: str, url: str, error: str
) -> None:
    require_server(server)
    _, transcript = play(url, STUCK, Variant("read committed"))
    write = transcript[3]
    assert write.blocked
    assert write.error is not None and write.error.startswith(error)


@pytest.mark.postgres
def test_a_statement_that_never_returns_is_interrupted() -> None:
    """No lock to time out: the runner cancels it after the last step and the
    lock timeout, and the transcript says so."""
    require_server("postgres")
    sleeper = script(
        "sleeper",
        Step("T1", "begin"),
        Step("T1", "sql", "SELECT id, value FROM {t} WHERE pg_sleep(60)::text = ''"),
        Step("T1", "commit"),
    )
    started = time.monotonic()
    _, transcript = play("postgresql://postgres@127.0.0.1/test", sleeper, Variant("read committed"))
    assert time.monotonic() - started < 15
    sleep, commit = transcript[1], transcript[2]
    assert sleep.blocked
    assert sleep.error is not None and sleep.error.startswith("57014: ")  # query_canceled
    assert commit.queued and commit.skipped


def test_a_wrong_statement_is_raised_not_reported(tmp_path: Path) -> None:
    broken = script(
        "broken",
        Step("T1", "begin"),
        Step("T1", "sql", "SELEC value FROM {t}"),
        Step("T1", "commit"),
    )
    with pytest.raises(BackendError, match=r"broken at serializable, journal_mode=wal: .*SELEC"):
        play(f"sqlite:///{tmp_path}/x.db", broken, Variant("serializable", "journal_mode=wal"))
    assert not list(tmp_path.iterdir())
