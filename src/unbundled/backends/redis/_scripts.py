"""The Lua scripts of the Redis backend: the rules of
``unbundled.idempotency._core`` (``decide_claim``, ``decide_complete``,
``decide_phase``, ``decide_release``, ``live``), run inside Redis so that each
operation is one round trip and atomic (a script runs alone on the server).

A record is one hash under ``KEYS[1]`` (the prefix + the idempotency key):

====  ===========================================================
f     fingerprint
s     state: ``in_progress`` or ``completed``
t     fencing token
l     lease_until_ms (0 once completed)
e     expires_ms; Redis deletes the key ``EXPIRY_GRACE_MS`` later by itself
c, u  created_ms, updated_ms
r     the stored result (absent until completed)
x     ``1`` if the result is a deterministic error, else ``0``
p:*   one field per recovery point: ``p:<phase name>`` -> its output
====  ===========================================================

Time is the Redis server's clock (``TIME``), never the app server's: many app
servers with skewed clocks then agree on when a lease or a record ends.

Every script answers one string, ``"<status> <now_ms> <record header>\\n<record
body>"`` (``reply``): one bulk string costs redis-py a fraction of what a
nested array of every field does, and this is the hot path of a repeated key.
The record header is ``state token lease expires created updated error
len(fingerprint) len(result)`` (-1: no result) followed by ``len(name)
len(output)`` per phase; the body is the fingerprint, the result and each
phase's name and output, back to back. No record: nothing after ``now_ms``.
The server's ``now`` lets Python apply the same ``_core`` functions to what
the script saw (``get``, and the exact ``StaleToken`` message).

Scripts read and write only ``KEYS[1]``, so they also run on Redis Cluster.
Redis 5+ replicates a script's effects rather than the script, which makes
``TIME`` followed by writes legal.
"""

from __future__ import annotations

import hashlib
from typing import Final

# Redis deletes a record by itself this long after it expires; until then
# purge_expired can delete (and count) it. Expired is expired either way:
# every script treats ``e <= now`` as absent.
EXPIRY_GRACE_MS: Final = 60_000

# now from the server's clock; expired(e) is the negation of _core.live;
# reply() frames the answer (see the module docstring).
_PRELUDE_TEMPLATE = """
local k = KEYS[1]
local GRACE = @GRACE@
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expired(e)
  e = tonumber(e)
  return e == nil or e <= now
end
local function reply(status, with_record)
  local head = {status, string.format('%d', now)}
  local body = {}
  if with_record then
    local h = redis.call('HGETALL', k)
    local v, phases = {}, {}
    for i = 1, #h, 2 do
      if string.sub(h[i], 1, 2) == 'p:' then
        phases[#phases + 1] = string.sub(h[i], 3)
        phases[#phases + 1] = h[i + 1]
      else
        v[h[i]] = h[i + 1]
      end
    end
    if #h > 0 then
      -- A missing field becomes '?', which Python reports as corruption.
      local r, fields = v.r, {v.s, v.t, v.l, v.e, v.c, v.u, v.x, v.f and #v.f}
      for i = 1, 8 do
        head[#head + 1] = fields[i] or '?'
      end
      head[#head + 1] = r and #r or -1
      body[1] = v.f or ''
      body[2] = r or ''
      for i = 1, #phases do
        head[#head + 1] = #phases[i]
        body[#body + 1] = phases[i]
      end
    end
  end
  return table.concat(head, ' ') .. '\\n' .. table.concat(body)
end
"""
_PRELUDE = _PRELUDE_TEMPLATE.replace("@GRACE@", str(EXPIRY_GRACE_MS))

# ARGV: fingerprint, lease_ms, retention_ms -> claimed|completed|in_progress|mismatch
CLAIM: Final = (
    _PRELUDE
    + """
local fp, lease, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('HMGET', k, 'e', 'f', 's', 't', 'l')
if expired(cur[1]) then
  -- Absent, or past its expiry (Redis keeps it GRACE ms longer): a new record.
  redis.call('DEL', k)
  redis.call('HSET', k, 'f', fp, 's', 'in_progress', 't', 1, 'l', now + lease,
             'e', now + retention, 'c', now, 'u', now, 'x', 0)
  redis.call('PEXPIREAT', k, now + retention + GRACE)
  return reply('claimed', true)
end
if cur[2] ~= fp then
  return reply('mismatch', true)
end
if cur[3] == 'completed' then
  return reply('completed', true)
end
if tonumber(cur[5]) > now then
  return reply('in_progress', true)
end
-- The holder's lease ran out: take over with the next fencing token.
local expires = math.max(tonumber(cur[1]), now + retention)
redis.call('HSET', k, 't', tonumber(cur[4]) + 1, 'l', now + lease, 'e', expires, 'u', now)
redis.call('PEXPIREAT', k, expires + GRACE)
return reply('claimed', true)
"""
)

# The fence of complete / record_phase / release: held in progress with ARGV[1].
_HELD = """
local cur = redis.call('HMGET', k, 'e', 's', 't')
local held = not expired(cur[1]) and cur[2] == 'in_progress'
             and tonumber(cur[3]) == tonumber(ARGV[1])
"""

# ARGV: token, result, error (0/1), retention_ms -> ok (with the record) | stale
COMPLETE: Final = (
    _PRELUDE
    + _HELD
    + """
if not held then
  return reply('stale', true)
end
local expires = now + tonumber(ARGV[4])
redis.call('HSET', k, 's', 'completed', 'r', ARGV[2], 'x', ARGV[3], 'l', 0,
           'e', expires, 'u', now)
redis.call('PEXPIREAT', k, expires + GRACE)
return reply('ok', true)
"""
)

# ARGV: token, phase, output -> ok | stale (with the record)
PHASE: Final = (
    _PRELUDE
    + _HELD
    + """
if not held then
  return reply('stale', true)
end
redis.call('HSET', k, 'p:' .. ARGV[2], ARGV[3], 'u', now)
return reply('ok', false)
"""
)

# ARGV: token -> released | kept. Like _core.after_release: a record with
# recovery points stays, its lease given up, so the next claim resumes there.
RELEASE: Final = (
    _PRELUDE
    + _HELD
    + """
if not held then
  return reply('kept', false)
end
for _, name in ipairs(redis.call('HKEYS', k)) do
  if string.sub(name, 1, 2) == 'p:' then
    redis.call('HSET', k, 'l', now, 'u', now)
    return reply('released', false)
  end
end
redis.call('DEL', k)
return reply('released', false)
"""
)

# -> purged | kept: delete the record if it has expired (before Redis does).
PURGE: Final = (
    _PRELUDE
    + """
if redis.call('EXISTS', k) == 1 and expired(redis.call('HGET', k, 'e')) then
  redis.call('DEL', k)
  return reply('purged', false)
end
return reply('kept', false)
"""
)

# -> live (with the record) | absent: the record as the server's clock sees it.
GET: Final = (
    _PRELUDE
    + """
if expired(redis.call('HGET', k, 'e')) then
  return reply('absent', false)
end
return reply('live', true)
"""
)


class Script:
    """A script and its SHA1, the name ``EVALSHA`` calls it by."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


SCRIPTS: Final = {
    script.name: script
    for script in (
        Script("claim", CLAIM),
        Script("complete", COMPLETE),
        Script("phase", PHASE),
        Script("release", RELEASE),
        Script("get", GET),
        Script("purge", PURGE),
    )
}
