"""The knob's promise on live traffic: the decider that holds a target (:class:`HoldDecider`, a
wrapper of the policy's decider) and the sharing of its shadow pairs across replicas
(:class:`HoldSync`, with ``--state``).

The held threshold applies to plain ``hybrid`` requests (no routing name, no ``hybridllm`` field); a
request's own knob still wins. Its state (threshold, the reason, the estimate against the target) is
on ``/metrics`` (:func:`hold_families`) and the dashboard. docs/control.md has the algorithm and its
assumptions. (The controller itself, :class:`hybridllm.routing.live.Hold`, is pure arithmetic.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from hybridllm.routing.estimates import ShadowPair
from hybridllm.routing.live import Hold
from hybridllm.routing.money import estimate_prompt_tokens
from hybridllm.routing.policy import Fleet

from ..decision import Decider, RouteDecision
from ..hooks import BaseHook, RequestContext, Slot
from ..state import StateStore
from .sessions import SESSION

log = logging.getLogger("hybridllm.serve")


class HoldDecider:
    """Routes plain ``hybrid`` requests at :attr:`Hold.threshold` and feeds the hold each of their
    decisions; every other request is the wrapped decider's as it was. It composes through the
    :class:`~hybridllm.serve.decision.Decider` protocol alone: the held threshold goes in as the
    request's knob, and the decision comes back with the hold's reason (a new one: decisions are
    frozen)."""

    def __init__(self, inner: Decider, hold: Hold) -> None:
        self.inner, self.hold = inner, hold

    async def decide(self, model: str, extra: Any, text: str, alone: bool) -> RouteDecision:
        if model != "hybrid" or extra is not None:
            return await self.inner.decide(model, extra, text, alone)
        hold = self.hold
        d = await self.inner.decide(model, {"threshold": min(hold.threshold, 1.000001)}, text, alone)
        if d.row is not None:  # observed by HoldHook once the request's target is final
            d = HeldDecision(**{f.name: getattr(d, f.name) for f in fields(d)})
            d = replace(d, reason=f"{hold.reason}; threshold {hold.threshold:.4f}")
        return d


@dataclass(frozen=True, slots=True)
class HeldDecision(RouteDecision):
    """A decision routed at the hold's threshold (what :class:`HoldHook` observes)."""


#: a held request's ticket with the hold (settled with its usage after the answer)
TICKET: Slot[int] = Slot("the hold's ticket")


class HoldHook(BaseHook):
    """Feeds the hold each request it routed, where the request really goes: before the call, the
    decision in force (after the capability filter and the session rules moved it) and, in money,
    the prompt's estimated tokens (:func:`hybridllm.routing.money.estimate_prompt_tokens` of the
    body), priced with none of them cached on its model when the session rules moved its
    conversation there (``SESSION``'s decision switched); after the answer, its usage
    (:meth:`Hold.settle`: its cost in money, the model that answered). Goes after the hooks that
    move a request, before the ones that may refuse it."""

    def __init__(self, hold: Hold, models: list[str]) -> None:
        self.hold, self.index = hold, {m: i for i, m in enumerate(models)}

    async def before_call(self, ctx: RequestContext) -> None:
        held, decision = ctx.decided, ctx.decision
        if not isinstance(held, HeldDecision) or held.row is None or decision is None:
            return
        hold = self.hold
        prompt = estimate_prompt_tokens(ctx.body) if hold.money is not None and ctx.body is not None else None
        session = ctx.get(SESSION)  # a turn the session rules moved re-reads its history uncached
        moved = session is not None and session.decision.switched
        ticket = hold.observe(held.row, decision.target, prompt, moved)
        if hold.money is not None:
            ctx.put(TICKET, ticket)

    async def after_sent(self, ctx: RequestContext) -> None:
        ticket = ctx.get(TICKET)  # kept: the server's money hook leaves a settled request to the hold
        if ticket is not None and ctx.usage:
            self.hold.settle(ticket, ctx.usage, self.index.get(ctx.model))


class HoldSync:
    """The controller's shadow pairs shared by every replica pointed at one state store: every
    ``every_s`` seconds this process's new pairs are appended to the shared list (the last
    ``Hold.pairs.maxlen``) and the controller goes on from the whole list. One list per fleet
    (its models' names, hashed), so that servers of different fleets never mix their pairs."""

    def __init__(self, hold: Hold, store: StateStore, every_s: float = 1.0) -> None:
        self.hold, self.store, self.every_s = hold, store, every_s
        digest = hashlib.sha256(json.dumps(list(hold.fleet.models)).encode()).hexdigest()[:16]
        self.key = f"hold:pairs:{digest}"
        self.new: list[ShadowPair] = []

    def add(self, pair: ShadowPair, job: object = None) -> None:
        self.new.append(pair)

    async def sync(self) -> None:
        new, self.new = self.new, []
        keep = self.hold.pairs.maxlen or 400
        got = await self.store.share(self.key, [_encode(p) for p in new], keep)
        if got is None:
            return  # nothing shared (one process, or Redis down): the controller has its own pairs
        pairs = [p for p in (_decode(x, self.hold.fleet) for x in got) if p is not None]
        self.hold.replace_pairs(pairs + self.new, "all replicas")  # + those that came in meanwhile

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sync()
            except Exception:  # the store says when it is down; anything else must not end the loop
                log.exception("hold: sharing the shadow pairs failed")


def _encode(p: ShadowPair) -> str:
    return json.dumps([list(p.scores), p.served, p.other, p.q_served, p.q_other, p.weight, p.t, list(p.extra)])


def _decode(text: str, fleet: Fleet) -> ShadowPair | None:
    """A shared record; None for one this server cannot use (another version's, a stray or hostile
    write: the wrong number of scores, a model outside the fleet, a score outside [0, 1], a weight
    that is not a positive finite number), so that nothing read back from the store can break the
    controller's step on the request path."""
    try:
        scores, served, other, q_served, q_other, weight, t, extra = json.loads(text)
        more = tuple((int(m), float(q)) for m, q in extra)
        pair = ShadowPair(tuple(float(x) for x in scores), int(served), int(other), float(q_served),
                          float(q_other), float(weight), float(t), more)  # fmt: skip
    except (ValueError, TypeError):
        return None
    n_models = len(fleet.models)
    models = [pair.served, pair.other, *(m for m, _ in pair.extra)]
    qualities = [pair.q_served, pair.q_other, *(q for _, q in pair.extra)]
    if (
        len(pair.scores) != len(fleet.candidates)  # a score per model cheaper than the reference
        or not all(math.isfinite(x) for x in pair.scores)
        or not all(0 <= m < n_models for m in models)
        or not all(0.0 <= q <= 1.0 for q in qualities)
        or not (math.isfinite(pair.weight) and pair.weight > 0)
    ):
        return None
    return pair


def hold_families(hold: Hold) -> list[Metric]:
    """The hold's state as Prometheus families (built at scrape time)."""
    out: list[Metric] = []
    st = hold.state()
    thr = GaugeMetricFamily("hybridllm_hold_threshold", "the held threshold plain hybrid requests are routed at")
    thr.add_metric([], st["threshold"])
    target = GaugeMetricFamily("hybridllm_hold_target", "the held target, %", labels=["kind"])
    target.add_metric([st["kind"]], st["target"])
    info = InfoMetricFamily("hybridllm_hold", "why the held threshold is where it is")
    info.add_metric([], {"kind": st["kind"], "reason": st["reason"][:200], "pairs_from": st["pairs_from"]})
    pairs = GaugeMetricFamily(
        "hybridllm_hold_pairs", "shadow pairs the controller goes on (every replica's with --state)"
    )
    pairs.add_metric([], st["pairs"])
    out += [thr, target, info, pairs]
    if st["estimate"] is not None:
        est = GaugeMetricFamily("hybridllm_hold_estimate", "the held measure now, % (the controller's view)",
                                labels=["bound"])  # fmt: skip
        for bound in ("value", "low", "high"):
            est.add_metric([bound], st["estimate"][bound])
        out.append(est)
    return out
