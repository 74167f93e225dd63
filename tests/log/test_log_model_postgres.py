"""Model-based test: the log on PostgreSQL must behave exactly like the memory log.

The state machines of ``test_log_model`` (every operation of the log, and
retention and compaction alone) with ``PostgresBackend`` in place of SQLite:
a fresh schema per run, the SQL of ``backends/postgres/_log_maintain.py``
held to ``log._core``'s rules at their exact boundaries. Fewer and shorter
runs than on SQLite: each step is a few round trips to the server.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, settings

from tests.backends.postgres.conftest import fresh_schema, server_url
from unbundled import Log
from unbundled.backends.postgres import PostgresBackend
from unbundled.testing import SimClock

from .test_log_model import LogComparison, RetentionComparison


class _OnPostgres:
    """Opens the real side on a schema of its own (emptied for reuse at the end)."""

    clock: SimClock
    _schema: contextlib.ExitStack

    def _open_real(self) -> Log:
        if not hasattr(self, "_schema"):
            self._schema = contextlib.ExitStack()
            self._url = f"{server_url()}?schema={self._schema.enter_context(fresh_schema())}"
        return Log(PostgresBackend(self._url, sync="off", clock=self.clock))

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[misc]
        finally:
            self._schema.close()


class PostgresLogComparison(_OnPostgres, LogComparison):
    pass


class PostgresRetentionComparison(_OnPostgres, RetentionComparison):
    pass


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

TestPostgresLogModel = pytest.mark.postgres(PostgresLogComparison.TestCase)
TestPostgresLogModel.settings = settings(max_examples=12, stateful_step_count=40, **_SETTINGS)  # type: ignore[arg-type]

TestPostgresRetentionModel = pytest.mark.postgres(PostgresRetentionComparison.TestCase)
TestPostgresRetentionModel.settings = settings(max_examples=12, stateful_step_count=30, **_SETTINGS)  # type: ignore[arg-type]
