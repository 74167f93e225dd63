"""The least work of the streams benchmark's case 1 (``bench/streams_bench.py``)."""

from __future__ import annotations

import collections
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

import unbundled
from unbundled.log import Message

LOAD_BATCH = 50_000


def load_clicks(db: Any, messages: list[Message], partitions: int) -> None:
    """The benchmark's input, not timed: topic ``clicks`` filled in batches."""
    db.log.create_topic("clicks", partitions=partitions)
    for at in range(0, len(messages), LOAD_BATCH):
        db.log.append_batch("clicks", messages[at : at + LOAD_BATCH])


def least_work(
    parent: Path, messages: list[Message], window_ms: int, partitions: int
) -> tuple[float, set[tuple[str, int, int]]]:
    """The least any engine on this log does for case 1: read the topic from the same
    SQLite file in polls of 5,000 records, decode every value (msgspec, as the flow's
    source does) and count per (key, window) with ``collections.Counter``: no state
    store, epochs, watermark, late check or output records. Its rate is the ceiling of
    a pure-Python engine over this log. Loading the topic is not timed."""
    scratch = Path(tempfile.mkdtemp(prefix="streamsbench-least-", dir=parent))
    try:
        with unbundled.open(str(scratch / "streams.db")) as db:
            load_clicks(db, messages, partitions)
            decode = msgspec.json.Decoder().decode
            counts: collections.Counter[tuple[bytes | None, int]] = collections.Counter()
            started = time.perf_counter()
            for partition in range(partitions):
                offset = 0
                while records := db.log.read("clicks", partition, offset, records_max=5_000):
                    offset = records[-1].offset + 1
                    for record in records:
                        decode(record.value or b"null")
                    counts.update([(r.key, r.timestamp - r.timestamp % window_ms) for r in records])
            seconds = time.perf_counter() - started
        windows = {((k or b"").decode(), start, n) for (k, start), n in counts.items()}
        return seconds, windows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
