"""What every subcommand shares: the store it opens, consoles, JSON rendering."""

from __future__ import annotations

import base64
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console

from .._ground import SyncLevel
from ..backends import (
    EVENTS,
    IDEMPOTENCY,
    KV,
    LOG,
    SERVES,
    URL_FORMS,
    url_scheme,
    urls_serving,
)
from ..backends.sqlite._url import check_sqlite_path, read_only_url, sqlite_path
from ..errors import NotFound, NotSupported
from ..log import Log, Record

T = TypeVar("T")

DEFAULT_DB = "unbundled.db"

#: What each top-level command works on, which decides the stores it takes.
COMMAND_STORES = {
    "topics": LOG,
    "produce": LOG,
    "consume": LOG,
    "groups": LOG,
    "maintain": LOG,
    "events": EVENTS,
    "projections": EVENTS,
    "idempotency": IDEMPOTENCY,
    "kv": KV,
    "cdc": LOG,
    "streams": LOG,
}
# The commands that only read: they open a SQLite file read-only, so they
# work on a read-only file system and never write (not even maintenance).
# `consume` reads only without --group (a group member commits offsets).
_READ_ONLY_COMMANDS = {
    "topics list",
    "topics describe",
    "groups list",
    "groups describe",
    "consume",
    "events read",
    "events streams",
    "events subscribe",
    "projections status",
    "idempotency show",
    "idempotency list",
    "kv get",
}
# What to do when a read command finds no database file.
_CREATE_HINTS = {
    LOG: "create a topic first (`unbundled topics create`)",
    EVENTS: "append an event first (`unbundled events append`)",
    IDEMPOTENCY: "nothing has stored idempotency keys there yet (your application "
    "does, through Idempotency.open)",
    KV: "write a key first (`unbundled kv put`)",
}


def db_help() -> str:
    """The ``--db`` help: which stores every command takes, from :data:`SERVES`."""
    servers = []
    for scheme, serves in SERVES.items():
        if scheme in ("sqlite", "memory"):
            continue
        commands = [name for name, what in COMMAND_STORES.items() if what in serves]
        servers.append(f"{URL_FORMS[scheme]} for {', '.join(commands)}")
    return (
        "The store. Every command takes a SQLite file (PATH or sqlite:///PATH; add ?mode=ro "
        "to open it read-only) or memory:// (empty, for trying out); servers: "
        + "; ".join(servers)
        + "."
    )


@dataclass
class App:
    """The global options, and the log they open (once, on first use)."""

    url: str
    sync: SyncLevel
    log: Log | None = None
    command: str = ""  # the command running ("events read"), set by pass_app
    store: str = LOG  # what it works on: one of SERVES' values
    given_url: str = ""  # --db as given, before a read-only command's ?mode=ro

    def enter(self, command: str, params: dict[str, Any]) -> None:
        """Before ``command`` runs: refuse a store that does not serve it, and
        open a SQLite file read-only for a command that only reads."""
        self.command = command
        top = command.split(" ", 1)[0]
        self.store = COMMAND_STORES.get(top, LOG)
        scheme = url_scheme(self.url)
        if top in COMMAND_STORES and scheme in SERVES and self.store not in SERVES[scheme]:
            raise NotSupported(
                f"`unbundled {command}` works on {self.store}, which {scheme}:// does not "
                f"serve; it takes {urls_serving(self.store)}",
                url=self.url,
                command=command,
            )
        reads_only = command in _READ_ONLY_COMMANDS and params.get("group") is None
        self.given_url = self.url
        if reads_only:
            self.url = read_only_url(self.url)

    def opened(self, open_url: Callable[[str], T]) -> T:
        """``open_url(self.url)``. A read-only open of a file in an older
        format is refused (reading it needs the upgrade, which writes): the
        read-only choice was ours, not the user's, so open it as given."""
        try:
            return open_url(self.url)
        except NotSupported as exc:
            if not exc.details.get("upgrade") or self.url == self.given_url:
                raise
            self.url = self.given_url
            return open_url(self.url)

    def open(self, *, create: bool = False) -> Log:
        """The log. Only commands that create something may create the file:
        a mistyped ``--db`` should say so, not answer from a new empty store."""
        if self.log is None:
            if not create:
                self._check_exists()
            self.log = self.opened(lambda url: Log.open(url, sync=self.sync))
        return self.log

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def _check_exists(self, create_hint: str | None = None) -> None:
        """A read of a SQLite file that is not there: say so, and how to make one."""
        if url_scheme(self.url) != "sqlite":
            return  # memory:// and server URLs: the backend decides
        path = sqlite_path(self.url)
        if not os.path.exists(path) and os.path.isdir(os.path.dirname(path) or "."):
            hint = create_hint or _CREATE_HINTS[self.store]
            raise NotFound(
                f"no database at {path!r}: {hint}, or choose the store with --db or UNBUNDLED_URL",
                path=path,
            )
        check_sqlite_path(path, must_exist=True)  # a directory, a missing directory


def pass_app(f: Callable[..., Any]) -> Callable[..., Any]:
    """Like ``click.make_pass_decorator(App)``, and first :meth:`App.enter`
    the command (which checks that the store serves it)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        app = ctx.find_object(App)
        assert app is not None, "the root command makes the App"
        app.enter(_command_path(ctx), ctx.params)
        return ctx.invoke(f, app, *args, **kwargs)

    return functools.update_wrapper(wrapper, f)


def _command_path(ctx: click.Context) -> str:
    """``"events read"`` for ``unbundled events read``: the path below the root."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def out_console() -> Console:
    """Rich output for humans on stdout (resolved at call time, so tests can capture it)."""
    return Console(highlight=False)


def err_console() -> Console:
    # soft_wrap: an error message is one line however narrow the terminal.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_bytes() -> Any:
    """The binary stdout, for record output (no text-layer encoding per line)."""
    return sys.stdout.buffer


def bytes_json(raw: bytes) -> dict[str, Any]:
    """Stored bytes in JSON output: as JSON when they are JSON (``"encoding":
    "json"``), else UTF-8 text, else base64."""
    try:
        return {"value": msgspec.json.decode(raw), "encoding": "json"}
    except msgspec.DecodeError:
        pass
    try:
        return {"value": raw.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(raw).decode("ascii"), "encoding": "base64"}


def echo_json(data: Any) -> None:
    """One JSON document on stdout, and nothing else there."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def stdin_is_terminal() -> bool:
    return is_terminal(sys.stdin)


def _put_bytes(out: dict[str, Any], name: str, data: bytes | None) -> None:
    """``data`` as text when it is UTF-8, else base64 flagged by ``<name>_encoding``."""
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name] = base64.b64encode(data).decode("ascii")
        out[f"{name}_encoding"] = "base64"


def record_json(record: Record) -> dict[str, Any]:
    """The ``--json`` form of a record: bytes as UTF-8 text when valid, else
    base64 with an ``*_encoding: "base64"`` field beside it."""
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    _put_bytes(out, "key", record.key)
    _put_bytes(out, "value", record.value)
    headers = []
    for name, value in record.headers:
        header: dict[str, Any] = {"name": name}
        _put_bytes(header, "value", value)
        if "value_encoding" in header:
            header["encoding"] = header.pop("value_encoding")
        headers.append(header)
    out["headers"] = headers
    out["timestamp"] = record.timestamp
    return out


_encode = msgspec.json.Encoder().encode


def record_line(record: Record, as_json: bool) -> bytes:
    """One output line: the JSON object, or the value as UTF-8 text. A
    tombstone (no value) prints ``null``, as Kafka's console consumer does."""
    if as_json:
        return _encode(record_json(record)) + b"\n"
    if record.value is None:
        return b"null\n"
    return record.value.decode("utf-8", "replace").encode("utf-8") + b"\n"


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)
