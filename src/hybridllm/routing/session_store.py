"""Where session pins live: the :class:`SessionStore` protocol the session rules use, and the
in-process store, bounded by LRU and TTL with a per-key share (docs/sessions.md).

The protocol's one writing call, :meth:`SessionStore.raise_pin`, moves a pin only up, in one step,
so a shared store (Redis, for ``--workers N`` and replicas) can make it atomic (a script) and two
workers racing on one session never move it down.

Bounds, and why: every pin belongs to a namespace (the client key that made it). A namespace holds
at most ``per_key`` pins and evicts its own least recently used one past that; when the store as a
whole is full, the pin evicted is the least recently used one of the namespace holding the most
pins. So a flood of new session ids from one key evicts that key's own pins: another key loses a
pin to it only while that other key holds at least as many pins as the flooder.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol

from hybridllm.errors import UsageError


@dataclass(frozen=True)
class Pin:
    """A session's model: its ``rank`` in the fleet's cost order (0 cheapest), ``since`` and
    ``used`` (clock times of pinning and of the last request), and the ``turns`` routed on it."""

    model: str
    rank: int
    since: float
    used: float
    turns: int = 1


class SessionStore(Protocol):
    """The pins of every namespace. ``now``: the clock (seconds) the caller routes by."""

    def get(self, ns: str, sid: str, now: float) -> Pin | None:
        """The live pin of ``sid`` in ``ns``, marked used (None: none, or expired)."""
        ...

    def raise_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> tuple[Pin, Pin | None]:
        """Pin ``sid`` to ``model`` unless its live pin ranks at least as high, in one step; returns
        (the pin now, the pin before). Never moves a pin down."""
        ...

    def set_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> Pin | None:
        """Pin ``sid`` to ``model`` whatever it was (a model that failed, or that cannot serve the
        request); returns the pin before."""
        ...

    def evictions(self) -> dict[str, int]:
        """Pins dropped so far: {"lru": n, "ttl": n}."""
        ...


class MemorySessionStore:
    """Pins in this process: ``capacity`` pins in all, ``per_key`` at most per namespace (default:
    a quarter of the capacity), each forgotten ``ttl_s`` after its last use."""

    def __init__(self, capacity: int = 100_000, ttl_s: float = 3600.0, per_key: int | None = None) -> None:
        per_key = max(1, capacity // 4) if per_key is None else per_key
        if capacity < 1 or not 1 <= per_key <= capacity:
            raise UsageError(
                f"session store: need capacity >= 1 and 1 <= per_key <= capacity, got {capacity} / {per_key}"
            )
        if not (ttl_s > 0 and math.isfinite(ttl_s)):
            raise UsageError(f"session store: ttl_s must be a positive number of seconds, got {ttl_s}")
        self.capacity, self.per_key, self.ttl_s = capacity, per_key, float(ttl_s)
        self._ns: dict[str, OrderedDict[str, Pin]] = {}  # each namespace's pins, least recently used first
        self._size = 0
        self._evicted = {"lru": 0, "ttl": 0}

    def __len__(self) -> int:
        return self._size

    def count(self, ns: str) -> int:
        """Pins held by namespace ``ns``."""
        return len(self._ns.get(ns, ()))

    def get(self, ns: str, sid: str, now: float) -> Pin | None:
        pins = self._ns.get(ns)
        pin = pins.get(sid) if pins is not None else None
        if pin is None or pins is None:
            return None
        if now - pin.used > self.ttl_s:
            self._drop(ns, sid, "ttl")
            return None
        pin = replace(pin, used=max(now, pin.used), turns=pin.turns + 1)
        pins[sid] = pin
        pins.move_to_end(sid)
        return pin

    def raise_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> tuple[Pin, Pin | None]:
        before = self._live(ns, sid, now)
        if before is not None and before.rank >= rank:
            pin = replace(before, used=max(now, before.used))
        else:
            pin = Pin(model, rank, now, now, before.turns if before is not None else 1)
        self._put(ns, sid, pin, now)
        return pin, before

    def set_pin(self, ns: str, sid: str, model: str, rank: int, now: float) -> Pin | None:
        before = self._live(ns, sid, now)
        self._put(ns, sid, Pin(model, rank, now, now, before.turns if before is not None else 1), now)
        return before

    def evictions(self) -> dict[str, int]:
        return dict(self._evicted)

    # --- internals ----------------------------------------------------------------------------
    def _live(self, ns: str, sid: str, now: float) -> Pin | None:
        pins = self._ns.get(ns)
        pin = pins.get(sid) if pins is not None else None
        if pin is not None and now - pin.used > self.ttl_s:
            self._drop(ns, sid, "ttl")
            return None
        return pin

    def _put(self, ns: str, sid: str, pin: Pin, now: float) -> None:
        pins = self._ns.setdefault(ns, OrderedDict())
        if sid in pins:
            pins[sid] = pin
            pins.move_to_end(sid)
            return
        self._expire(pins, ns, now)
        if len(pins) >= self.per_key:  # past its share: the namespace pays with its own oldest pin
            self._drop(ns, next(iter(pins)), "lru")
        elif self._size >= self.capacity:
            for other, theirs in list(self._ns.items()):
                self._expire(theirs, other, now)
            if self._size >= self.capacity:  # the namespace holding the most pins pays (ties: this one)
                most = max(self._ns, key=lambda k: (len(self._ns[k]), k == ns))
                self._drop(most, next(iter(self._ns[most])), "lru")
        pins = self._ns.setdefault(ns, pins)  # _drop removes a namespace it empties
        pins[sid] = pin
        self._size += 1

    def _expire(self, pins: OrderedDict[str, Pin], ns: str, now: float) -> None:
        """Drop ``ns``'s expired pins (the least recently used come first)."""
        while pins:
            sid, pin = next(iter(pins.items()))
            if now - pin.used <= self.ttl_s:
                return
            self._drop(ns, sid, "ttl")

    def _drop(self, ns: str, sid: str, why: str) -> None:
        pins = self._ns[ns]
        del pins[sid]
        self._size -= 1
        self._evicted[why] += 1
        if not pins:
            del self._ns[ns]


def monotonic() -> float:
    """The clock the rules use when the caller gives none."""
    return time.monotonic()


__all__ = ["MemorySessionStore", "Pin", "SessionStore", "monotonic"]
