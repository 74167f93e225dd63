"""A Redis cache of change events: one hash per row, applied by one Lua script per batch.

Redis joins no transaction of ours, so each batch is applied by a single script (Redis
runs a script alone and whole: no other command sees half a batch), which first checks
that the view's stored offsets are the batch's start (else it writes nothing and the
call raises ``ConflictError``), then moves them to the batch's end. Each row also keeps
the source position of its last change, and a change at or before it (or before the
table's last truncate) is skipped: dedupe by source position, a second line of defence.

Keys under ``<prefix>`` (default ``unbundled:view:<name>``): ``:offsets`` (hash
"topic/partition" -> next offset), ``:row:<topic>:<key>`` (hash column -> JSON value),
``:pos:<topic>`` (hash key -> position), ``:keys:<topic>`` (set of keys) and
``:trunc:<topic>`` (the position of the last truncate). Durability is the server's
(appendonly with fsync for a cache that survives a Redis restart). Standalone Redis:
the script touches keys it cannot declare, which Redis Cluster refuses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ...errors import ConflictError, Unavailable, UsageError
from .._change import UNAVAILABLE_TEXT, SourcePosition
from .._replay import Event, row_ops
from ._base import TopicPartition, check_name

_KEEP = "\x00keep"  # a column whose old value stays (the source did not send it)

# ARGV: prefix, n, n x (field, start, end), then per op: topic, key, pos, op, ncols,
# ncols x (column, value). Positions are fixed-width strings: they compare as strings.
_SCRIPT = """
local p = ARGV[1]
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  local got = redis.call('HGET', p .. ':offsets', ARGV[i]) or '0'
  if got ~= ARGV[i + 1] then return {-1, ARGV[i], got} end
  i = i + 3
end
i = 3
for _ = 1, n do
  redis.call('HSET', p .. ':offsets', ARGV[i], ARGV[i + 2])
  i = i + 3
end
local applied = 0
while i <= #ARGV do
  local topic, key, pos, op = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ncols = tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + 2 * ncols
  local trunc = redis.call('GET', p .. ':trunc:' .. topic)
  if op == 'clear' then
    if not trunc or trunc < pos then
      for _, k in ipairs(redis.call('SMEMBERS', p .. ':keys:' .. topic)) do
        redis.call('DEL', p .. ':row:' .. topic .. ':' .. k)
      end
      redis.call('DEL', p .. ':keys:' .. topic, p .. ':pos:' .. topic)
      redis.call('SET', p .. ':trunc:' .. topic, pos)
      applied = applied + 1
    end
  else
    local last = redis.call('HGET', p .. ':pos:' .. topic, key)
    if (not last or last < pos) and (not trunc or trunc < pos) then
      local row = p .. ':row:' .. topic .. ':' .. key
      if op == 'delete' then
        redis.call('DEL', row)
        redis.call('SREM', p .. ':keys:' .. topic, key)
      else
        local fields = {}
        for c = first, first + 2 * ncols - 1, 2 do
          local v = ARGV[c + 1]
          if v == '\\0keep' then v = redis.call('HGET', row, ARGV[c]) end
          if v then
            fields[#fields + 1] = ARGV[c]
            fields[#fields + 1] = v
          end
        end
        redis.call('DEL', row)
        if #fields > 0 then redis.call('HSET', row, unpack(fields)) end
        redis.call('SADD', p .. ':keys:' .. topic, key)
      end
      redis.call('HSET', p .. ':pos:' .. topic, key, pos)
      applied = applied + 1
    end
  end
end
return {applied}
"""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _pos(position: SourcePosition) -> str:
    return f"{position.commit:020d}:{position.index:020d}"


class RedisCache:
    """Rows of the topics it follows (see `follow`) as Redis hashes."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, name: str = "cdc_cache") -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra is part of dev
            raise UsageError("a Redis cache view needs: pip install 'unbundled[redis]'") from exc
        self.name = check_name(name)
        self.prefix = f"unbundled:view:{name}"
        self._redis = redis.Redis.from_url(url, socket_timeout=30)
        try:
            self._script = self._redis.register_script(_SCRIPT)
            self._redis.ping()
        except redis.RedisError as exc:
            raise Unavailable(f"cannot reach Redis for view {name}: {exc}") from exc

    def offsets(self) -> dict[TopicPartition, int]:
        """The stored offsets: (topic, partition) -> the next offset to apply."""
        got = self._redis.hgetall(f"{self.prefix}:offsets")
        out = {}
        for field, value in got.items():
            topic, _, partition = _text(field).rpartition("/")
            out[(topic, int(partition))] = int(value)
        return out

    def apply(
        self,
        batch: Sequence[Event],
        start: dict[TopicPartition, int],
        end: dict[TopicPartition, int],
    ) -> None:
        """Apply one batch of change events and store the offsets after it, atomically."""
        args: list[Any] = [self.prefix, len(start)]
        for (topic, partition), at in start.items():
            args += [f"{topic}/{partition}", str(at), str(end[(topic, partition)])]
        for event in batch:
            pos = _pos(event.position)
            for op in row_ops(event):
                row = op.row or {}
                args += [event.topic, op.key, pos, op.op, len(row)]
                for column, value in row.items():
                    text = _KEEP if value == UNAVAILABLE_TEXT else json.dumps(value)
                    args += [column, text]
        result = self._script(keys=[], args=args)
        if int(result[0]) == -1:
            raise ConflictError(
                f"view {self.name}: {result[1].decode()} is at {result[2].decode()}, not the "
                "batch's start: another runner applied it"
            )

    def rows(self, topic: str) -> dict[str, dict[str, Any]]:
        """Every row the view holds, keyed like the change events' keys."""
        out = {}
        for raw in self._redis.smembers(f"{self.prefix}:keys:{topic}"):
            key = _text(raw)
            got = self._redis.hgetall(f"{self.prefix}:row:{topic}:{key}")
            out[key] = {_text(c): json.loads(v) for c, v in got.items()}
        return out

    def drop(self) -> None:
        """Delete every key of the view (to rebuild it from the log)."""
        for key in self._redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            self._redis.delete(key)

    def close(self) -> None:
        """Close the view's connection."""
        self._redis.close()
