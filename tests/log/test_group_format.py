"""SQLite format version 5 (static group members): a version-4 file, with a
group and its members, gains ``group_members.instance_id`` when opened and
keeps everything it had."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests._formats import downgrade
from unbundled import Log, TopicPartition
from unbundled.backends.sqlite import _schema


def _columns(path: Path) -> tuple[int, set[str]]:
    raw = sqlite3.connect(path)
    try:
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in raw.execute("PRAGMA table_info(group_members)")}
    finally:
        raw.close()
    return version, columns


def test_a_version_4_file_gains_instance_ids_and_keeps_its_group(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    with Log.open(path, sync="off") as log:
        log.create_topic("t", 2)
        log.append("t", b"x", partition=0)
        member = log.consumer("t", group="g", member_id="old", auto_commit=False)
        member.poll(0.01)
        member.commit({TopicPartition("t", 0): 1})
        before = log.describe_group("g")
    downgrade(path, 4)
    version, columns = _columns(path)
    assert version == 4 and "instance_id" not in columns
    with Log.open(path, sync="off") as log:
        version, columns = _columns(path)
        assert version == _schema.FORMAT_VERSION and "instance_id" in columns
        assert log.describe_group("g") == before, "members, assignments and offsets kept"
        assert [m.instance_id for m in before.members] == [None]
        static = log.consumer("t", group="g", instance_id="w1", auto_commit=False)
        static.poll(0.01)
        ids = {m.member_id: m.instance_id for m in log.describe_group("g").members}
        assert ids == {"old": None, static.member_id: "w1"}
