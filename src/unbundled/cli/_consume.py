"""``unbundled consume``: print a topic's records, alone or as a group member."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import click
from rich.console import Console
from rich.status import Status

from ..errors import Fenced, UsageError
from ..log import Consumer, Log, Record, TopicPartition
from ._bounds import PARTITION, POSITIVE, Seconds
from ._common import App, err_console, pass_app, record_line, stdout_bytes
from ._progress import LiveLine, show_progress
from ._signals import interrupts, signal_exit_status, signum_of

# cli/_events.py takes its interrupts from here; there is one per process.
_Interrupts = interrupts

_POLL_RECORDS_MAX = 500
_FOLLOW_POLL_S = 0.5  # how long one poll waits; also bounds the reaction to --timeout
_CATCH_UP_POLL_S = 0.1


class _Session:
    """One consume run: output, delivered positions, commits."""

    def __init__(self, log: Log, consumer: Consumer, as_json: bool) -> None:
        self.log = log
        self.consumer = consumer
        self.as_json = as_json
        self.status: Status | None = None
        self.line = LiveLine(None)
        self.interrupts = interrupts()
        self.out: Any = stdout_bytes()
        self.count = 0
        # Next offset per partition of what was written *and flushed*: the only
        # thing we commit, so an interrupted write is delivered again.
        self.delivered: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def emit(self, records: list[Record]) -> None:
        as_json = self.as_json
        data = b"".join(record_line(r, as_json) for r in records)
        with self.interrupts.protected(), self.line.writing():
            self.out.write(data)
            self.out.flush()
            for record in records:
                self.delivered[TopicPartition(record.topic, record.partition)] = record.offset + 1
            self.count += len(records)
        if self.status is not None:
            self.status.update(f"consumed {self.count:,} records")

    def settle(self) -> None:
        """After a poll whose records were all written out: every owned
        partition's position is delivered, including where nothing arrived.
        Committing those too (as Kafka's auto-commit does) means a group that
        started at the end resumes there next time instead of skipping ahead."""
        positions = self.consumer.positions()
        for tp in self.consumer.assignment():
            if tp in positions:
                self.delivered[tp] = positions[tp]

    def commit(self) -> None:
        """At-least-once: commit what was delivered, after it was delivered."""
        if self.consumer.group is None:
            return
        pending = {tp: o for tp, o in self.delivered.items() if self.committed.get(tp) != o}
        if not pending:
            return
        for _ in range(2):
            try:
                self.consumer.commit(pending)
            except Fenced:
                # A rebalance gave a partition to another member, which will
                # deliver those records again (at-least-once, not an error).
                # The commit is all or nothing: retry with what we still own.
                owned = self.consumer.assignment()
                for tp in [tp for tp in pending if tp not in owned]:
                    del pending[tp]
                    self.delivered.pop(tp, None)
                if not pending:
                    return
            else:
                self.committed.update(pending)
                return

    def caught_up(self) -> bool:
        """Every partition this consumer owns is read to its end."""
        positions = self.consumer.positions()
        assigned = self.consumer.assignment()
        ends = {topic: self.log.end_offsets(topic) for topic in {tp.topic for tp in assigned}}
        return all(positions.get(tp, 0) >= ends[tp.topic][tp.partition] for tp in assigned)


@click.command()
@click.argument("topics", nargs=-1, required=True)
@click.option(
    "--group",
    "-g",
    default=None,
    help="Consume as a member of this consumer group: partitions are shared with the "
    "group's other members and progress is committed as records are printed.",
)
@click.option(
    "--instance-id",
    metavar="ID",
    default=None,
    help="With --group: join as a static member under this stable name (Kafka's "
    "group.instance.id). A restart with the same ID takes the same partitions back at "
    "once, and stopping does not hand them to the others until the member's lease runs out.",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start at the oldest stored record (default: at the end, only new records). With "
    "--group this applies only to partitions the group has no committed offset for.",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep waiting for new records until Ctrl-C (default: stop when caught up).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per record: topic, partition, offset, key, value, headers, "
    "timestamp (bytes that are not UTF-8 as base64, flagged by *_encoding).",
)
@click.option(
    "--max-records",
    "-n",
    type=POSITIVE,
    metavar="N",
    default=None,
    help="Stop after this many records (with --group, exactly these are committed).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=Seconds(),
    default=None,
    metavar="SECONDS",
    help="Stop when no record arrived for this many seconds.",
)
@click.option(
    "--partition",
    "-p",
    type=PARTITION,
    metavar="P",
    default=None,
    help="Read only this partition of each topic (default: all partitions).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a live count on stderr (default: when stderr is a terminal and stdout is a "
    "file: records on a terminal, or in a pipe whose reader may print them, would mix with it).",
)
@pass_app
def consume(
    app: App,
    topics: tuple[str, ...],
    group: str | None,
    instance_id: str | None,
    from_beginning: bool,
    follow: bool,
    as_json: bool,
    max_records: int | None,
    timeout_s: float | None,
    partition: int | None,
    progress: bool | None,
) -> None:
    """Print records of TOPICS to stdout, one per line.

    Values are printed as UTF-8 text (invalid bytes replaced; a tombstone
    prints null); use --json to get every field exactly. With --group, offsets
    are committed after the records are written out (at-least-once), and Ctrl-C
    or SIGTERM leaves the group at once so its partitions move to the other
    members without waiting for the lease to expire (a static member,
    --instance-id, keeps them for its restart until its lease runs out).
    Stopped by Ctrl-C or
    SIGTERM it prints its summary and exits with status 130 or 143; stopped
    by --max-records, --timeout, catching up or a closed pipe (| head), 0.
    """
    if instance_id is not None and group is None:
        raise UsageError("--instance-id names a member of a group: give --group too")
    log = app.open()
    for topic in dict.fromkeys(topics):
        # An unknown topic is an error, not an empty result (end_offsets:
        # bounds only, where describe_topic may read the topic to count bytes).
        log.end_offsets(topic)
    consumer = log.consumer(
        list(dict.fromkeys(topics)),
        group=group,
        instance_id=instance_id,
        auto_commit=False,  # we commit what was delivered, see _Session.commit
        offset_reset="earliest" if from_beginning else "latest",
        partitions=None
        if partition is None
        else [TopicPartition(topic, partition) for topic in dict.fromkeys(topics)],
    )
    console = err_console()
    session = _Session(log, consumer, as_json)
    with contextlib.ExitStack() as stack:
        if show_progress(progress, records_to_stdout=True):
            session.status = stack.enter_context(console.status("consuming"))
            session.line = LiveLine(session.status)
        stopped, signum = _run(session, follow, max_records, timeout_s)
    _finish(session, console, group, stopped)
    if signum is not None:
        raise click.exceptions.Exit(signal_exit_status(signum))


def _run(
    session: _Session, follow: bool, max_records: int | None, timeout_s: float | None
) -> tuple[bool, int | None]:
    """Poll and print until done. Returns whether it stopped early (a signal,
    a closed pipe) and the signal, if one stopped it."""
    consumer = session.consumer
    quiet_since = time.monotonic()
    try:
        with session.interrupts.installed():
            while max_records is None or session.count < max_records:
                want = _POLL_RECORDS_MAX
                if max_records is not None:
                    want = min(want, max_records - session.count)
                wait = _FOLLOW_POLL_S if follow else _CATCH_UP_POLL_S
                if timeout_s is not None:
                    wait = max(0.0, min(wait, quiet_since + timeout_s - time.monotonic()))
                records = consumer.poll(wait, records_max=want)
                if records:
                    session.emit(records)
                session.settle()
                session.commit()
                if records:
                    quiet_since = time.monotonic()
                    continue
                if timeout_s is not None and time.monotonic() - quiet_since >= timeout_s:
                    break
                if not follow and session.caught_up():
                    break
        return False, None
    except KeyboardInterrupt as exc:
        return True, signum_of(exc)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from
        # failing again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, session.out.fileno())
        return True, None
    finally:
        try:
            session.commit()
        finally:
            consumer.close()


def _finish(session: _Session, console: Console, group: str | None, stopped: bool) -> None:
    plural = "" if session.count == 1 else "s"
    note = f", committed to group {group!r}" if group is not None else ""
    prefix = "stopped: " if stopped else ""
    console.print(f"{prefix}consumed {session.count:,} record{plural}{note}", markup=False)


__all__ = ["consume"]
