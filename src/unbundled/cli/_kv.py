"""``unbundled kv ...``: the linearizable key-value store from the shell.

Made for scripts as much as for people: ``get`` prints the value alone (or
JSON with ``--json``), and the exit status carries the answer: 3 when the
key is absent, 4 when a compare-and-set did not match. A lock in a shell
script::

    unbundled kv cas deploy-lock "$HOST" --absent || exit 1   # taken: status 4
    ...
    unbundled kv delete deploy-lock
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..consistency import KV
from ..errors import ConflictError, NotFound, UsageError
from ._bounds import POSITION
from ._common import App, bytes_json, echo_json, pass_app


def _open(app: App, *, create: bool) -> KV:
    """The store at ``--db``, closed when the command ends. Only a change may
    create a SQLite file: a mistyped ``--db`` must not read as "absent"."""
    if not create:
        app._check_exists()
    store = app.opened(lambda url: KV.open(url, sync=app.sync))
    click.get_current_context().call_on_close(store.close)
    return store


def _value(text: str) -> bytes:
    """The value argument: its UTF-8 bytes, or ``-`` for standard input as is."""
    if text == "-":
        return sys.stdin.buffer.read()
    return text.encode("utf-8")


@click.group()
def kv() -> None:
    """Read and change the linearizable key-value store at --db.

    Every operation takes effect at one instant between its call and its
    return (memory, SQLite, PostgreSQL, NATS: see docs/explanation/consistency.md).
    Each change gives the key a new version; versions never repeat, not
    even after a delete, so a compare-and-set by version cannot be fooled by
    a value that came back.

    \b
      unbundled kv put leader node-a
      unbundled kv get leader --json
      unbundled kv cas leader node-b --expected-version 1
      unbundled kv cas lock "$HOST" --absent || echo "taken"
      unbundled kv delete leader
    """


@kv.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print key, version and value as JSON.")
@pass_app
def get(app: App, key: str, as_json: bool) -> None:
    """Print the value of KEY (exit status 3 if it is absent).

    The value is written as it is stored, bytes for bytes, with no newline
    added; --json adds the version and shows the value as JSON, UTF-8 text or
    base64 (its "encoding" says which).
    """
    found = _open(app, create=False).read(key)
    if found is None:
        raise NotFound(f"key {key!r} is absent", key=key)
    if as_json:
        echo_json({"key": key, "version": found.version, **bytes_json(found.value)})
        return
    sys.stdout.buffer.write(found.value)
    sys.stdout.flush()


@kv.command()
@click.argument("key")
@click.argument("value")
@pass_app
def put(app: App, key: str, value: str) -> None:
    """Set KEY to VALUE (- reads the value from standard input) and print
    the key's new version."""
    click.echo(_open(app, create=True).write(key, _value(value)))


@kv.command()
@click.argument("key")
@click.argument("new")
@click.option("--expected-version", type=POSITION, help="Swap only at this version.")
@click.option("--expected-value", help="Swap only if the key holds this value (UTF-8).")
@click.option("--absent", is_flag=True, help="Swap only if the key is absent.")
@pass_app
def cas(
    app: App,
    key: str,
    new: str,
    expected_version: int | None,
    expected_value: str | None,
    absent: bool,
) -> None:
    """Compare-and-set: set KEY to NEW (- reads standard input) only if it
    matches the one expectation given, atomically, and print "swapped". If
    it did not match, nothing changes and the exit status is 4."""
    given = [o for o, v in (("--expected-version", expected_version),
                            ("--expected-value", expected_value),
                            ("--absent", absent or None)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise UsageError(
            "give exactly one of --expected-version, --expected-value, --absent"
            + (f" (got {', '.join(given)})" if given else "")
        )
    store = _open(app, create=True)
    expectation: dict[str, Any] = (
        {"expected_version": expected_version}
        if expected_version is not None
        else {"expected_value": None if absent else _value_text(expected_value)}
    )
    if not store.compare_and_set(key, new=_value(new), **expectation):
        current = store.read(key)
        now = "absent" if current is None else f"at version {current.version}"
        raise ConflictError(f"key {key!r} did not match; nothing changed (it is {now})", key=key)
    click.echo("swapped")


def _value_text(text: str | None) -> bytes:
    assert text is not None  # checked by the caller: exactly one expectation
    return text.encode("utf-8")


@kv.command()
@click.argument("key")
@pass_app
def delete(app: App, key: str) -> None:
    """Delete KEY: print "deleted", or "absent" if there was nothing to delete
    (both exit 0: the key is absent afterwards either way)."""
    click.echo("deleted" if _open(app, create=False).delete(key) else "absent")
