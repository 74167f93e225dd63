"""The PostgreSQL tests' fresh-schema fixture, for the tests here that need it."""

from __future__ import annotations

from tests.backends.postgres.conftest import pg_url

__all__ = ["pg_url"]
