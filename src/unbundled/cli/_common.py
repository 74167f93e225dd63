"""What every subcommand shares: the store it opens, consoles, JSON rendering."""

from __future__ import annotations

import base64
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import click
import msgspec
from rich.console import Console

from ..backends import sqlite_path
from ..errors import NotFound
from ..log import Log, Record
from ..log._protocol import SyncLevel

DEFAULT_DB = "unbundled.db"


@dataclass
class App:
    """The global options, and the log they open (once, on first use)."""

    url: str
    sync: SyncLevel
    log: Log | None = None

    def open(self, *, create: bool = False) -> Log:
        """The log. Only commands that create something may create the file:
        a mistyped ``--db`` should say so, not answer from a new empty store."""
        if self.log is None:
            if not create:
                self._check_exists()
            self.log = Log.open(self.url, sync=self.sync)
        return self.log

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def _check_exists(
        self, create_hint: str = "create a topic first (`unbundled topics create`)"
    ) -> None:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else ""
        if scheme not in ("", "sqlite"):
            return  # memory:// and server URLs: the backend decides
        path = sqlite_path(self.url)
        if not os.path.exists(path):
            raise NotFound(
                f"no database at {path!r}: {create_hint}, "
                "or choose the store with --db or UNBUNDLED_URL",
                path=path,
            )


pass_app = click.make_pass_decorator(App)


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


def stderr_is_terminal() -> bool:
    return is_terminal(sys.stderr)


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
