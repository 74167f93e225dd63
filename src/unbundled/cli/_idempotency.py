"""``unbundled idempotency ...``: inspect idempotency keys and purge expired ones.

A key's record is ``in_progress`` while an attempt holds its lease (the
fencing token says which attempt), then ``completed`` with the stored result
until it expires. Stored results and phase outputs are bytes: ``--json``
shows them as JSON when they are JSON (``"encoding": "json"``), else as
UTF-8 text, else base64.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

import click
from rich.markup import escape
from rich.table import Table

from ..errors import NotFound, UsageError
from ..idempotency import Idempotency, IdempotencyRecord
from ..idempotency._protocol import State
from ._bounds import POSITIVE
from ._common import App, bytes_json, echo_json, out_console, pass_app

_PAGE = 1000  # records per backend read


def open_idempotency(app: App) -> Idempotency:
    """The idempotency store at ``--db``, closed when the command ends. The
    commands only inspect and purge, so the file must exist already."""
    app._check_exists()
    idem = app.opened(lambda url: Idempotency.open(url, sync=app.sync))
    click.get_current_context().call_on_close(idem.close)
    return idem


def record_json(record: IdempotencyRecord) -> dict[str, Any]:
    """The ``--json`` form of a record (times are Unix milliseconds)."""
    out: dict[str, Any] = {
        "key": record.key,
        "state": record.state,
        "token": record.token,
        "fingerprint": record.fingerprint,
        "lease_until_ms": record.lease_until_ms,
        "expires_ms": record.expires_ms,
        "created_ms": record.created_ms,
        "updated_ms": record.updated_ms,
        "error": record.error,
        "result": None if record.result is None else bytes_json(record.result),
        "phases": {name: bytes_json(raw) for name, raw in record.phases.items()},
    }
    return out


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _lease(record: IdempotencyRecord, now_ms: int) -> str:
    if record.state == "completed":
        return "-"
    left_s = (record.lease_until_ms - now_ms) / 1000
    return f"{left_s:.1f} s left" if left_s > 0 else "expired"


def _short(raw: bytes, width: int = 200) -> str:
    shown = bytes_json(raw)
    text = shown["value"] if shown["encoding"] != "json" else raw.decode("utf-8")
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group()
def idempotency() -> None:
    """Inspect idempotency keys, or purge the expired ones.

    \b
      unbundled idempotency list --state in_progress
      unbundled idempotency show order-7 --json
      unbundled idempotency purge --expired
    """


@idempotency.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the record as a JSON object.")
@pass_app
def idempotency_show(app: App, key: str, as_json: bool) -> None:
    """Show KEY's record: state, fencing token, lease, expiry, result and phases.

    An expired record is not shown (it counts as absent: the key is free).
    Exits 3 if there is no live record for KEY.
    """
    record = open_idempotency(app).get(key)
    if record is None:
        raise NotFound(f"no idempotency record for key {key!r} (never used, or expired)", key=key)
    if as_json:
        echo_json(record_json(record))
        return
    now_ms = int(time.time() * 1000)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("key", record.key),
        ("state", record.state),
        ("token", str(record.token)),
        ("lease", _lease(record, now_ms)),
        ("fingerprint", record.fingerprint),
        ("created", _when(record.created_ms)),
        ("updated", _when(record.updated_ms)),
        ("expires", _when(record.expires_ms)),
    ]
    if record.result is not None:
        rows.append(("error" if record.error else "result", _short(record.result)))
    for name, raw in record.phases.items():
        rows.append((f"phase {name}", _short(raw)))
    for name, value in rows:
        table.add_row(name, escape(value))
    out_console().print(table)


@idempotency.command("list")
@click.option(
    "--state",
    type=click.Choice(["in_progress", "completed"]),
    default=None,
    help="Only records in this state (default: both).",
)
@click.option("--after", default="", metavar="KEY", help="Start after this key (keys are sorted).")
@click.option(
    "--limit",
    type=POSITIVE,
    default=None,
    help="At most this many records (default: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@pass_app
def idempotency_list(
    app: App, state: str | None, after: str, limit: int | None, as_json: bool
) -> None:
    """List live idempotency records, sorted by key.

    LEASE is how long the attempt holding an in-progress key has left; once
    it runs out, the next attempt takes the key over with a higher token.
    STATE "error" is a completed key whose stored answer is a deterministic
    error (replayed to every retry).
    """
    idem = open_idempotency(app)
    found: list[IdempotencyRecord] = []
    while limit is None or len(found) < limit:
        page_size = _PAGE if limit is None else min(_PAGE, limit - len(found))
        page = idem.records(state=cast(State | None, state), after=after, limit=page_size)
        found.extend(page)
        if len(page) < page_size:
            break
        after = page[-1].key
    if as_json:
        echo_json([record_json(r) for r in found])
        return
    if not found:
        out_console().print("no idempotency records" + (f" in state {state}" if state else ""))
        return
    now_ms = int(time.time() * 1000)
    table = Table("key", "state", "token", "lease", "expires (UTC)")
    for r in found:
        table.add_row(
            escape(r.key),
            "error" if r.error else r.state,
            str(r.token),
            _lease(r, now_ms),
            _when(r.expires_ms),
        )
    out_console().print(table)


@idempotency.command("purge")
@click.option("--expired", is_flag=True, help="Delete the records past their expiry (required).")
@click.option("--json", "as_json", is_flag=True, help='Print {"purged": N}.')
@pass_app
def idempotency_purge(app: App, expired: bool, as_json: bool) -> None:
    """Delete expired idempotency records; print how many.

    Expired records already count as absent (their keys are free again);
    purging reclaims their space. Live records are never deleted: a key in
    progress or completed keeps protecting its request until it expires.
    """
    if not expired:
        raise UsageError("say what to purge: --expired (the only kind that can be purged)")
    purged = open_idempotency(app).purge_expired()
    if as_json:
        echo_json({"purged": purged})
        return
    out_console().print(f"purged {purged:,} expired idempotency record{'s' * (purged != 1)}")


__all__ = ["idempotency"]
