"""The seed's ``windowed_count``, made real: clicks per user per 10 seconds.

Topic ``clicks`` holds one JSON record per click, keyed by user, its
timestamp the click's event time. The flow counts each user's clicks in
tumbling 10-second windows of event time and writes every window's count to
topic ``clicks.counts`` and to SQL table ``click_counts``. A window closes
when the partition's watermark -- the newest click time seen minus the
allowed out-of-orderness (2 s) -- passes its end; a click later than that
goes to topic ``clicks-per-user.late``, never nowhere.

Run it from the shell::

    python -m unbundled.examples.windowed_count clicks.db
    unbundled --db clicks.db streams run unbundled.examples.windowed_count:flow --until-end
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from typing import Any

import unbundled
from unbundled.streams import Flow, Tumbling, WindowResult, heartbeat, run

SOURCE = "clicks"
TARGET = "clicks.counts"
TABLE = "click_counts"
WINDOW_MS = 10_000

#: The sample clicks, (user, seconds after START_MS): out of order within 2 s,
#: except one click 9 s late (after its window closed): it goes to the late topic.
CLICKS = [
    ("ada", 1), ("bob", 2), ("ada", 4), ("cy", 5), ("ada", 9),
    ("bob", 11), ("ada", 10), ("bob", 13), ("cy", 19), ("ada", 21),
    ("bob", 22), ("cy", 24), ("ada", 27), ("ada", 29), ("bob", 33),
    ("ada", 15), ("cy", 36), ("bob", 38),
]  # fmt: skip
#: The sample's first event time: a round number, so windows are [..0000, ..10000).
START_MS = 1_700_000_000_000

__all__ = ["CLICKS", "START_MS", "as_json", "flow", "main", "produce", "result_rows"]


def as_json(result: WindowResult) -> dict[str, Any]:
    """A window's count as the JSON object the topic gets."""
    return {"user": result.key, "start": result.start, "end": result.end, "clicks": result.value}


def flow() -> Flow:
    """Clicks per user in tumbling 10 s windows, into a topic and a table."""
    f = Flow("clicks-per-user", out_of_orderness_ms=2_000)
    counts = f.source(SOURCE).window(Tumbling(WINDOW_MS)).count()
    counts.to_table(TABLE)  # one row per (user, window), upserted
    counts.map(as_json).to_topic(TARGET)
    return f


def produce(db: Any, clicks: list[tuple[str, int]] = CLICKS, partitions: int = 2) -> None:
    """Append ``clicks`` to topic ``clicks`` (created if missing), then a
    heartbeat 10 s after the last one, so the last windows close too."""
    db.log.create_topic(SOURCE, partitions, exist_ok=True)
    for user, second in clicks:
        value = b'{"page": "/"}'
        db.log.append(SOURCE, value, key=user.encode(), timestamp=START_MS + second * 1000)
    last = max(second for _, second in clicks)
    heartbeat(db.log, SOURCE, START_MS + (last + WINDOW_MS // 1000 + 2) * 1000)


def result_rows(path: str) -> list[tuple[str, int, int, int]]:
    """(user, window start s, window end s, clicks) from the result table, sorted."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(f'SELECT key, start, "end", value FROM {TABLE}').fetchall()
    return sorted(
        (key, (start - START_MS) // 1000, (end - START_MS) // 1000, int(value))
        for key, start, end, value in rows
    )


def main(path: str = "windowed_count.db") -> list[tuple[str, int, int, int]]:
    """Produce the sample clicks into SQLite file ``path``, run the flow to
    the end of its input, print the result table and return its rows."""
    with unbundled.open(path) as db:
        if not db.log.topics():
            produce(db)
        report = run(db, flow(), until_end=True)
        late = db.log.end_offsets("clicks-per-user.late") if report.late else {}
    rows = result_rows(path)
    print(f"{'user':<6}{'window (s)':>12}{'clicks':>8}")
    for user, start, end, clicks in rows:
        print(f"{user:<6}{f'[{start}, {end})':>12}{clicks:>8}")
    print(f"{report.records_in} records in, {report.epochs} epoch(s), {sum(late.values())} late")
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
