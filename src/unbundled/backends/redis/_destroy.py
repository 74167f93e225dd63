"""Destroy a Redis store: delete the idempotency records under its prefix.

Never ``FLUSHDB``: only keys under the prefix, and only our records.

1. ``CLIENT LIST``: a connection named like an open store on this prefix
   (``client_name``) makes it refuse. A server that does not let this user
   list clients (ACL) cannot tell: the check is skipped.
2. A first ``SCAN`` of the prefix checks every key with a script: a key
   that is not one of our records (a hash with the fields every record has)
   makes it refuse, before anything is deleted.
3. A second ``SCAN`` deletes each key with a script that checks it again,
   atomically: a key of someone else's that appeared under the prefix in
   between is left alone (and counted in the report).

Redis has no "prefix" object: a prefix without keys is not an error, the
report just lists nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import redis
from redis.exceptions import ResponseError

from ...errors import UsageError
from .._report import DestroyReport, still_open
from ._connect import (
    CONNECT_TIMEOUT_S,
    PREFIX_DEFAULT,
    SOCKET_TIMEOUT_S,
    client_name,
    display_url,
    escape_glob,
    parse_url,
    translated,
)

# KEYS[1]: a key under the prefix; ARGV[1]: "check" or "delete". Answers
# 1 (ours; deleted if asked), 0 (not ours: left alone), -1 (gone meanwhile).
# Ours: a hash holding the fields every record has (see _scripts).
_SOURCE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return -1 end
if kind ~= 'hash' then return 0 end
for _, field in ipairs({'f', 's', 't', 'e'}) do
  if redis.call('HEXISTS', KEYS[1], field) == 0 then return 0 end
end
if ARGV[1] == 'delete' then redis.call('DEL', KEYS[1]) end
return 1
"""
_BATCH = 1000
_SHOWN = 5  # foreign keys named in a refusal


def _batches(keys: Iterator[bytes]) -> Iterator[list[bytes]]:
    while batch := list(islice(keys, _BATCH)):
        yield batch


def _open_stores(client: redis.Redis, name: str) -> list[str]:
    """Addresses of the connections named ``name``; [] when the server does
    not let us list them (the check is then skipped)."""
    try:
        clients: list[dict[str, Any]] = client.client_list()
    except ResponseError:  # NOPERM, or CLIENT renamed away
        return []
    return [str(c.get("addr", "?")) for c in clients if c.get("name") == name]


def _sweep(client: redis.Redis, pattern: str, action: str) -> dict[int, list[bytes]]:
    """Run the script with ``action`` on every key matching ``pattern``;
    the keys by answer (1 ours, 0 not ours, -1 gone)."""
    script = client.register_script(_SOURCE)
    found: dict[int, list[bytes]] = {1: [], 0: [], -1: []}
    for batch in _batches(client.scan_iter(match=pattern, count=_BATCH)):
        pipe = client.pipeline(transaction=False)
        for key in batch:
            script(keys=[key], args=[action], client=pipe)
        for key, answer in zip(batch, pipe.execute(), strict=True):
            found[int(answer)].append(key)
    return found


def destroy(url: str, *, dry_run: bool) -> DestroyReport:
    """Delete the records under the prefix of ``url`` (see the module docstring)."""
    redis_url, given = parse_url(url)
    prefix = given if given is not None else PREFIX_DEFAULT
    where = display_url(url)
    pattern = escape_glob(prefix) + "*"
    with translated(where, "destroy"):
        try:
            client = redis.Redis.from_url(
                redis_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S
            )
        except ValueError as exc:
            raise UsageError(f"bad Redis URL {where!r}: {exc}", url=where) from None
        try:
            open_at = still_open(lambda: _open_stores(client, client_name(prefix)))
            if open_at:
                raise UsageError(
                    f"refusing to destroy prefix {prefix!r} at {where}: {len(open_at)} "
                    f"connection(s) of an open store use it ({', '.join(open_at)}); "
                    "close those stores first",
                    url=where,
                    prefix=prefix,
                )
            checked = _sweep(client, pattern, "check")
            _refuse_foreign(checked[0], prefix, where)
            done = checked if dry_run else _sweep(client, pattern, "delete")
        finally:
            client.close()
    items = [f"{len(done[1]):,} idempotency records (keys {prefix}*)"]
    if done[0]:
        items.append(f"{len(done[0]):,} keys of someone else's, left alone")
    what = f"the Redis keys under prefix {prefix!r} at {where}"
    return DestroyReport("redis", where, prefix, what, tuple(items), dry_run)


def _refuse_foreign(keys: list[bytes], prefix: str, where: str) -> None:
    if not keys:
        return
    shown = ", ".join(repr(k.decode("utf-8", "backslashreplace")) for k in keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN:,} more" if len(keys) > _SHOWN else ""
    raise UsageError(
        f"refusing to destroy prefix {prefix!r} at {where}: {len(keys):,} key(s) under it "
        f"are not unbundled idempotency records ({shown}{more}); nothing was deleted. "
        "Give unbundled a prefix of its own.",
        url=where,
        prefix=prefix,
    )
