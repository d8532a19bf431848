"""Serving state shared by replicas: spend counters with reservations (the hard budgets) and the
controller's shadow pairs, in this process by default or in Redis (``--state redis://HOST:PORT/DB``)
for the workers of one server and for ``serve`` processes on other hosts.

Both stores do the same things, atomically: ``admit`` (reserve an estimated cost when the
committed spend, spent plus reserved, is under the cap), ``settle`` (turn a reservation into the
real cost) and ``share`` (append this process's new records to a capped shared list and read the
list back; the local store shares nothing). With Redis unreachable, the Redis store serves from a
local store, says so once in the log, keeps the deltas and records it could not write and replays
them when Redis answers again: no admitted request's cost is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Protocol

from hybridllm.errors import require

from .errors import ServeConfigError

log = logging.getLogger("hybridllm.serve")


class StateStore(Protocol):
    async def admit(self, key: str, reserve: float, cap: float, ttl_s: int) -> bool: ...
    async def settle(self, key: str, reserved: float, cost: float, ttl_s: int) -> None: ...
    async def share(self, key: str, new: list[str], keep: int) -> list[str] | None: ...
    async def close(self) -> None: ...


class LocalStore:
    """Counters in this process (the event loop makes each call atomic)."""

    def __init__(self) -> None:
        self.spend: dict[str, float] = {}
        self.reserved: dict[str, float] = {}
        self._expires: dict[str, float] = {}  # like a Redis key's TTL: a past period's counter goes

    def _touch(self, key: str, ttl_s: int) -> None:
        now = time.monotonic()
        if ttl_s:
            self._expires[key] = now + ttl_s
        if len(self._expires) > 1024:
            for old in [k for k, t in self._expires.items() if t < now]:
                for d in (self._expires, self.spend, self.reserved):
                    d.pop(old, None)

    async def admit(self, key: str, reserve: float, cap: float, ttl_s: int = 0) -> bool:
        if self.spend.get(key, 0.0) + self.reserved.get(key, 0.0) >= cap:
            return False
        self.reserved[key] = self.reserved.get(key, 0.0) + reserve
        self._touch(key, ttl_s)
        return True

    async def settle(self, key: str, reserved: float, cost: float, ttl_s: int = 0) -> None:
        self.reserved[key] = max(self.reserved.get(key, 0.0) - reserved, 0.0)
        self.spend[key] = self.spend.get(key, 0.0) + cost
        self._touch(key, ttl_s)

    async def share(self, key: str, new: list[str], keep: int) -> list[str] | None:
        """Nothing to share with in one process: None (the caller keeps its own records)."""
        return None

    async def close(self) -> None:
        return None


# Reservations are held per process, each under a lease (a key with a TTL its process renews while
# it runs): a process killed mid-request loses its open reservations with the lease, not the period.
# KEYS[1] spend, KEYS[2] the set of processes holding reservations, KEYS[3] this process's
# reservation; ARGV: reservation, cap, ttl, lease, the reservation keys' prefix, this process's id.
# Spent + every live process's reservations under the cap: reserve. (The reservation keys are read
# by name from the set: one Redis, not a cluster.)
_ADMIT = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
for _, p in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local v = redis.call('GET', ARGV[5] .. p)
  if v then held = held + tonumber(v) else redis.call('SREM', KEYS[2], p) end
end
if spent + held >= tonumber(ARGV[2]) then return {0, tostring(spent)} end
redis.call('INCRBYFLOAT', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, tostring(spent)}
"""
# KEYS[1] spend, KEYS[2] this process's reservation; ARGV: reservation to release, cost, ttl, lease
_SETTLE = """
local v = redis.call('GET', KEYS[2])
if v then
  local left = tonumber(v) - tonumber(ARGV[1])
  if left < 0 then left = 0 end
  redis.call('SET', KEYS[2], tostring(left), 'EX', ARGV[4])
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisStore:
    """The same counters in Redis, shared by every process pointed at it; falls back to a
    :class:`LocalStore` while Redis is down (see the module docstring)."""

    RETRY_S = 2.0
    #: connections to Redis per process; calls beyond them wait (up to POOL_WAIT_S) for one to free
    MAX_CONNECTIONS = 64
    POOL_WAIT_S = 5.0

    def __init__(self, url: str, prefix: str = "hybridllm:", lease_s: int = 30) -> None:
        redis = require("redis.asyncio", "redis", "--state redis://")
        self.url = url
        self.prefix = prefix
        self.lease_s = max(int(lease_s), 1)
        self.me = uuid.uuid4().hex[:16]  # this process, in the reservation keys
        self._held: dict[str, float] = {}  # what this process has reserved per counter (its leases)
        self._renewing: asyncio.Task[None] | None = None
        # a blocking pool: redis-py's default pool raises at once past its connections, which reads
        # as Redis down, so a burst of concurrent requests would put every replica on its own counters
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=self.MAX_CONNECTIONS, timeout=self.POOL_WAIT_S,
            socket_connect_timeout=1.0, socket_timeout=1.0,
        )  # fmt: skip
        self.client = redis.Redis.from_pool(pool)
        self._admit = self.client.register_script(_ADMIT)
        self._settle = self.client.register_script(_SETTLE)
        self.local = LocalStore()
        self.down_since: float | None = None
        #: (counter, what Redis holds of its reservation, cost, ttl) of requests settled while Redis was down
        self._pending: list[tuple[str, float, float, int]] = []
        self._unshared: dict[str, list[str]] = {}  # records to share, kept while Redis was down
        self._said = False

    def _spend(self, key: str) -> str:
        return f"{self.prefix}spend:{key}"

    def _reserved(self, key: str) -> str:
        return f"{self.prefix}reserved:{key}:{self.me}"

    async def _up(self) -> bool:
        """Whether to talk to Redis now; after a failure, retried every RETRY_S (and the costs kept
        meanwhile are written first)."""
        if self.down_since is None:
            return True
        if time.monotonic() - self.down_since < self.RETRY_S:
            return False
        try:
            for key, released, cost, ttl in self._pending:
                await self._settle(
                    keys=[self._spend(key), self._reserved(key)], args=[released, cost, ttl, self.lease_s]
                )
        except Exception:
            self.down_since = time.monotonic()
            return False
        self._pending.clear()
        self.down_since = None
        log.warning("state: Redis at %s answers again; spend counters are shared again", _safe(self.url))
        self._said = False
        return True

    def _failed(self, exc: BaseException) -> None:
        self.down_since = time.monotonic()
        if not self._said:
            self._said = True
            log.warning(
                "state: Redis at %s is unreachable (%s); serving on this process's counters until it is back",
                _safe(self.url), type(exc).__name__,
            )  # fmt: skip

    async def admit(self, key: str, reserve: float, cap: float, ttl_s: int) -> bool:
        if await self._up():
            try:
                ok, spent = await self._admit(
                    keys=[self._spend(key), f"{self.prefix}holders:{key}", self._reserved(key)],
                    args=[reserve, cap, ttl_s, self.lease_s, f"{self.prefix}reserved:{key}:", self.me],
                )
                # what Redis had is where this process's counters go on from if it goes down
                self.local.spend[key] = max(self.local.spend.get(key, 0.0), float(spent))
                if ok:
                    self._held[key] = self._held.get(key, 0.0) + reserve
                    self._renew_leases()
                return bool(ok)
            except Exception as exc:
                self._failed(exc)
        return await self.local.admit(key, reserve, cap, ttl_s)

    async def settle(self, key: str, reserved: float, cost: float, ttl_s: int) -> None:
        held = self._held.get(key, 0.0)
        released = min(reserved, held)  # what Redis holds of it (one admitted while Redis was down: none)
        if held - released > 1e-12:
            self._held[key] = held - released
        else:
            self._held.pop(key, None)
        if await self._up():
            try:
                await self._settle(
                    keys=[self._spend(key), self._reserved(key)], args=[released, cost, ttl_s, self.lease_s]
                )
                return
            except Exception as exc:
                self._failed(exc)
        await self.local.settle(key, reserved, cost, ttl_s)
        self._pending.append((key, released, cost, ttl_s))  # released in Redis when it is back

    async def share(self, key: str, new: list[str], keep: int) -> list[str] | None:
        """Append ``new`` to the shared list ``key`` (capped at its last ``keep`` records) and read
        it back, in one round trip; None while Redis is down (the records wait, the newest
        ``keep``, and go with the next call that reaches it)."""
        waiting = (self._unshared.pop(key, []) + new)[-keep:]
        if await self._up():
            try:
                name = f"{self.prefix}{key}"
                pipe = self.client.pipeline(transaction=True)
                if waiting:
                    pipe.rpush(name, *waiting)
                pipe.ltrim(name, -keep, -1)
                pipe.lrange(name, 0, -1)
                got = (await pipe.execute())[-1]
                return [x.decode() if isinstance(x, bytes) else str(x) for x in got]
            except Exception as exc:
                self._failed(exc)
        self._unshared[key] = waiting
        return None

    def _renew_leases(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        """While this process holds reservations, renew their leases every third of a lease."""
        while self._held:
            await asyncio.sleep(self.lease_s / 3)
            if self.down_since is not None:
                continue
            try:
                pipe = self.client.pipeline(transaction=False)
                for key in list(self._held):
                    pipe.expire(self._reserved(key), self.lease_s)
                await pipe.execute()
            except Exception as exc:
                self._failed(exc)

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        await self.client.aclose()


def _safe(url: str) -> str:
    """A Redis URL without its password, for the log."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def make_store(url: str | None, lease_s: int = 30) -> StateStore:
    if url is None:
        return LocalStore()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ServeConfigError(f"--state {_safe(url)!r}: expected redis://HOST:PORT/DB")
    return RedisStore(url, lease_s=lease_s)
