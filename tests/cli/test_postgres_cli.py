"""The log's commands on a PostgreSQL URL: what they do on a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests import matrix
from unbundled.cli import cli

pytestmark = pytest.mark.postgres


def run(url: str, *args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(cli, ["--db", url, *args], input=input, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_topics_produce_consume_groups_and_maintain(tmp_path: Path) -> None:
    with matrix.isolated("postgres", tmp_path) as url:
        run(url, "topics", "create", "orders", "--partitions", "2")
        run(url, "produce", "orders", input="a\nb\nc\n")
        out = run(url, "consume", "orders", "--from-beginning", "--group", "billing", "--json")
        assert sorted(json.loads(line)["value"] for line in out.splitlines()) == ["a", "b", "c"]
        described = json.loads(run(url, "groups", "describe", "billing", "--json"))
        assert sum(p["committed"] for p in described["partitions"]) == 3
        assert "orders" in run(url, "topics", "list")
        run(url, "maintain")
