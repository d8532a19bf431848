"""Serving state shared by replicas: spend counters with reservations (the hard budgets), in this
process by default or in Redis (``--state redis://HOST:PORT/DB``) for the workers of one server and
for ``serve`` processes on other hosts.

Both stores do the same two things, atomically: ``admit`` (reserve an estimated cost when the
committed spend, spent plus reserved, is under the cap) and ``settle`` (turn a reservation into the
real cost). With Redis unreachable, the Redis store serves from a local store, says so
once in the log, keeps the deltas it could not write and replays them when Redis answers again: no
admitted request's cost is lost.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from hybridllm.errors import require

from .errors import ServeConfigError

log = logging.getLogger("hybridllm.serve")


class SpendStore(Protocol):
    async def admit(self, key: str, reserve: float, cap: float, ttl_s: int) -> bool: ...
    async def settle(self, key: str, reserved: float, cost: float, ttl_s: int) -> None: ...
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

    async def close(self) -> None:
        return None


# KEYS[1] spend, KEYS[2] reserved; ARGV: reservation, cap, ttl. Spent + reserved under the cap: reserve.
_ADMIT = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
if spent + held >= tonumber(ARGV[2]) then return {0, tostring(spent)} end
redis.call('INCRBYFLOAT', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, tostring(spent)}
"""
# KEYS as above; ARGV: reservation to release, cost, ttl
_SETTLE = """
redis.call('INCRBYFLOAT', KEYS[2], -tonumber(ARGV[1]))
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


class RedisStore:
    """The same counters in Redis, shared by every process pointed at it; falls back to a
    :class:`LocalStore` while Redis is down (see the module docstring)."""

    RETRY_S = 2.0

    def __init__(self, url: str, prefix: str = "hybridllm:") -> None:
        redis = require("redis.asyncio", "redis", "--state redis://")
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._admit = self.client.register_script(_ADMIT)
        self._settle = self.client.register_script(_SETTLE)
        self.local = LocalStore()
        self.down_since: float | None = None
        self._pending: list[tuple[str, float, int]] = []  # costs settled while Redis was down
        self._said = False

    def _keys(self, key: str) -> list[str]:
        return [f"{self.prefix}spend:{key}", f"{self.prefix}reserved:{key}"]

    async def _up(self) -> bool:
        """Whether to talk to Redis now; after a failure, retried every RETRY_S (and the costs kept
        meanwhile are written first)."""
        if self.down_since is None:
            return True
        if time.monotonic() - self.down_since < self.RETRY_S:
            return False
        try:
            for key, cost, ttl in self._pending:
                await self._settle(keys=self._keys(key), args=[0.0, cost, ttl])
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
                ok, spent = await self._admit(keys=self._keys(key), args=[reserve, cap, ttl_s])
                # what Redis had is where this process's counters go on from if it goes down
                self.local.spend[key] = max(self.local.spend.get(key, 0.0), float(spent))
                return bool(ok)
            except Exception as exc:
                self._failed(exc)
        return await self.local.admit(key, reserve, cap, ttl_s)

    async def settle(self, key: str, reserved: float, cost: float, ttl_s: int) -> None:
        if await self._up():
            try:
                await self._settle(keys=self._keys(key), args=[reserved, cost, ttl_s])
                return
            except Exception as exc:
                self._failed(exc)
        await self.local.settle(key, reserved, cost, ttl_s)
        self._pending.append((key, cost, ttl_s))

    async def close(self) -> None:
        await self.client.aclose()


def _safe(url: str) -> str:
    """A Redis URL without its password, for the log."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def make_store(url: str | None) -> SpendStore:
    if url is None:
        return LocalStore()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ServeConfigError(f"--state {_safe(url)!r}: expected redis://HOST:PORT/DB")
    return RedisStore(url)
