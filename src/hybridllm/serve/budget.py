"""Hard spend ceilings per client key and overall, per period, checked before the upstream call.

``--budget-cap team-a=5/day`` (a key named in ``--serve-api-key-env`` as ``team-a:SECRET``), ``*=100/day``
for all traffic together; periods ``minute``, ``hour``, ``day`` (UTC), ``month`` (30 days). Each
admitted request reserves its own upper bound (:func:`~hybridllm.serve.settle.token_bound`: its prompt
bounded from its size, its ``max_tokens`` clamped by the model's maximum output, priced on the
dearest model it may reach) in the counters of its own key's caps and of ``*``, while that counter's
committed spend (spent + reserved) is under the cap; what it is charged (its usage, else its bound)
replaces the reservation when it ends. So concurrent requests cannot all slip under a ceiling: the
overshoot of a key's cap is at most one request's bound, and one key's reservations never count
against another key's cap (the ``*`` cap is shared by all keys by definition). Past a ceiling a request
goes to the cheapest model (``--on-cap downgrade``, the default: the ceiling then bounds what the
dearer models cost, and the cheapest one's answers are still counted) or is refused with an
OpenAI-shaped 429 (``--on-cap refuse``, which bounds all spend), with the reason in
``x-hybridllm-reason``; never silently. A request already routed to the cheapest model is refused
past the ceiling either way.

Also here: the per-key steering signal (:class:`SteeringWatch`), raised when a key's share of the
dearer models over its last requests jumps well above its own history (what a client steering its
prompts toward the expensive model looks like), with or without caps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import RequestError, ServeConfigError
from .settle import DEFAULT_MAX_OUTPUT_TOKENS, TokenBound, price
from .state import StateStore

log = logging.getLogger("hybridllm.access")
PERIODS = {"minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}


@dataclass(frozen=True)
class Cap:
    key: str  # a key's name, or "*" for all traffic
    amount: float
    period: str

    @property
    def seconds(self) -> int:
        return PERIODS[self.period]

    def bucket(self, now: float) -> str:
        """The counter of the current period (periods start at multiples of their length, UTC)."""
        start = int(now // self.seconds) * self.seconds
        return f"{_slug(self.key)}:{self.period}:{start}"


def _slug(name: str) -> str:
    return "all" if name == "*" else hashlib.sha256(name.encode()).hexdigest()[:16]


def parse_cap(text: str) -> Cap:
    """``KEY=AMOUNT/PERIOD`` (AMOUNT in the models file's price unit)."""
    key, sep, rest = text.partition("=")
    amount_s, slash, period = rest.partition("/")
    try:
        amount = float(amount_s)
    except ValueError:
        amount = math.nan
    key = key.strip()
    if not sep or not slash or not key or period not in PERIODS or not (amount >= 0 and math.isfinite(amount)):
        raise ServeConfigError(
            f"budget cap {text!r}: expected KEY=AMOUNT/PERIOD, e.g. team-a=5/day or *=100/day "
            f"(periods: {', '.join(PERIODS)})"
        )
    return Cap(key, amount, period)


@dataclass
class Reservation:
    caps: list[Cap]
    buckets: list[str]
    amount: float
    model: str


@dataclass
class _Steering:
    long: float = 0.0  # running share of dear models over the key's history (slow average)
    n: int = 0
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=50))
    flagged: bool = False


class Budget:
    """The caps of one server over a :class:`~hybridllm.serve.state.StateStore`."""

    def __init__(
        self, caps: list[Cap], store: StateStore, prices: dict[str, tuple[float, float]], on_cap: str = "downgrade",
        cheapest: int = 0, max_output: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        if on_cap not in ("downgrade", "refuse"):
            raise ServeConfigError(f"on_cap {on_cap!r}: expected downgrade or refuse")
        if caps and not prices:
            raise ServeConfigError("budget caps need prices: a models file with each model's price")
        self.caps, self.store, self.prices, self.on_cap = caps, store, prices, on_cap
        self.cheapest = cheapest
        self.max_output = max_output or {}  # the models file's max_output_tokens per model

    def caps_for(self, key: str | None) -> list[Cap]:
        return [c for c in self.caps if c.key == "*" or c.key == key]

    def estimate(self, model: str, bound: TokenBound) -> float:
        """The request's own bound on ``model``, priced (what it reserves)."""
        return price(self.prices, model, bound.usage(self.max_output.get(model, DEFAULT_MAX_OUTPUT_TOKENS))) or 0.0

    async def admit(
        self, key: str | None, target: int, models: list[str], bound: TokenBound, reach: list[str] | None = None
    ) -> tuple[int, Reservation | None, str | None]:
        """(the upstream to call, its reservation, why it was downgraded or None). Raises the 429
        of ``--on-cap refuse``. ``reach``: the models the request may be answered by (its fallbacks
        too; default its target): it reserves its bound on the dearest of them."""
        caps = self.caps_for(key)
        if not caps:
            return target, None, None
        now = time.time()
        model = models[target]
        amount = max(self.estimate(m, bound) for m in (reach or [model]))
        taken: list[tuple[Cap, str]] = []
        for cap in caps:
            bucket = cap.bucket(now)
            if await self.store.admit(bucket, amount, cap.amount, cap.seconds * 2):
                taken.append((cap, bucket))
                continue
            for c, b in taken:  # give back what this request reserved
                await self.store.settle(b, amount, 0.0, c.seconds * 2)
            if self.on_cap == "downgrade" and target != self.cheapest:
                # past the ceiling the cheapest model answers; its cost is still counted
                cheap = models[self.cheapest]
                self._log_cap(key, "downgraded")
                res = Reservation(caps, [c.bucket(now) for c in caps], 0.0, cheap)
                return self.cheapest, res, self._why(key, cap, f"downgraded to {cheap}")
            self._log_cap(key, "refused")
            msg = self._why(key, cap, "refused")
            raise RequestError(429, msg, code="budget_exceeded", headers={"x-hybridllm-reason": msg})
        return target, Reservation([c for c, _ in taken], [b for _, b in taken], amount, model), None

    def _why(self, key: str | None, cap: Cap, what: str) -> str:
        who = "all traffic" if cap.key == "*" else f"key {key}"
        setting = f"budget_cap {cap.key}={cap.amount:g}/{cap.period}"
        return f"budget cap of {who} reached ({cap.amount:g} per {cap.period}; {setting}): {what}"

    def _log_cap(self, key: str | None, outcome: str) -> None:
        log.info(json.dumps({"event": "budget_cap", "key": key, "outcome": outcome}))

    async def settle(self, res: Reservation | None, cost: float | None) -> None:
        """The request ended: what it is charged (0 for one whose upstream was never asked or failed)
        replaces the reservation."""
        if res is None:
            return
        cost = 0.0 if cost is None else float(cost)
        for cap, bucket in zip(res.caps, res.buckets, strict=True):
            await self.store.settle(bucket, res.amount, cost, cap.seconds * 2)


class SteeringWatch:
    """The per-key steering signal, for every server whose clients have keys (caps or not): raised
    once when a key's share of the dearer models (``dear``: indices of the fleet) over its last 50
    routed requests jumps well above its own history, by 30 points and to more than twice it."""

    def __init__(self, dear: set[int]) -> None:
        self.dear = dear
        self.steering: dict[str, _Steering] = {}

    def observe(self, key: str | None, target: int) -> bool:
        """Feed one routed decision of ``key``; True when this one raised the steering flag."""
        if key is None:
            return False
        st = self.steering.setdefault(key, _Steering())
        dear = 1 if target in self.dear else 0
        st.recent.append(dear)
        st.n += 1
        st.long += (dear - st.long) / min(st.n, 1000)
        if st.n < 200 or len(st.recent) < st.recent.maxlen:  # type: ignore[operator]
            return False
        short = sum(st.recent) / len(st.recent)
        jumped = short - st.long > 0.3 and short > 2 * st.long
        if jumped and not st.flagged:
            st.flagged = True
            log.info(json.dumps({"event": "steering_suspected", "key": key, "dear_share_recent": round(short, 3),
                                 "dear_share_history": round(st.long, 3)}))  # fmt: skip
            return True
        if not jumped:
            st.flagged = False
        return False
