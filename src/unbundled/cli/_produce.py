"""``unbundled produce``: append stdin's lines to a topic, in batches."""

from __future__ import annotations

import os
import select
import stat
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from .. import limits
from ..errors import Error, PartitionNotFound, RecordTooLarge, UsageError
from ..log import Log, Message, Producer, TopicConfig
from ..log._core import check_record, check_topic_name, record_size
from ._bounds import PARTITION
from ._common import App, err_console, pass_app, stdin_is_terminal, stdout_bytes
from ._lines import LineSplitter
from ._progress import LiveLine, show_progress
from ._signals import interrupts, signal_exit_status, signum_of

_CHUNK_BYTES = 1 << 20
_BATCH_BYTES_MAX = 8 << 20  # well under limits.batch_bytes_max; keeps memory flat
_PROGRESS_DELAY_S = 0.5  # small inputs finish before a progress bar would flash
_SKIPS_SHOWN = 20  # skipped lines named one by one; the summary counts the rest


def _chunks(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Chunks of input, each with whether more is ready at once.

    When nothing more is ready the caller appends what it holds, so lines from
    a terminal or a slow pipe are durable when written, not when a batch fills.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
        fd = -1
    if fd < 0:
        while chunk := stream.read(_CHUNK_BYTES):
            yield chunk, True
        return
    while chunk := os.read(fd, _CHUNK_BYTES):
        yield chunk, _ready(fd)


def _ready(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # no select on this kind of file: batch by size only
        return True


def _input_bytes(stream: BinaryIO) -> int | None:
    """The size of a regular-file stdin (for a progress bar), else None."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


class _Status:
    """A rich progress line on stderr, started only once the input proves large."""

    def __init__(self, console: Console, enabled: bool, immediate: bool, total: int | None) -> None:
        self.console = console
        self.enabled = enabled
        self.total = total
        self.started_at = time.monotonic() - (_PROGRESS_DELAY_S if immediate else 0.0)
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.line = LiveLine(None)

    def update(self, bytes_read: int, records: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            if time.monotonic() - self.started_at < _PROGRESS_DELAY_S:
                return
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("appending"),
                BarColumn(),
                TextColumn("{task.fields[records]:,} records"),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                redirect_stdout=False,  # --print-positions writes stdout's buffer itself
            )
            self.line = LiveLine(self.progress)
            self.progress.start()
            self.task = self.progress.add_task("appending", total=self.total, records=0)
        assert self.task is not None
        self.progress.update(self.task, completed=bytes_read, records=records)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _Appender:
    """Collects records and appends them with ``append_batch`` (one transaction each)."""

    def __init__(
        self,
        log: Log,
        topic: str,
        batch_records: int,
        print_positions: bool,
        status: _Status,
        producer: Producer | None = None,
    ) -> None:
        self.log = log
        self.status = status
        self.producer = producer
        # With a producer, each batch's sequence is the number of its last
        # line: lines up to the producer's last sequence were appended before.
        self.skip_through = producer.last_sequence if producer is not None else 0
        self.skipped = 0
        self.last_line = 0
        self.topic = topic
        self.batch_records = batch_records
        self.print_positions = print_positions
        self.pending: list[bytes | Message] = []
        self.pending_bytes = 0
        self.first_line = 0
        self.records = 0
        self.partitions: set[int] = set()

    def add(self, record: bytes | Message, size: int, line: int) -> None:
        if not self.pending:
            self.first_line = line
        self.pending.append(record)
        self.pending_bytes += size
        self.last_line = line
        if len(self.pending) >= self.batch_records or self.pending_bytes >= _BATCH_BYTES_MAX:
            self.flush()

    def flush(self) -> None:
        """Append what is pending. A stop signal waits for the batch to be
        appended, counted and its positions printed, so the summary is exact."""
        if not self.pending:
            return
        with interrupts().protected():
            try:
                if self.producer is not None:
                    positions = self.producer.append_batch(
                        self.topic, self.pending, sequence=self.last_line
                    )
                else:
                    positions = self.log.append_batch(self.topic, self.pending)
            except Error:
                self.status.console.print(
                    f"[red]not appended:[/] lines {self.first_line}..."
                    f"{self.first_line + len(self.pending) - 1} (one batch; "
                    f"{self.records:,} records before them were appended)"
                )
                raise
            self.pending = []
            self.pending_bytes = 0
            self.records += len(positions)
            self.partitions.update(p.partition for p in positions)
            if self.print_positions:
                out = stdout_bytes()
                with self.status.line.writing():
                    out.write(b"".join(b"%d\t%d\n" % (p.partition, p.offset) for p in positions))
                    out.flush()


class _Parser:
    """Turns one input line into a record to append (value, key, headers, partition)."""

    def __init__(
        self,
        topic: str,
        config: TopicConfig,
        as_json: bool,
        key: bytes | None,
        key_field: str | None,
        headers: tuple[tuple[str, bytes], ...],
        partition: int | None,
    ) -> None:
        self.topic = topic
        self.config = config
        self.as_json = as_json
        self.key = key
        self.key_field = key_field
        self.headers = headers
        self.partition = partition
        self.bare = key is None and key_field is None and not headers and partition is None
        # A bare value within the size limit on a delete topic cannot fail.
        self.fast_bytes_max = config.record_bytes_max if config.cleanup_policy == "delete" else -1
        self.decoder = msgspec.json.Decoder()
        # The longest value a record of this topic can have next to the fixed
        # key and headers (a --key-field key only makes it shorter). A longer
        # line can never be appended, so it is refused before it is held
        # whole; +1 for the "\r" of a CRLF line end, which is not stored.
        self.overhead = record_size(key, b"", headers)
        self.value_bytes_max = max(config.record_bytes_max - self.overhead, 0)
        self.line_bytes_max = self.value_bytes_max + 1

    def oversize(self, number: int) -> RecordTooLarge:
        """The error for line ``number``, found longer than ``line_bytes_max``."""
        with_what = " with the key and headers" if self.overhead else ""
        return RecordTooLarge(
            f"line {number} is longer than {self.value_bytes_max:,} bytes: its record would "
            f"exceed the record_bytes_max of topic {self.topic!r} "
            f"({self.config.record_bytes_max:,} bytes{with_what})",
            topic=self.topic,
            line=number,
            record_bytes_max=self.config.record_bytes_max,
        )

    def parse(self, line: bytes, number: int) -> bytes | Message | None:
        """The record for ``line``, or None to skip it (a blank line in JSON input)."""
        key = self.key
        if self.as_json:
            line = line.strip()
            if not line:
                return None
            try:
                document = self.decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise UsageError(f"line {number}: not valid JSON ({exc})", line=number) from None
            if self.key_field is not None:
                key = self._key_of(document, number)
        if self.bare and len(line) <= self.fast_bytes_max:
            return line  # valid for sure: skip the per-record check
        try:
            # The library's own check, here so the error can name the line.
            check_record(self.topic, self.config, key, line, self.headers)
        except Error as exc:
            details = {**exc.details, "line": number}
            raise type(exc)(f"line {number}: {exc.message}", **details) from None
        if self.bare:
            return line
        return Message(line, key, self.headers, None, self.partition)

    def _key_of(self, document: Any, number: int) -> bytes | None:
        field = self.key_field
        if not isinstance(document, dict) or field not in document:
            raise UsageError(
                f"line {number}: --key-field {field!r} is missing (the line must be a JSON "
                "object with that field)",
                line=number,
            )
        value = document[field]
        if value is None:
            return None
        if isinstance(value, str):
            return value.encode("utf-8")
        return msgspec.json.encode(value)  # numbers, booleans, objects: their JSON text


def _parse_header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {text!r}", param_hint="--header")
    return name, value.encode("utf-8")


class _Skips:
    """``--on-oversize``: stop at a line too large for the topic (the default),
    or skip it, say so on stderr, and go on."""

    def __init__(self, skip: bool, console: Console) -> None:
        self.skip = skip
        self.console = console
        self.lines: list[int] = []

    def handle(self, error: RecordTooLarge, appender: _Appender) -> None:
        if not self.skip:
            appender.flush()  # the lines before the bad one are good: keep them
            raise error
        self.lines.append(error.details.get("line", 0))
        if len(self.lines) <= _SKIPS_SHOWN:
            self.console.print(f"skipped: {escape(error.message)}", soft_wrap=True)


@click.command()
@click.argument("topic")
@click.option("--key", "-k", default=None, help="Key for every record (UTF-8).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Each line must be a JSON document (object or any value); blank lines are skipped.",
)
@click.option(
    "--key-field",
    default=None,
    metavar="FIELD",
    help="With --json: take each record's key from this field of the line's object.",
)
@click.option(
    "--partition",
    "-p",
    type=PARTITION,
    metavar="P",
    default=None,
    help="Append every record to this partition (default: chosen by key hash, or sticky).",
)
@click.option(
    "--header",
    "-H",
    "header_texts",
    multiple=True,
    metavar="NAME=VALUE",
    help="Add this header to every record (repeatable).",
)
@click.option(
    "--print-positions",
    is_flag=True,
    help="Print each record's partition and offset (tab-separated) on stdout.",
)
@click.option(
    "--batch-records",
    type=click.IntRange(1, limits.batch_records_max),
    metavar="N",
    default=1000,
    show_default=True,
    help="Records per append_batch (one transaction and one sync each).",
)
@click.option(
    "--producer-id",
    metavar="ID",
    default=None,
    help="Append idempotently as this producer, each batch numbered by its last input "
    "line: run the same input again after an interruption and the lines appended "
    "before are skipped. Use one producer id per input.",
)
@click.option(
    "--on-oversize",
    type=click.Choice(["stop", "skip"]),
    default="stop",
    show_default=True,
    help="A line too large for the topic's record_bytes_max: stop there with an error "
    "(status 5), or skip it with a warning on stderr and go on. Either way it is refused "
    "as soon as it passes the limit, without reading the rest of it into memory.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress line on stderr (default: when stderr is a terminal, the input "
    "takes more than half a second, and positions are not printed to a terminal or pipe).",
)
@pass_app
def produce(
    app: App,
    topic: str,
    key: str | None,
    as_json: bool,
    key_field: str | None,
    partition: int | None,
    header_texts: tuple[str, ...],
    print_positions: bool,
    batch_records: int,
    producer_id: str | None,
    on_oversize: str,
    progress: bool | None,
) -> None:
    """Append stdin to TOPIC, one record per line.

    Each line, without its newline, is a record value; a carriage return
    before the newline (a CRLF line end) is removed too. Records are
    appended in batches; when the input pauses (a terminal, a slow pipe)
    what was read is appended at once. If a line fails (bad JSON, too
    large), every line before it that could be appended was, and nothing
    from it on (with --on-oversize skip, a too-large line is left out and
    the rest goes on). Ctrl-C or SIGTERM stops it after the batch in hand:
    the summary says what was appended, and the exit status is 130 or 143.
    """
    if key is not None and key_field is not None:
        raise click.UsageError("--key and --key-field cannot be used together")
    if key_field is not None and not as_json:
        raise click.UsageError("--key-field needs --json")
    headers = tuple(_parse_header(text) for text in header_texts)
    log = app.open()
    # Fail on an unknown topic or partition before reading any input.
    # The backend's topic_config: describe_topic may read the whole topic
    # (NATS counts its bytes that way).
    config = log.backend.topic_config(check_topic_name(topic))
    partitions = config.partitions
    if partition is not None and partition >= partitions:
        raise PartitionNotFound(
            f"topic {topic!r} has no partition {partition} (it has {partitions})",
            topic=topic,
            partition=partition,
        )
    encoded_key = None if key is None else key.encode("utf-8")
    parser = _Parser(topic, config, as_json, encoded_key, key_field, headers, partition)
    stream: BinaryIO = sys.stdin.buffer
    console = err_console()
    interactive = stdin_is_terminal()
    if interactive:
        console.print("reading records from the terminal, one per line; end with Ctrl-D")
    status = _Status(
        console,
        enabled=show_progress(progress, print_positions) and (progress or not interactive),
        immediate=bool(progress),
        total=_input_bytes(stream),
    )
    producer = log.producer(producer_id) if producer_id is not None else None
    appender = _Appender(log, topic, batch_records, print_positions, status, producer)
    skips = _Skips(on_oversize == "skip", console)
    try:
        _pump(stream, parser, appender, status, skips)
    except KeyboardInterrupt as exc:
        status.stop()
        _summary(console, appender, skips, topic, "interrupted: ")
        raise click.exceptions.Exit(signal_exit_status(signum_of(exc))) from None
    except Error:
        status.stop()
        _summary(console, appender, skips, topic, "before the error: ")
        raise
    finally:
        status.stop()
    _summary(console, appender, skips, topic)


def _pump(
    stream: BinaryIO, parser: _Parser, appender: _Appender, status: _Status, skips: _Skips
) -> None:
    """Read, split, parse and append until the input ends. Linear in the
    input, and never more than one line's limit of a line held in memory."""
    splitter = LineSplitter(parser.line_bytes_max)
    bytes_read = 0
    for chunk, more in _chunks(stream):
        bytes_read += len(chunk)
        for line in splitter.feed(chunk):
            _add(parser, appender, skips, line, splitter.number)
        if not more:
            appender.flush()
        status.update(bytes_read, appender.records + len(appender.pending))
    for line in splitter.finish():
        _add(parser, appender, skips, line, splitter.number)
    appender.flush()


def _add(
    parser: _Parser, appender: _Appender, skips: _Skips, line: bytes | None, number: int
) -> None:
    if number <= appender.skip_through:
        appender.skipped += 1  # appended by an earlier run of this producer
        return
    if line is None:
        skips.handle(parser.oversize(number), appender)
        return
    if line.endswith(b"\r"):
        line = line[:-1]  # CRLF input (documented in the help)
    try:
        record = parser.parse(line, number)
    except RecordTooLarge as exc:
        skips.handle(exc, appender)
        return
    except Error:
        appender.flush()  # the lines before the bad one are good: keep them
        raise
    if record is not None:
        appender.add(record, len(line), number)


def _summary(
    console: Console, appender: _Appender, skips: _Skips, topic: str, prefix: str = ""
) -> None:
    parts = sorted(appender.partitions)
    where = ""
    if parts:
        shown = ", ".join(map(str, parts[:16])) + (", ..." if len(parts) > 16 else "")
        where = f" (partition{'s' if len(parts) > 1 else ''} {shown})"
    plural = "" if appender.records == 1 else "s"
    skipped = ""
    if appender.skipped:
        skipped = f"; skipped {appender.skipped:,} line(s) appended before by this producer"
    if skips.lines:
        numbers = ", ".join(map(str, skips.lines[:16])) + (", ..." if len(skips.lines) > 16 else "")
        many = len(skips.lines) > 1
        skipped += (
            f"; skipped {len(skips.lines):,} line{'s' if many else ''} too large for the "
            f"topic (line{'s' if many else ''} {numbers})"
        )
    console.print(
        f"{prefix}appended {appender.records:,} record{plural} to {escape(repr(topic))}"
        f"{where}{skipped}",
        soft_wrap=True,
    )


__all__ = ["produce"]
