"""``unbundled streams ...``: run a flow, and look after its state.

`streams run MODULE:ATTR` imports your flow the way ``uvicorn app:app`` imports
an app (the current directory first on ``sys.path``) and runs it as one
worker of its consumer group (``unbundled.streams.run``) until Ctrl-C or
SIGTERM, which finish the current step and stop (uncommitted work is redone
by the next run: nothing is lost or repeated). `streams status NAME` shows
each partition's committed offset, lag, watermark and state from the
manifests; `streams reset NAME` forgets the state and rewinds the group;
`streams heartbeat TOPIC` moves idle partitions' watermarks.

Each command takes ``--db`` after its name too (``streams run app:flow --db
x.db``); it overrides the global ``--db``/``UNBUNDLED_URL``.
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click
import msgspec
from rich import box
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from .. import limits
from ..database import Database
from ..database import open as open_database
from ..errors import ConflictError, NotFound, UsageError
from ..log._protocol import TopicPartition
from ..streams import Flow, heartbeat
from ..streams import run as run_flow
from ..streams._ops import NO_TIME
from ..streams._runner import Key, RunReport
from ..streams._store import group_name, read_manifest, segments
from ..streams._store import reset as reset_flow
from ._bounds import Seconds
from ._common import App, echo_json, err_console, out_console, pass_app
from ._progress import show_progress
from ._signals import signum_of


def _group(name: str) -> str:
    """Flow ``name``'s consumer group (what ``unbundled.streams.run`` joins)."""
    return f"streams.{name}"


def _db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_url",
        default=None,
        metavar="PATH|URL",
        help="The store (default: the global --db, UNBUNDLED_URL or unbundled.db).",
    )(f)


def _database(app: App, db_url: str | None, hint: str) -> Database:
    """The database at ``--db`` (the command's, else the global one); a
    SQLite file must exist already (``hint`` says how to make one)."""
    if db_url is not None:
        app.url = db_url
        app.enter(app.command, {})  # check again that this store serves the command
    app._check_exists(hint)
    db = app.opened(lambda url: open_database(url, sync=app.sync))
    click.get_current_context().call_on_close(db.close)
    return db


@click.group()
def streams() -> None:
    """Stream processing: run flows over topics, exactly once, and manage their state.

    A flow (unbundled.streams.Flow) is defined in your Python module; its
    state (key-value entries streams/NAME/...) and its consumer group
    (streams.NAME) live in the store beside the log, and every epoch commits
    outputs, state and input offsets in one transaction: SQLite, PostgreSQL
    and memory:// (not NATS, whose writes cannot share a transaction).

    \b
      unbundled --db clicks.db streams run myapp.flows:clicks --until-end
      unbundled --db clicks.db streams status clicks-per-user
      unbundled --db clicks.db streams heartbeat clicks     # close idle windows
      unbundled --db clicks.db streams reset clicks-per-user --yes
    """


# --- loading the user's flow ---------------------------------------------------


def load_flow(target: str) -> Flow:
    """The :class:`Flow` that ``MODULE:ATTR`` names: ATTR is a Flow or a
    function of no arguments returning one (a dotted ATTR looks inside)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{target!r} is not MODULE:ATTR (for example myapp.flows:clicks)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` and uvicorn do
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise UsageError(f"importing {module_name!r} failed: {exc}") from exc
        raise NotFound(
            f"no module {module_name!r} (looked in the current directory and sys.path)",
            module=module_name,
        ) from None
    except Exception as exc:
        raise UsageError(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}", module=module_name
        ) from exc
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise NotFound(f"module {module_name!r} has no attribute {attr!r}", attr=attr)
        found = getattr(found, part)
    if callable(found) and not isinstance(found, Flow):
        found = _call_factory(target, found)
    if not isinstance(found, Flow):
        raise UsageError(
            f"{target} is a {type(found).__name__}, not an unbundled.streams.Flow "
            "(or a function returning one)",
            value=target,
        )
    return found


def _required(factory: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _call_factory(target: str, factory: Callable[..., Any]) -> Any:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise UsageError(
            f"{target} must be a Flow or a function of no arguments returning one; "
            f"it needs arguments ({', '.join(_required(factory))})",
            value=target,
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin): just call it
    try:
        return factory()
    except Exception as exc:
        raise UsageError(f"{target}() raised {type(exc).__name__}: {exc}", value=target) from exc


# --- run -------------------------------------------------------------------------


def _wm_text(wm: int) -> str:
    if wm == NO_TIME:
        return "-"
    moment = datetime.datetime.fromtimestamp(wm / 1000, datetime.UTC)
    return moment.isoformat(" ", timespec="milliseconds").removesuffix("+00:00")


class _Progress:
    """What the live line shows; written by the runner's thread after each
    epoch, read by the main thread (one assignment of a tuple: no lock)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.seen: tuple[RunReport, dict[int, int]] = (RunReport(), {})

    def on_epoch(self, report: RunReport, tasks: dict[Key, Any]) -> None:
        wms = {p: t.wm for (g, p), t in tasks.items() if g == 0}  # the source's
        self.seen = (msgspec.structs.replace(report), wms)

    def line(self) -> str:
        report, wms = self.seen
        rate = report.records_in / max(time.monotonic() - self.started, 1e-9)
        shown = sorted(wms.items())[:4]
        marks = ", ".join(f"p{p} {_wm_text(wm)}" for p, wm in shown)
        if len(wms) > len(shown):
            marks += f", ... (min {_wm_text(min(wms.values()))})"
        return (
            f"streams {self.name}: {report.records_in:,} records, {rate:,.0f}/s, "
            f"{report.epochs:,} epochs, late {report.late:,}, dead {report.dead:,}; "
            f"watermark {marks or '-'}"
        )


def _summary(name: str, report: RunReport, stopped: str | None) -> str:
    verb = f"stopped ({stopped})" if stopped else "done"
    return (
        f"{verb}: flow {name}: {report.records_in:,} records in, {report.records_out:,} out, "
        f"{report.epochs:,} epochs, {report.late:,} late, {report.dead:,} dead, "
        f"partitions {report.partitions or '-'} in {report.seconds:.1f} s"
    )


@streams.command("run")
@click.argument("target", metavar="MODULE:ATTR")
@_db_option
@click.option(
    "--instance-id",
    default=None,
    help="A static member name: a restart with the same id takes its partitions back at once.",
)
@click.option(
    "--until-end",
    is_flag=True,
    help="Stop once this worker's partitions are read up to where they ended at the start.",
)
@click.option(
    "--epoch-records",
    type=click.IntRange(1, limits.stream_epoch_records_max),
    default=10_000,
    show_default=True,
    help="Commit an epoch after this many input records.",
)
@click.option(
    "--epoch-interval",
    "epoch_interval_s",
    type=Seconds(0.001),
    default=1.0,
    show_default=True,
    help="Commit an epoch after this many seconds.",
)
@click.option(
    "--epoch-event-ms",
    type=click.IntRange(1, limits.stream_window_ms_max),
    default=None,
    help="Commit an epoch when a watermark moved this many ms of event time.",
)
@click.option(
    "--poll-records",
    type=click.IntRange(1, limits.poll_records_max),
    default=5000,
    show_default=True,
    help="Records fetched per poll.",
)
@click.option(
    "--lease",
    "lease_s",
    type=Seconds(limits.lease_ms_min / 1000, limits.lease_ms_max / 1000),
    default=10.0,
    show_default=True,
    help="Seconds the group waits for a silent worker before giving its partitions away.",
)
@click.option(
    "--heartbeat",
    "heartbeat_s",
    type=Seconds(0.01),
    default=None,
    help="Every this many seconds, write the clock's time into this worker's source "
    "partitions, so windows of idle partitions close (only where event time follows "
    "the clock).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show the live status line on stderr [default: when stderr is a terminal].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's totals as JSON at the end.")
@pass_app
def run_command(
    app: App,
    target: str,
    db_url: str | None,
    instance_id: str | None,
    until_end: bool,
    epoch_records: int,
    epoch_interval_s: float,
    epoch_event_ms: int | None,
    poll_records: int,
    lease_s: float,
    heartbeat_s: float | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Run the flow MODULE:ATTR (a Flow, or a function returning one) as one
    worker of its group until Ctrl-C or SIGTERM (or, with --until-end, until
    it has caught up). Start more workers, in other processes or on other
    hosts, to share the partitions; run it again to go on where it stopped."""
    flow = load_flow(target)
    db = _database(app, db_url, "produce to the flow's source topic first (`unbundled produce`)")
    seen = _Progress(flow.name)
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    # The main thread waits on an Event, not Thread.join: a join cut short by
    # the signal's exception can leave the thread looking finished (before 3.13).
    done = threading.Event()

    def work() -> None:
        try:
            outcome["report"] = run_flow(
                db,
                flow,
                instance_id=instance_id,
                until_end=until_end,
                epoch_records=epoch_records,
                epoch_event_ms=epoch_event_ms,
                epoch_interval_s=epoch_interval_s,
                heartbeat_s=heartbeat_s,
                poll_records=poll_records,
                lease_ms=round(lease_s * 1000),
                stop=stop,
                on_epoch=seen.on_epoch,
            )
        except BaseException as exc:  # heard: re-raised in the main thread below
            outcome["error"] = exc
        finally:
            done.set()

    live = Status("starting", console=err_console()) if show_progress(progress, False) else None
    worker = threading.Thread(target=work, name=f"streams-run-{flow.name}", daemon=True)
    stopped: str | None = None
    worker.start()
    if live is not None:
        live.start()
    try:
        try:
            while not done.wait(0.25):
                if live is not None:
                    live.update(seen.line())
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: finish the step, then stop
            stopped = {2: "SIGINT", 15: "SIGTERM"}.get(signum_of(exc), "signal")
            stop.set()
            if live is not None:
                live.update(f"stopping ({stopped}): finishing the current step")
            done.wait()
    finally:
        if live is not None:
            live.stop()
    if "error" in outcome:
        raise outcome["error"]
    report: RunReport = outcome["report"]
    if as_json:
        echo_json({"flow": flow.name, "stopped": stopped, **msgspec.to_builtins(report)})
    else:
        err_console().print(_summary(flow.name, report, stopped))


# --- status ----------------------------------------------------------------------


def _flow_partitions(db: Database, name: str) -> dict[int, tuple[int | None, int, int]]:
    """``(committed, end, lag)`` per source partition of flow ``name``, from its group."""
    group = _group(name)
    try:
        lag = db.log.lag(group)
    except NotFound:
        raise NotFound(
            f"no flow {name!r} has run on this store (no consumer group {group!r})", flow=name
        ) from None
    topics = sorted({tp.topic for tp in lag})
    if len(topics) > 1:  # a flow reads one topic; another consumer used the group's name
        raise ConflictError(f"group {group!r} reads {topics}: not a flow's group", group=group)
    return {tp.partition: got for tp, got in lag.items()}


def _status_rows(db: Database, name: str) -> list[dict[str, Any]]:
    rows = []
    for p, (committed, end, lag) in sorted(_flow_partitions(db, name).items()):
        manifest = read_manifest(db, name, p)
        row: dict[str, Any] = {"partition": p, "committed": committed, "end": end, "lag": lag}
        if manifest is None:
            row.update(state=False, offset=None, watermark=None, records=0, late=0, dead=0)
            row.update(buckets=0, keys=0, timers=0)
        else:
            row.update(
                state=True,
                offset=manifest.offset,
                watermark=None if manifest.wm == NO_TIME else manifest.wm,
                records=manifest.records,
                late=manifest.late,
                dead=manifest.dead,
                buckets=len(manifest.stored),
                keys=manifest.keys,
                timers=manifest.timers,
            )
        rows.append(row)
    return rows


def _segments(db: Database, name: str) -> list[dict[str, Any]]:
    """The downstream segments (after a repartitioning key_by): their topic,
    lag, and state summed over partitions."""
    out = []
    for g in segments(db, name)[1:]:
        try:
            lag = db.log.lag(group_name(name, g))
        except NotFound:
            continue
        manifests = [read_manifest(db, name, tp.partition, g) for tp in lag]
        stored = [m for m in manifests if m is not None]
        wms = [m.wm for m in stored if m.wm != NO_TIME]
        out.append(
            {
                "segment": g,
                "topic": next(iter(lag)).topic,
                "lag": sum(got[2] for got in lag.values()),
                "records": sum(m.records for m in stored),
                "late": sum(m.late for m in stored),
                "keys": sum(m.keys for m in stored),
                "timers": sum(m.timers for m in stored),
                "watermark": min(wms) if len(wms) == len(manifests) and wms else None,
            }
        )
    return out


def _workers(db: Database, name: str) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    info = db.log.describe_group(_group(name))
    return [
        {
            "member_id": m.member_id,
            "instance_id": m.instance_id,
            "partitions": sorted(tp.partition for tp in m.partitions),
            "lease_left_s": round(max(0, m.lease_until_ms - now_ms) / 1000, 1),
        }
        for m in info.members
        if m.lease_until_ms > now_ms
    ]


@streams.command()
@click.argument("name")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def status(app: App, name: str, db_url: str | None, as_json: bool) -> None:
    """Show flow NAME per source partition: the group's committed offset
    (OFFSET) and lag, and from the stored state its offset, watermark, records, late and
    dead records, and state (keys, in how many buckets).

    LAG is the records still to process. A watermark is event time (UTC):
    windows ending before it have closed."""
    db = _database(app, db_url, "no flow has run there yet")
    rows = _status_rows(db, name)
    workers = _workers(db, name)
    downstream = _segments(db, name)
    if as_json:
        echo_json(
            {
                "flow": name,
                "group": _group(name),
                "workers": workers,
                "partitions": rows,
                "segments": downstream,
            }
        )
        return
    console = out_console()
    total = sum(r["lag"] for r in rows)
    console.print(
        f"[bold]{escape(name)}[/]  group streams.{escape(name)}, "
        f"{len(workers)} live worker(s), lag {total:,}"
    )
    # Simple box, no outer padding: the table fits 80 columns.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header in ("part", "offset", "lag", "records", "late", "dead", "keys", "timers"):
        table.add_column(header, justify="right", min_width=len(header))
    table.add_column("watermark (UTC)", no_wrap=True)
    for r in rows:
        numbers = [r["lag"], r["records"], r["late"], r["dead"], r["keys"], r["timers"]]
        table.add_row(
            str(r["partition"]),
            "-" if r["committed"] is None else f"{r['committed']:,}",
            *(f"{n:,}" for n in numbers),
            "-" if r["watermark"] is None else _wm_text(r["watermark"]),
        )
    console.print(table)
    for d in downstream:  # after a repartitioning key_by: one line each
        wm = "-" if d["watermark"] is None else _wm_text(d["watermark"])
        console.print(
            f"after key_by #{d['segment']} ({escape(d['topic'])}): lag {d['lag']:,}, "
            f"records {d['records']:,}, late {d['late']:,}, keys {d['keys']:,}, "
            f"timers {d['timers']:,}, watermark {wm}"
        )


# --- reset -----------------------------------------------------------------------


@streams.command()
@click.argument("name")
@_db_option
@click.option("--yes", is_flag=True, help="Really reset (without it, nothing is changed).")
@click.option("--json", "as_json", is_flag=True, help="Print what was reset as JSON.")
@pass_app
def reset(app: App, name: str, db_url: str | None, yes: bool, as_json: bool) -> None:
    """Forget flow NAME's progress: delete its state (manifests and buckets)
    and rewind its group's offsets to the start of each partition, in one
    transaction. The next run reprocesses the whole topic, and its outputs to
    topics are appended again (topics are logs: nothing is taken back).
    Refused while a worker of the flow is alive."""
    db = _database(app, db_url, "no flow has run there yet")
    _flow_partitions(db, name)  # NotFound for a flow that never ran
    workers = _workers(db, name)
    if workers:
        ids = ", ".join(w["instance_id"] or w["member_id"] for w in workers)
        wait = max(w["lease_left_s"] for w in workers)
        raise ConflictError(
            f"flow {name!r} has {len(workers)} live worker(s) ({ids}); stop them first "
            f"(a stopped worker's lease ends within {wait} s)",
            flow=name,
        )
    if not yes:
        raise UsageError(
            f"resetting flow {name!r} deletes its state and rewinds group streams.{name} "
            "to the start: pass --yes to do it"
        )
    group = _group(name)
    topic = next(iter(db.log.lag(group)), TopicPartition("", 0)).topic
    deleted, moved = reset_flow(db, name)
    done = {"flow": name, "group": group, "keys_deleted": deleted, "rewound": moved}
    if as_json:
        echo_json(done)
    else:
        click.echo(
            f"reset flow {name}: deleted {deleted} state keys, rewound {moved} "
            f"partition(s) of {topic} (and its repartition topics) to their start"
        )


# --- heartbeat -------------------------------------------------------------------


@streams.command("heartbeat")
@click.argument("topic")
@_db_option
@click.option(
    "--time",
    "time_ms",
    type=click.IntRange(0, limits.timestamp_ms_max),
    default=None,
    help="The event time (ms since the epoch) it stands for [default: now].",
)
@pass_app
def heartbeat_command(app: App, topic: str, db_url: str | None, time_ms: int | None) -> None:
    """Append a heartbeat record to every partition of TOPIC: each partition's
    watermark moves as if an event of that time had arrived, so the windows of
    idle partitions close. It is in the log, so a replay sees it too."""
    db = _database(app, db_url, "create the topic first (`unbundled topics create`)")
    ms = int(time.time() * 1000) if time_ms is None else time_ms
    heartbeat(db.log, topic, ms)
    partitions = len(db.log.describe_topic(topic).partitions)
    click.echo(f"heartbeat {ms} ({_wm_text(ms)}) appended to {partitions} partition(s) of {topic}")
