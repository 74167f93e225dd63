"""The log's reads on PostgreSQL believe no row unchecked: a record whose
bytes changed fails its CRC, a record missing from a ``delete`` topic is
damage (not a gap), and compaction's gaps are read past."""

from __future__ import annotations

import psycopg
import pytest

from tests.backends.postgres.conftest import server_url
from unbundled import CorruptionError, Log, Message

pytestmark = pytest.mark.postgres


def damage(pg_url: str, sql: str) -> None:
    schema = pg_url.rpartition("schema=")[2]
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(sql.format(s=f'"{schema}"'))


def test_a_changed_record_fails_its_checksum(pg_url: str) -> None:
    with Log.open(pg_url, sync="normal") as log:
        log.create_topic("t")
        log.append_batch("t", [b"one", b"two", b"three"])
        damage(pg_url, """UPDATE {s}.log_records SET value = 'tw0' WHERE "offset" = 1""")
        assert [r.value for r in log.read("t", 0, 0, records_max=1)] == [b"one"]
        # The read stops before the damage; the one that starts there raises.
        assert [r.value for r in log.read("t", 0, 0)] == [b"one"]
        with pytest.raises(CorruptionError) as raised:
            log.read("t", 0, 1)
        assert raised.value.details["offset"] == 1 and "checksum" in raised.value.message


def test_a_missing_record_is_damage_not_a_gap(pg_url: str) -> None:
    with Log.open(pg_url, sync="normal") as log:
        log.create_topic("t")
        log.append_batch("t", [b"one", b"two", b"three"])
        damage(pg_url, """DELETE FROM {s}.log_records WHERE "offset" IN (1, 2)""")
        with pytest.raises(CorruptionError, match="missing"):
            log.read("t", 0, 1)
        with pytest.raises(CorruptionError, match="missing"):
            log.read("t", 0, 0, records_max=5)


def test_compaction_leaves_gaps_that_reads_accept(pg_url: str) -> None:
    with Log.open(pg_url, sync="normal") as log:
        log.create_topic("k", cleanup_policy="compact")
        log.append_batch("k", [Message(b"%d" % n, key=b"abc"[n % 3 : n % 3 + 1]) for n in range(7)])
        assert log.maintain().removed == {"k": 4}
        assert [(r.offset, r.value) for r in log.read("k")] == [(4, b"4"), (5, b"5"), (6, b"6")]
        assert log.describe_topic("k").partitions[0].start_offset == 0  # compaction keeps it
