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

:class:`BudgetHook` is the caps' hook on the request path (:mod:`hybridllm.serve.hooks`): it admits
before the call and settles after the answer was sent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from hybridllm.routing.money import Price

from ..caps import Cap
from ..errors import RequestError, ServeConfigError
from ..hooks import BaseHook, RequestContext, Slot
from ..settle import Limits, TokenBound, price, token_bound
from ..state import StateStore
from ..upstreams import Upstreams
from ..wire import WIRES

log = logging.getLogger("hybridllm.access")
#: the error code of a request refused past a cap (``--on-cap refuse``)
REFUSED = "budget_exceeded"


@dataclass
class Reservation:
    caps: list[Cap]
    buckets: list[str]
    amount: float
    model: str


class Budget:
    """The caps of one server over a :class:`~hybridllm.serve.state.StateStore`."""

    def __init__(
        self, caps: list[Cap], store: StateStore, prices: Mapping[str, Price], on_cap: str = "downgrade",
        cheapest: int = 0, limits: Limits | None = None,
    ) -> None:  # fmt: skip
        if on_cap not in ("downgrade", "refuse"):
            raise ServeConfigError(f"on_cap {on_cap!r}: expected downgrade or refuse")
        if caps and not prices:
            raise ServeConfigError("budget caps need prices: a models file with each model's price")
        self.caps, self.store, self.prices, self.on_cap = caps, store, prices, on_cap
        self.cheapest = cheapest
        self.limits = limits or Limits({}, {})  # the models file's max_output_tokens and context_window

    def caps_for(self, key: str | None) -> list[Cap]:
        return [c for c in self.caps if c.key == "*" or c.key == key]

    def estimate(self, model: str, bound: TokenBound) -> float:
        """The request's own bound on ``model``, priced (what it reserves)."""
        return price(self.prices, model, self.limits.usage(bound, model)) or 0.0

    async def admit(
        self, key: str | None, target: int, models: list[str], bound: TokenBound, reach: list[str] | None = None,
        cheapest: int | None = None,
    ) -> tuple[int, Reservation | None, str | None]:  # fmt: skip
        """(the upstream to call, its reservation, why it was downgraded or None). Raises the 429
        of ``--on-cap refuse``. ``reach``: the models the request may be answered by (its fallbacks
        too; default its target): it reserves its bound on the dearest of them. ``cheapest``: where
        a downgrade goes (default the server's cheapest; a request's own protocol may have another)."""
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
            low = self.cheapest if cheapest is None else cheapest
            if self.on_cap == "downgrade" and target != low:
                # past the ceiling the cheapest model answers; its cost is still counted
                cheap = models[low]
                self._log_cap(key, "downgraded")
                res = Reservation(caps, [c.bucket(now) for c in caps], 0.0, cheap)
                return low, res, self._why(key, cap, f"downgraded to {cheap}")
            self._log_cap(key, "refused")
            raise RequestError(429, self._why(key, cap, "refused"), code=REFUSED)
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


#: a request's reservation while it runs (settled after its answer was sent)
RESERVATION: Slot[Reservation] = Slot("budget reservation")


class BudgetHook(BaseHook):
    """The caps on the request path. Before the call: the request reserves its own bound
    (:func:`~hybridllm.serve.settle.token_bound` of the body) on the dearest model it may reach (its
    fallbacks too), or is downgraded (the decision replaced: the cheapest model, no fallback, the
    cap named in its reason) or refused (the 429, the cap named in its reason). After the answer
    was sent: what it is charged (``ctx.cost``; 0 when nothing was) replaces the reservation."""

    def __init__(self, budget: Budget, upstreams: Upstreams) -> None:
        self.budget, self.upstreams = budget, upstreams
        self.models = [u.who for u in upstreams.ups]

    async def before_call(self, ctx: RequestContext) -> None:
        decision, body = ctx.decision, ctx.body
        assert decision is not None and body is not None
        models, api = self.models, WIRES[ctx.kind].api  # the request's protocol: its own upstreams only
        reach = self.upstreams.fallback_order(decision.target, api) if decision.may_fall_back else [decision.target]
        speakers = self.upstreams.speakers(api) or ()
        cheapest = next((i for i, ok in enumerate(speakers) if ok), None)
        try:
            target, reservation, why = await self.budget.admit(
                ctx.key, decision.target, models, token_bound(body, ctx.kind), [models[i] for i in reach], cheapest
            )
        except RequestError as exc:
            if exc.code == REFUSED:  # the refusal's reason is the cap's
                ctx.decision = replace(decision, reason=exc.message)
            raise
        if reservation is not None:
            ctx.put(RESERVATION, reservation)
        if why is not None:  # downgraded: its fallback would spend past the cap
            ctx.decision = replace(decision, target=target, reason=why, may_fall_back=False)

    async def after_sent(self, ctx: RequestContext) -> None:
        reservation = ctx.pop(RESERVATION)
        if reservation is not None:
            await self.budget.settle(reservation, ctx.cost)
