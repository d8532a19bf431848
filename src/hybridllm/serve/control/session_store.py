"""Session pins shared through Redis (``--state redis://``), so that the workers of ``--workers N`` and
the replicas pointed at one Redis route a session's turns alike: the asynchronous twin of
:class:`hybridllm.routing.session_store.MemorySessionStore`, with the same calls, bounds and rules.

Each call is one Lua script, atomic in Redis: ``raise_pin`` moves a pin only up (two workers racing
on one session never move it down), and a new pin is bounded as the memory store bounds it: a
namespace (client key) holds at most ``per_key`` pins and evicts its own least recently used one past
that; when all of them together hold ``capacity``, the namespace holding the most pays. A pin is a
Redis key that expires ``ttl_s`` after its last use (Redis's clock); the order of use is the
callers' wall clock (``now``, the same on every replica within clock skew).

Keys (one Redis, not a cluster, like the spend counters): ``{prefix}sess:{ns}:{sid}`` the pin
(``rank|since|used|turns|model``), ``{prefix}sesslru:{ns}`` the namespace's pins by last use,
``{prefix}sessns`` the namespaces; ``ns`` is the key name's hex (a name may hold ``:``).

With Redis unreachable, pins are kept in this process (a :class:`MemorySessionStore`) until it
answers again, said once in the log: sessions go on, per process, rather than fail requests.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from hybridllm.routing.session_store import MemorySessionStore, Pin

log = logging.getLogger("hybridllm.serve")

_PARSE = """
local function parse(v)
  local r, s, u, t, m = string.match(v, '^(%-?%d+)|([^|]+)|([^|]+)|(%d+)|(.*)$')
  return tonumber(r), tonumber(s), tonumber(u), tonumber(t), m
end
local function fmt(r, s, u, t, m)
  return string.format('%d|%.6f|%.6f|%d|%s', r, s, u, t, m)
end
"""
# KEYS[1] the pin, KEYS[2] the namespace's LRU; ARGV: sid, now, ttl. The live pin marked used, or false.
_GET = (
    _PARSE
    + """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local now = tonumber(ARGV[2])
local r, s, u, t, m = parse(v)
if u < now then u = now end
local nv = fmt(r, s, u, t + 1, m)
redis.call('SET', KEYS[1], nv, 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], u, ARGV[1])
return nv
"""
)
# KEYS[1] the pin, KEYS[2] the namespace's LRU, KEYS[3] the set of namespaces; ARGV: sid, ns, now,
# ttl, model, rank, mode ('raise': only up; 'set': whatever it was), per_key, capacity, prefix.
# Returns {pin now, pin before or false, pins evicted}.
_PUT = (
    _PARSE
    + """
local now, ttl, rank = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local v = redis.call('GET', KEYS[1])
local turns = 1
if v then
  local r, s, u, t, m = parse(v)
  turns = t
  if ARGV[7] == 'raise' and r >= rank then
    if u < now then u = now end
    local kept = fmt(r, s, u, t, m)
    redis.call('SET', KEYS[1], kept, 'EX', ttl)
    redis.call('ZADD', KEYS[2], u, ARGV[1])
    return {kept, v, 0}
  end
end
local evicted = 0
if not v then
  local old = '(' .. string.format('%.6f', now - ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', old)
  redis.call('ZREM', KEYS[2], ARGV[1])
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[8]) then
    local o = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    redis.call('ZREM', KEYS[2], o)
    redis.call('DEL', ARGV[10] .. 'sess:' .. ARGV[2] .. ':' .. o)
    evicted = 1
  else
    local total, most, biggest = 0, -1, nil
    for _, n in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      local z = ARGV[10] .. 'sesslru:' .. n
      redis.call('ZREMRANGEBYSCORE', z, '-inf', old)
      local c = redis.call('ZCARD', z)
      if c == 0 and n ~= ARGV[2] then redis.call('SREM', KEYS[3], n) end
      total = total + c
      if c > most or (c == most and n == ARGV[2]) then most, biggest = c, n end
    end
    if total >= tonumber(ARGV[9]) and biggest then
      local z = ARGV[10] .. 'sesslru:' .. biggest
      local o = redis.call('ZRANGE', z, 0, 0)[1]
      redis.call('ZREM', z, o)
      redis.call('DEL', ARGV[10] .. 'sess:' .. biggest .. ':' .. o)
      evicted = 1
    end
  end
  redis.call('SADD', KEYS[3], ARGV[2])
end
local nv = fmt(rank, now, now, turns, ARGV[5])
redis.call('SET', KEYS[1], nv, 'EX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[1])
return {nv, v or false, evicted}
"""
)


class AsyncSessionStore(Protocol):
    """:class:`hybridllm.routing.session_store.SessionStore`'s calls, awaited (the rules' steps are
    driven on it by :func:`hybridllm.serve.control.sessions.drive_async`)."""

    async def get(self, ns: str, sid: str, now: float) -> Pin | None: ...
    async def raise_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> tuple[Pin, Pin | None]: ...
    async def set_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> Pin | None: ...
    def evictions(self) -> dict[str, int]: ...


def _pin(value: Any) -> Pin | None:
    if not value:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    rank, since, used, turns, model = text.split("|", 4)
    return Pin(model, int(rank), float(since), float(used), int(turns))


def _ns(ns: str) -> str:
    return ns.encode().hex() or "-"


class RedisSessionStore:
    """Pins in Redis over ``client`` (``redis.asyncio``; the state store's: one pool per process),
    bounded like a :class:`MemorySessionStore` of the same ``capacity``, ``ttl_s`` and ``per_key``,
    which also holds the pins while Redis is down. ``now``: wall-clock seconds (``time.time()``),
    shared by replicas."""

    RETRY_S = 2.0

    def __init__(
        self, client: Any, capacity: int, ttl_s: float, per_key: int | None = None, prefix: str = "hybridllm:"
    ) -> None:
        self.local = MemorySessionStore(capacity, ttl_s, per_key)  # checks the bounds, serves while Redis is down
        self.capacity, self.per_key, self.ttl_s = capacity, self.local.per_key, ttl_s
        self.client, self.prefix = client, prefix
        self._ttl = max(1, round(ttl_s))
        self._get = client.register_script(_GET)
        self._put = client.register_script(_PUT)
        self._lru = 0
        self.down_since: float | None = None

    def _keys(self, ns: str, sid: str) -> tuple[str, str, str]:
        n = _ns(ns)
        return f"{self.prefix}sess:{n}:{sid}", f"{self.prefix}sesslru:{n}", f"{self.prefix}sessns"

    def _up(self) -> bool:
        if self.down_since is None:
            return True
        if time.monotonic() - self.down_since < self.RETRY_S:
            return False
        self.down_since = None
        log.warning("sessions: Redis answers again; session pins are shared again")
        return True

    def _failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            log.warning("sessions: Redis is unreachable (%s); pins are kept per process until it is back",
                        type(exc).__name__)  # fmt: skip
        self.down_since = time.monotonic()

    async def get(self, ns: str, sid: str, now: float) -> Pin | None:
        if self._up():
            pin, lru, _ = self._keys(ns, sid)
            try:
                return _pin(await self._get(keys=[pin, lru], args=[sid, repr(float(now)), self._ttl]))
            except Exception as exc:
                self._failed(exc)
        return self.local.get(ns, sid, now)

    async def _write(self, mode: str, ns: str, sid: str, model: str, rank: int, now: float) -> tuple[Pin, Pin | None]:
        keys = list(self._keys(ns, sid))
        args = [sid, _ns(ns), repr(float(now)), self._ttl, model, int(rank), mode, self.per_key, self.capacity,
                self.prefix]  # fmt: skip
        got, before, evicted = await self._put(keys=keys, args=args)
        self._lru += int(evicted)
        pin = _pin(got)
        assert pin is not None
        return pin, _pin(before)

    async def raise_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> tuple[Pin, Pin | None]:
        if self._up():
            try:
                return await self._write("raise", ns, sid, model, rank, now)
            except Exception as exc:
                self._failed(exc)
        return self.local.raise_pin(ns, sid, model, rank, now)

    async def set_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> Pin | None:
        if self._up():
            try:
                return (await self._write("set", ns, sid, model, rank, now))[1]
            except Exception as exc:
                self._failed(exc)
        return self.local.set_pin(ns, sid, model, rank, now)

    def evictions(self) -> dict[str, int]:
        """Pins this process evicted (Redis expires the others: not counted here)."""
        local = self.local.evictions()
        return {"lru": self._lru + local["lru"], "ttl": local["ttl"]}


__all__ = ["AsyncSessionStore", "RedisSessionStore"]
