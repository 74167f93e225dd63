"""New event ids: UUIDv7, unique, and never repeated by a forked child
(the random bytes come from a pool that a child starts without)."""

from __future__ import annotations

import os
import uuid

from unbundled.eventstore._base import new_event_id


def test_ids_are_version_7_and_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_event_id()  # the pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, ",".join(new_event_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split(",")
    os.close(read)
    parent = [new_event_id() for _ in range(8)]
    assert status == 0 and len(child) == 8
    # The random part (after the millisecond timestamp) must differ.
    assert not {c[14:] for c in child} & {p[14:] for p in parent}
