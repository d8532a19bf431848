"""The server's running estimate of what each model costs per request on this traffic
(:class:`hybridllm.routing.money.CostModel`, one per server whose models are all priced): the
budget knob in money reads it (:class:`hybridllm.routing.money_knob.MoneyBudget`, docs/control.md),
and the budget hold in money, when one runs, shares it.

:class:`MoneyHook` teaches it every routed answer's usage (a request's model chosen by the router:
a forced request says nothing of what routing costs) that the hold does not settle itself (the
hold's settle learns from its own requests: each answer is learnt once)."""

from __future__ import annotations

from hybridllm.routing.money import CostModel, estimate_prompt_tokens

from ..hooks import BaseHook, RequestContext
from .hold import TICKET

#: the request kinds whose body :func:`estimate_prompt_tokens` reads whole (the others' usage still
#: teaches the answer lengths, not the ratio of actual to estimated prompt tokens)
_ESTIMATED = frozenset({"chat", "completion"})


class MoneyHook(BaseHook):
    """Feeds ``money`` each routed answer over ``models`` (the upstreams' names, cost order)."""

    def __init__(self, money: CostModel, models: list[str]) -> None:
        self.money, self.index = money, {m: i for i, m in enumerate(models)}

    async def after_sent(self, ctx: RequestContext) -> None:
        decided = ctx.decided
        if decided is None or decided.row is None or not ctx.usage or ctx.get(TICKET) is not None:
            return
        model = self.index.get(ctx.model)
        if model is None:
            return
        body = ctx.body if ctx.kind in _ESTIMATED else None
        self.money.after(model, ctx.usage, None if body is None else estimate_prompt_tokens(body))


__all__ = ["MoneyHook"]
