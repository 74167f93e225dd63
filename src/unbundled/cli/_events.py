"""``unbundled events ...``: append, read, list streams and tail the event store.

The CLI knows no event classes, so it works with stored events as they are:
``type`` plus JSON ``data``. ``--json`` prints one JSON object per event (JSON
lines), the same shape ``events append`` reads from stdin.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import click
import msgspec
from rich.markup import escape

from .. import limits
from ..errors import UsageError
from ..eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventStore,
    Metadata,
    NewEvent,
    RecordedEvent,
    Serializer,
)
from ..eventstore import _core as es_core
from ..eventstore.api import new_event_id
from ..eventstore.subscriptions import Subscription
from ._bounds import POSITION, POSITIVE, Seconds
from ._common import App, echo_json, err_console, out_console, pass_app
from ._consume import _Interrupts
from ._event_output import Output, event_json, stored_json

ALL = "$all"
_PAGE = 1000  # events per backend read
_TAIL_WAIT_S = 0.5  # one wait for new events; also bounds the reaction to --timeout
_EXPECTED_NAMES = {"any": ANY, "no-stream": NO_STREAM, "exists": STREAM_EXISTS}
_METADATA_FIELDS = {"correlation_id", "causation_id", "user"}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def open_store(app: App, *, create: bool = False) -> EventStore:
    """The event store at ``--db``, closed when the command ends. Only
    ``append`` may create the file: a mistyped ``--db`` should say so."""
    if not create:
        app._check_exists()
    store = app.opened(lambda url: EventStore.open(url, sync=app.sync))
    click.get_current_context().call_on_close(store.close)
    return store


@click.group()
def events() -> None:
    """Append, read, list and tail events (the event store).

    \b
      unbundled events append account-1 --type Opened --data '{"owner": "ada"}'
      unbundled events read account-1
      unbundled events read '$all' --category account --json
      unbundled events subscribe --after 0
    """


# --- append ---------------------------------------------------------------------------


def parse_expected(text: str) -> int:
    named = _EXPECTED_NAMES.get(text.lower())
    if named is not None:
        return named
    try:
        version = int(text)
    except ValueError:
        version = -1
    if version < 0:
        raise UsageError(
            f"--expected-version must be any, no-stream, exists or a version >= 0, got {text!r}"
        )
    return version


class _LineEvent(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    data: Any = msgspec.field(default_factory=dict)
    id: str | None = None
    metadata: dict[str, Any] | None = None


def _new_event(kind: str, data: Any, event_id: str | None, metadata: Any) -> NewEvent:
    if not isinstance(kind, str) or not kind:
        raise UsageError("the event type must be a non-empty string")
    if not isinstance(data, dict):
        # Events are records (typed event classes decode from objects): a
        # bare list or number would be unreadable through the typed API.
        raise UsageError(f"the event data must be a JSON object, got {_encode(data)!r}")
    meta = b"{}"
    if metadata is not None:
        unknown = sorted(set(metadata) - _METADATA_FIELDS)
        if unknown:
            raise UsageError(
                f"metadata may hold {', '.join(sorted(_METADATA_FIELDS))}; "
                f"not {', '.join(unknown)} (put your own fields under user)"
            )
        try:
            meta = Serializer.encode_metadata(msgspec.convert(metadata, Metadata))
        except msgspec.ValidationError as exc:
            raise UsageError(f"bad metadata: {exc}") from None
    return NewEvent(
        es_core.check_event_id(event_id) if event_id is not None else new_event_id(),
        kind,
        _encode(data),
        meta,
    )


def stdin_events(stream: Any) -> Iterator[NewEvent]:
    """Events from JSON lines (``{"type": ..., "data": ..., "id": ...}``);
    blank lines are skipped; a bad line is an error that names it."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            item = msgspec.json.decode(line, type=_LineEvent)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UsageError(
                f"{where}: expected a JSON object with type, data and optional id, metadata: {exc}",
                line=number,
            ) from None
        try:
            yield _new_event(item.type, item.data, item.id, item.metadata)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", line=number) from None


def _batches(items: Iterator[NewEvent], size: int) -> Iterator[list[NewEvent]]:
    batch: list[NewEvent] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@events.command("append")
@click.argument("stream")
@click.option(
    "--type",
    "kind",
    metavar="T",
    default=None,
    help="The event type. Without it, events are read from stdin as JSON lines: "
    '{"type": ..., "data": ..., "id": ..., "metadata": ...} (data, id, metadata optional).',
)
@click.option(
    "--data",
    metavar="JSON",
    default="{}",
    show_default=True,
    help="The event's data, a JSON value (with --type).",
)
@click.option(
    "--expected-version",
    "expected",
    metavar="V|any|no-stream|exists",
    default="any",
    show_default=True,
    help="Append only if the stream is at version V (the first event is version 0), does not "
    "exist yet (no-stream), or exists (exists); any skips the check.",
)
@click.option(
    "--id",
    "event_id",
    metavar="UUID",
    default=None,
    help="The event id (with --type). Appending the same id and content again writes "
    "nothing and prints the original result: a retry is safe. Default: a new UUID.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_app
def events_append(
    app: App,
    stream: str,
    kind: str | None,
    data: str,
    expected: str,
    event_id: str | None,
    as_json: bool,
) -> None:
    """Append events to STREAM, durably, with an optional expected version.

    With --type, one event. Without it, every JSON line of stdin is an event;
    they are appended atomically in batches of up to 10,000 (a conflict stops
    at the batch it hit, earlier batches stay). A version mismatch exits with
    status 4 and names the stream's actual version.
    """
    es_core.check_stream_name(stream)
    expected_version = parse_expected(expected)
    if kind is not None:
        try:
            value = _decode(data)
        except msgspec.DecodeError as exc:
            raise UsageError(f"--data is not JSON: {exc}") from None
        batches = iter([[_new_event(kind, value, event_id, None)]])
    else:
        if event_id is not None or data != "{}":
            raise UsageError("--id and --data go with --type; stdin lines carry their own")
        batches = _batches(stdin_events(sys.stdin.buffer), limits.append_events_max)
    store = open_store(app, create=True)
    first: int | None = None
    last = expected_version
    positions: list[int] = []
    for batch in batches:
        result = store.append(stream, batch, last)
        if first is None:
            first = result.first_version
        # Chain the batches: each one continues exactly where the last ended.
        last = result.last_version
        positions += result.positions
    if first is None:
        raise UsageError("no events on stdin (or pass --type to append one)")
    if as_json:
        echo_json(
            {"stream": stream, "first_version": first, "last_version": last, "positions": positions}
        )
        return
    count = len(positions)
    plural = "" if count == 1 else "s"
    where = f"version {first}" if count == 1 else f"versions {first}..{last}"
    err_console().print(
        f"appended {count:,} event{plural} to {escape(repr(stream))}: {where}, "
        f"position{plural} {positions[0]}{'' if count == 1 else f'..{positions[-1]}'}"
    )


# --- read -----------------------------------------------------------------------------


def _stream_pages(
    store: EventStore, stream: str, start: int | None, limit: int | None, backwards: bool
) -> Iterator[list[RecordedEvent]]:
    version = start if start is not None else (2**62 if backwards else 0)
    left = limit
    while left is None or left > 0:
        want = _PAGE if left is None else min(left, _PAGE)
        page = store.backend.read_stream(stream, version, want, backwards)
        yield page
        if len(page) < want:
            return
        version = page[-1].version + (-1 if backwards else 1)
        if version < 0:
            return
        if left is not None:
            left -= len(page)


def _all_pages(
    store: EventStore,
    start: int,
    limit: int | None,
    categories: list[str] | None,
    types: list[str] | None,
) -> Iterator[list[RecordedEvent]]:
    after = start - 1
    left = limit
    while left is None or left > 0:
        want = _PAGE if left is None else min(left, _PAGE)
        page = store.backend.read_all(after, want, categories, types)
        yield page
        if len(page) < want:
            return
        after = page[-1].position
        if left is not None:
            left -= len(page)


def _all_pages_backwards(
    store: EventStore,
    start: int | None,
    limit: int | None,
    categories: list[str] | None,
    types: list[str] | None,
) -> Iterator[list[RecordedEvent]]:
    """``$all`` from ``start`` down: the backend reads forward only, so step
    back a window at a time and reverse each window."""
    top = store.safe_position() if start is None else min(start, store.safe_position())
    left = limit
    while top > 0 and (left is None or left > 0):
        bottom = max(0, top - _PAGE)
        window = store.backend.read_all(bottom, top - bottom, categories, types)
        page = [e for e in reversed(window) if e.position <= top]
        if left is not None:
            page = page[:left]
            left -= len(page)
        yield page
        top = bottom


@events.command("read")
@click.argument("stream", metavar="STREAM|$all")
@click.option(
    "--from",
    "start",
    type=POSITION,
    metavar="N",
    default=None,
    help="Start at this version of STREAM, or this position of $all (inclusive). Default: "
    "the first event (the last with --backwards).",
)
@click.option(
    "--limit",
    "-n",
    type=POSITIVE,
    metavar="N",
    default=None,
    help="Print at most N events. Default: all.",
)
@click.option("--backwards", is_flag=True, help="Newest first.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per event: position, stream, version, type, schema_version, id, "
    "data, metadata, recorded_ms (data that is not JSON as base64, flagged by data_encoding).",
)
@click.option(
    "--category",
    "categories",
    metavar="C",
    multiple=True,
    help="$all only: events of streams in this category (account-42 is in account). Repeatable.",
)
@click.option(
    "--type", "types", metavar="T", multiple=True, help="Only events of this type. Repeatable."
)
@pass_app
def events_read(
    app: App,
    stream: str,
    start: int | None,
    limit: int | None,
    backwards: bool,
    as_json: bool,
    categories: tuple[str, ...],
    types: tuple[str, ...],
) -> None:
    """Print the events of STREAM, or of every stream ('$all', in global order).

    A missing or soft-deleted stream exits with status 3. Reading $all stops
    at the safe position: every event below it is committed, so nothing
    printed is ever followed by an earlier event appearing later.
    """
    store = open_store(app)
    type_list = list(types) or None
    pages: Iterator[list[RecordedEvent]]
    if stream == ALL:
        cats = list(categories) or None
        if backwards:
            pages = _all_pages_backwards(store, start, limit, cats, type_list)
        else:
            pages = _all_pages(store, max(start or 1, 1), limit, cats, type_list)
    else:
        if categories:
            raise UsageError("--category filters $all; a stream has one category")
        es_core.check_stream_name(stream)
        pages = _stream_pages(store, stream, start, None if types else limit, backwards)
    output = Output(as_json)
    try:
        for page in pages:
            chosen = page
            if stream != ALL and types:
                chosen = [e for e in page if e.type in types]
            if limit is not None:
                chosen = chosen[: limit - output.count]
            output.emit(chosen)
            if limit is not None and output.count >= limit:
                break
    except BrokenPipeError:
        output.silence()


# --- streams --------------------------------------------------------------------------


@events.command("streams")
@click.option("--category", metavar="C", default=None, help="Only streams in this category.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of names.")
@pass_app
def events_streams(app: App, category: str | None, as_json: bool) -> None:
    """List live streams (not deleted), sorted by name."""
    store = open_store(app)
    names: list[str] = []
    while True:
        page = store.streams(category=category, after=names[-1] if names else "", limit=_PAGE)
        names += page
        if len(page) < _PAGE:
            break
    if as_json:
        echo_json(names)
        return
    console = out_console()
    if not names:
        console.print("no streams")
    for name in names:
        console.print(name, markup=False)


# --- subscribe ------------------------------------------------------------------------


@events.command("subscribe")
@click.option(
    "--after",
    type=POSITION,
    metavar="N",
    default=None,
    help="Print events after global position N (0: from the very first). Default: only "
    "events appended from now on.",
)
@click.option(
    "--category", "categories", metavar="C", multiple=True, help="Only this category. Repeatable."
)
@click.option("--type", "types", metavar="T", multiple=True, help="Only this type. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (see read).")
@click.option(
    "--max-events",
    "-n",
    type=POSITIVE,
    metavar="N",
    default=None,
    help="Stop after this many events.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=Seconds(),
    metavar="SECONDS",
    default=None,
    help="Stop when no event arrived for this many seconds.",
)
@pass_app
def events_subscribe(
    app: App,
    after: int | None,
    categories: tuple[str, ...],
    types: tuple[str, ...],
    as_json: bool,
    max_events: int | None,
    timeout_s: float | None,
) -> None:
    """Print events of $all as they are committed, until Ctrl-C.

    Catches up from --after, then waits for new events (appended by any
    process). On exit it prints the last position on stderr: pass it as
    --after to resume without a gap or a repeat.
    """
    store = open_store(app)
    tail = _Tail(
        store,
        store.safe_position() if after is None else after,
        list(categories) or None,
        list(types) or None,
    )
    output = Output(as_json)
    interrupted = tail.run(output, max_events, timeout_s)
    plural = "" if output.count == 1 else "s"
    prefix = "stopped: " if interrupted else ""
    err_console().print(
        f"{prefix}received {output.count:,} event{plural}; resume with --after {tail.position}",
        markup=False,
    )


class _Tail:
    """A library :class:`Subscription` printed until done. Its position (the
    resume point printed at exit) never passes an event not written out: a
    batch is at most what ``--max-events`` still allows."""

    def __init__(
        self,
        store: EventStore,
        after: int,
        categories: list[str] | None,
        types: list[str] | None,
    ) -> None:
        self.store = store
        self.categories = categories
        self.types = types
        self.batch_size = _PAGE
        self.subscription = self._subscribe(after, _PAGE)

    def _subscribe(self, after: int, batch_size: int) -> Subscription:
        self.batch_size = batch_size
        return Subscription(
            self.store,
            after,
            categories=self.categories,
            types=self.types,
            batch_size=batch_size,
        )

    @property
    def position(self) -> int:
        return self.subscription.position

    def run(self, output: Output, max_events: int | None, timeout_s: float | None) -> bool:
        """Poll and print; True if interrupted (Ctrl-C, SIGTERM, closed pipe)."""
        interrupts = _Interrupts()
        quiet_since = time.monotonic()
        try:
            with interrupts.installed():
                while max_events is None or output.count < max_events:
                    wanted = _PAGE if max_events is None else min(_PAGE, max_events - output.count)
                    if wanted != self.batch_size:
                        # Near the end: batches no larger than what is still wanted.
                        self.subscription = self._subscribe(self.position, wanted)
                    wait = _TAIL_WAIT_S
                    if timeout_s is not None:
                        left = quiet_since + timeout_s - time.monotonic()
                        if left <= 0:
                            break
                        wait = min(wait, left)
                    events = self.subscription.poll(wait)
                    if events:
                        with interrupts.protected():
                            output.emit_stored(events)
                        quiet_since = time.monotonic()
            return False
        except KeyboardInterrupt:
            return True
        except BrokenPipeError:
            output.silence()
            return True


__all__ = ["event_json", "events", "open_store", "parse_expected", "stored_json"]
