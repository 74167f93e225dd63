"""The Hermitage suite, run once per session against each database.

A full run takes seconds per database (most steps wait out the step timeout to
be called blocked), so every database's suite runs once and the tests assert on
the cached outcomes. The three runs start together, on first use, because they
mostly wait: run one after another they would take twice as long.

SQLite runs in a session temporary directory, which must be empty afterwards.
The servers' runs skip when their server is unreachable, and fail with CI=true
(``tests.conftest.require_server``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import SERVERS, require_server
from unbundled.consistency.isolation import Outcome, run_suite

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql://root@127.0.0.1:3306/test"


def _reachable(server: str) -> bool:
    try:
        with socket.create_connection(SERVERS[server], timeout=2.0):
            return True
    except OSError:
        return False


@dataclass
class Suites:
    """The three databases' runs, started together, awaited one by one."""

    sqlite_dir: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(3))
    runs: dict[str, Future[list[Outcome]]] = field(default_factory=dict)

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.sqlite_dir}/suite.db"

    def start(self) -> None:
        self.runs["sqlite"] = self.pool.submit(run_suite, self.sqlite_url)
        # An unreachable server is not started here; its fixture skips or fails.
        if _reachable("postgres"):
            self.runs["postgresql"] = self.pool.submit(run_suite, PG_URL)
        if _reachable("mariadb"):
            self.runs["mariadb"] = self.pool.submit(run_suite, MARIADB_URL)

    def outcomes(self, name: str) -> list[Outcome]:
        run = self.runs.get(name)
        if run is None:  # came up after the start: run it now
            url = {"sqlite": self.sqlite_url, "postgresql": PG_URL, "mariadb": MARIADB_URL}[name]
            run = self.runs[name] = self.pool.submit(run_suite, url)
        return run.result()


@pytest.fixture(scope="session")
def suites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suites]:
    started = Suites(tmp_path_factory.mktemp("hermitage"))
    started.start()
    yield started
    started.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def sqlite_outcomes(suites: Suites) -> list[Outcome]:
    return suites.outcomes("sqlite")


@pytest.fixture(scope="session")
def pg_outcomes(suites: Suites) -> list[Outcome]:
    require_server("postgres")
    return suites.outcomes("postgresql")


@pytest.fixture(scope="session")
def mariadb_outcomes(suites: Suites) -> list[Outcome]:
    require_server("mariadb")
    return suites.outcomes("mariadb")
