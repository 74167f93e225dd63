"""Child processes for the crash and multi-process tests.

Run as ``python -m tests.crash._children <role> ...`` from the repository root.
Every child reports on stdout, one line per event, with one ``write(2)`` per
line (atomic on a pipe), and only *after* the event is durable. A child that
hits an unexpected error prints the traceback on stderr and exits with 3.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable

from unbundled import Consumer, InstanceFenced, Log, Record, StaleGeneration, TopicPartition

LIFETIME_S = 120.0  # a child the parent forgot exits on its own


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def guarded(fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(3)

    return run


def _member(
    log: Log, topic: str, group: str, member_id: str, lease_ms: int, instance_id: str
) -> Consumer:
    """A group member without auto-commit: static if ``instance_id`` (its
    member id is then generated), else named ``member_id``."""
    return log.consumer(
        topic,
        group=group,
        member_id=None if instance_id else member_id,
        instance_id=instance_id or None,
        auto_commit=False,
        lease_ms=lease_ms,
    )


def eos_member(db: str, group: str, member_id: str, lease_ms: int, instance_id: str = "") -> None:
    """Consume ``in``, append ``out:<value>`` to ``out`` and commit the input
    offsets in the same transaction: exactly-once consume-transform-produce,
    as docs/how-to/exactly-once.md writes the loop. With ``instance_id``, a
    static member (``member_id`` is then unused)."""
    deadline = time.monotonic() + LIFETIME_S
    with Log.open(db, sync="full") as log:
        consumer = _member(log, "in", group, member_id, lease_ms, instance_id)
        first = True
        while time.monotonic() < deadline:
            records = consumer.poll(0.2, records_max=37)
            if first:  # joined the group (the records, if any, are handled below)
                say("ready")
                first = False
            if not records:
                continue
            try:
                with log.transaction() as tx:
                    for record in records:
                        tx.append("out", b"out:" + (record.value or b""), key=record.key)
                    time.sleep(0.001)  # some work, so a kill often lands mid-transaction
                    tx.commit_offsets(consumer)
            except StaleGeneration:
                # Fenced: someone else owns (some of) these partitions now and
                # nothing of the transaction was written. Keep polling: the
                # consumer notices, rejoins and starts again from the
                # committed offsets.
                say("stale")
                continue
            say(f"tx {len(records)}")


def importer(db: str, count: int) -> None:
    """Append the numbered input ``line-0 .. line-<count-1>`` to ``lines`` as
    docs/how-to/exactly-once.md says to resume one: skip up to the
    producer's ``last_sequence``, send the rest in batches of 1-9 lines, each
    with the number of its last line as its sequence. Reports ``resume <n>``
    at the start, ``ack <n>`` after each batch, ``done`` at the end."""
    rng = random.Random(os.getpid())
    with Log.open(db, sync="full") as log:
        producer = log.producer("importer")
        say(f"resume {producer.last_sequence}")
        number = producer.last_sequence + 1
        while number < count:
            chunk = [b"line-%d" % n for n in range(number, min(count, number + rng.randint(1, 9)))]
            last = number + len(chunk) - 1
            if len(chunk) == 1:
                producer.append("lines", chunk[0], sequence=last)
            else:
                producer.append_batch("lines", chunk, sequence=last)
            say(f"ack {last}")
            number = last + 1
    say("done")


def appender(db: str, name: str, threads: int, count: int) -> None:
    """``threads`` threads each append ``count`` records to ``shared``, reporting each."""
    with Log.open(db, sync="full") as log:

        def write(thread: int) -> None:
            for i in range(count):
                value = f"{name}-{thread}-{i}"
                key = None if i % 3 == 0 else f"{name}-{thread}".encode()
                position = log.append("shared", value.encode(), key=key)
                say(f"ack {value} {position.partition}:{position.offset}")

        workers = [
            threading.Thread(target=guarded(functools.partial(write, t))) for t in range(threads)
        ]
        say("ready")
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    say("done")


def group_member(
    db: str, group: str, member_id: str, lease_ms: int, mode: str, instance_id: str = ""
) -> None:
    """A consumer-group member on topic ``work``; with ``instance_id``, a
    static one (its member id is then generated: ``ready <member id>`` says it).

    ``auto``: poll, report records (``got p:o``), commit, report the assignment
    whenever it changes (``own p,p,...``), forever. ``manual``: do one thing
    per command read from stdin: ``poll`` (until some records come; reports
    ``fenced <successor>`` if a newer incarnation replaced it), ``commit`` or
    ``txcommit`` (the latter in a transaction with an append to ``work.out``;
    both report ``committed`` or ``stale <partition>``), ``exit``.
    """
    deadline = time.monotonic() + LIFETIME_S
    with Log.open(db, sync="full") as log:
        consumer = _member(log, "work", group, member_id, lease_ms, instance_id)
        say(f"ready {consumer.member_id}")
        if mode == "manual":
            for line in sys.stdin:
                command = line.strip()
                if command == "poll":
                    records: list[Record] = []
                    try:
                        while not records and time.monotonic() < deadline:
                            records = consumer.poll(0.2)
                    except InstanceFenced as exc:
                        say(f"fenced {exc.details['replaced_by']}")
                        continue
                    for record in records:
                        say(f"got {record.partition}:{record.offset}")
                    say(f"polled {len(records)} " + _owned(consumer.assignment()))
                elif command in ("commit", "txcommit"):
                    try:
                        if command == "commit":
                            consumer.commit()
                        else:  # an output record and the offsets, atomically
                            with log.transaction() as tx:
                                tx.append("work.out", member_id.encode())
                                tx.commit_offsets(consumer)
                    except StaleGeneration as exc:
                        say(f"stale {exc.details.get('partition')}")
                    else:
                        say("committed")
                elif command == "exit":
                    break
            say("bye")
            return
        owned = ""
        while time.monotonic() < deadline:
            records = consumer.poll(0.1)
            for record in records:
                say(f"got {record.partition}:{record.offset}")
            try:
                consumer.commit()
            except StaleGeneration:
                # Expired while late (a loaded machine): the records go to the
                # new owner again (at-least-once) and the next poll rejoins.
                say("stale")
            now = _owned(consumer.assignment())
            if now != owned:
                owned = now
                say(f"own {owned}")


def _owned(tps: set[TopicPartition]) -> str:
    return ",".join(str(tp.partition) for tp in sorted(tps)) or "-"


def tail(db: str) -> None:
    """Follow every partition of ``tail`` without a group, reporting each record."""
    with Log.open(db, sync="full") as log:
        consumer = log.consumer("tail", offset_reset="latest")
        # The first poll sets the positions: records appended from now on are ours.
        records = consumer.poll(0.0)
        say("ready")
        deadline = time.monotonic() + LIFETIME_S
        while time.monotonic() < deadline:
            for record in records:
                say(f"got {(record.value or b'').decode()}")
            records = consumer.poll(5.0)


def create(db: str, start_at: float) -> None:
    """At wall-clock time ``start_at`` (so that several children race), open
    (maybe creating) the file, make sure topic ``t`` exists, append once."""
    time.sleep(max(0.0, start_at - time.time()))
    say("opening")
    with Log.open(db, sync="full") as log:
        log.create_topic("t", 2, exist_ok=True)
        position = log.append("t", str(os.getpid()).encode())
        say(f"ack {os.getpid()} {position.partition}:{position.offset}")


def exit_with_parent() -> None:
    """Exit if the test process dies, so a crashed test run leaves no orphans."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(4)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> None:
    exit_with_parent()
    role, *args = argv
    if role == "eos":
        guarded(lambda: eos_member(args[0], args[1], args[2], int(args[3]), *args[4:]))()
    elif role == "importer":
        guarded(lambda: importer(args[0], int(args[1])))()
    elif role == "appender":
        guarded(lambda: appender(args[0], args[1], int(args[2]), int(args[3])))()
    elif role == "member":
        guarded(lambda: group_member(args[0], args[1], args[2], int(args[3]), *args[4:]))()
    elif role == "create":
        guarded(lambda: create(args[0], float(args[1])))()
    elif role == "tail":
        guarded(lambda: tail(args[0]))()
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
