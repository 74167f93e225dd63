"""Many small transactions share a commit on SQLite (docs/explanation/
transactions.md, guarantee 9): units from many threads are batched by the
group-commit writer, and one that conflicts is refused alone."""

from __future__ import annotations

import threading
from pathlib import Path

import unbundled
from unbundled.errors import WrongExpectedVersion
from unbundled.eventstore import NO_STREAM, Event

THREADS, EACH = 32, 10


class Noted(Event, frozen=True):
    n: int


def test_units_from_many_threads_share_commits(tmp_path: Path) -> None:
    with unbundled.open(tmp_path / "g.db", sync="normal", events=[Noted]) as db:
        db.log.create_topic("out")
        writer = db.backend._writer
        before = writer.transactions
        start = threading.Barrier(THREADS)
        conflicts: list[int] = []

        def work(thread: int) -> None:
            start.wait()
            for i in range(EACH):
                try:
                    with db.transaction() as tx:
                        # Thread 0's second unit expects a version its stream
                        # is not at: it must fail alone.
                        expected = NO_STREAM if i == 0 else (5 if thread == 0 and i == 1 else i - 1)
                        tx.append_events(f"s-{thread}", [Noted(n=i)], expected)
                        tx.append("out", b"%d" % i, key=b"%d" % thread)
                        tx.kv.write(f"k-{thread}", b"%d" % i)
                except WrongExpectedVersion:
                    conflicts.append(thread)
                    return

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        units = THREADS * EACH - (EACH - 1)  # thread 0 stopped after its conflict
        commits = writer.transactions - before
        assert conflicts == [0]
        assert sum(db.log.end_offsets("out").values()) == units
        assert len(db.events.read_all_raw(0, limit=1000)) == units
        assert commits < units, f"{units} transactions took {commits} commits: none shared"
