"""Live estimates from the shadow pairs and the routed traffic (:class:`QualityEstimates`): the realised
quality drop and spend against always the reference, with their 95 % intervals, and each model's
share; on ``/metrics`` (:func:`estimates_families`) and the dashboard. It is a hook on the request
path (it counts each routed decision) and a sink of the shadow checks' pairs."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from hybridllm.routing.estimates import RatioSums, ShadowPair, ratio_interval, realised_drop
from hybridllm.routing.policy import Fleet

from ..hooks import BaseHook, RequestContext


class QualityEstimates(BaseHook):
    """The realised quality drop against always using the reference, over the last ``window``
    shadow pairs and since start, each with its 95 % interval; and each model's share of routed
    requests and the spend against always the reference (in the fleet's relative costs), over the
    last ``recent`` routed requests and since start: counted on every request, not sampled, so
    exact (no interval): each routed decision is counted before its call (the hook's
    ``before_call``), as the decider made it."""

    def __init__(self, fleet: Fleet, window: int = 200, recent: int = 1000) -> None:
        self.fleet = fleet
        self.window: deque[ShadowPair] = deque(maxlen=window)
        self.total = RatioSums()
        self.pairs = 0
        self.routed = [0] * len(fleet.models)
        self.recent: deque[int] = deque(maxlen=recent)
        # spend against always the reference in the models' prices, from the priced pairs
        self.priced: deque[tuple[float, float, float]] = deque(maxlen=window)
        self.spend_total = RatioSums(span=0.0)

    async def before_call(self, ctx: RequestContext) -> None:
        decision = ctx.decided
        if decision is not None and decision.row is not None:
            self.count(decision.target)

    def add_pair(self, pair: ShadowPair, job: object = None) -> None:
        q_ref = pair.quality(self.fleet.ref)
        if q_ref is None:
            return
        self.window.append(pair)
        self.total.add(q_ref - pair.q_served, q_ref, pair.weight)
        self.pairs += 1
        c_ref = pair.cost(self.fleet.ref)
        if pair.c_served is not None and c_ref is not None and c_ref > 0:
            self.priced.append((pair.c_served, c_ref, pair.weight))
            self.spend_total.span = max(self.spend_total.span, pair.c_served, c_ref)  # the pseudo-observations' reach
            self.spend_total.add(pair.c_served, c_ref, pair.weight)

    def count(self, model: int) -> None:
        self.routed[model] += 1
        self.recent.append(model)

    def _priced_window(self) -> tuple[float, float, float] | None:
        if not self.priced:
            return None
        c, r, w = (np.array(x, dtype=np.float64) for x in zip(*self.priced, strict=True))
        return ratio_interval(c, r, w, span=float(max(c.max(), r.max())))

    def _spend(self, counts: list[int]) -> float | None:
        n = sum(counts)
        costs = self.fleet.costs
        return sum(c * k for c, k in zip(costs, counts, strict=True)) / (n * costs[self.fleet.ref]) * 100 if n else None

    def view(self) -> dict[str, Any]:
        def iv(got: tuple[float, float, float] | None) -> dict[str, float] | None:
            return None if got is None else {"value": got[0], "low": got[1], "high": got[2]}

        n = sum(self.routed)
        recent = [0] * len(self.fleet.models)
        for m in self.recent:
            recent[m] += 1
        return {
            "pairs": self.pairs,
            "method": "ratio estimator over the shadow pairs (weights 1/rate), delta-method 95 % interval",
            "quality_drop": {
                "window": iv(realised_drop(list(self.window), self.fleet.ref)),
                "since_start": iv(self.total.interval()),
            },
            "window_pairs": len(self.window),
            "shares": {m: (c / n * 100.0 if n else None) for m, c in zip(self.fleet.models, self.routed, strict=True)},
            "recent_shares": {
                m: (c / len(self.recent) * 100.0 if self.recent else None)
                for m, c in zip(self.fleet.models, recent, strict=True)
            },
            "spend_priced": {
                "window": iv(self._priced_window()),
                "since_start": iv(self.spend_total.interval()),
                "method": "served cost / the reference's cost on priced shadow pairs (weights 1/rate), "
                "delta-method 95 % interval; % of always the reference",
            },
            "spend": {
                "recent": self._spend(recent),
                "since_start": self._spend(self.routed),
                "recent_requests": len(self.recent),
                "unit": "% of always the reference, in the models' relative costs",
            },
        }


def estimates_families(estimates: QualityEstimates) -> list[Metric]:
    """The live estimates as Prometheus families (built at scrape time)."""
    view = estimates.view()
    drop = GaugeMetricFamily(
        "hybridllm_live_quality_drop",
        "realised quality drop vs always the reference, % (shadow pairs; low/high: 95 % interval)",
        labels=["scope", "bound"],
    )
    for scope, est in view["quality_drop"].items():
        for bound in ("value", "low", "high"):
            if est is not None:
                drop.add_metric([scope, bound], est[bound])
    share = GaugeMetricFamily("hybridllm_live_share", "share of routed requests per model, %", labels=["model"])
    for m, v in view["shares"].items():
        if v is not None:
            share.add_metric([m], v)
    pairs = GaugeMetricFamily("hybridllm_live_shadow_pairs", "shadow pairs scored since start")
    pairs.add_metric([], view["pairs"])
    spend = GaugeMetricFamily("hybridllm_live_spend", "spend vs always the reference, % (relative costs)",
                              labels=["scope"])  # fmt: skip
    for scope in ("recent", "since_start"):
        if view["spend"][scope] is not None:
            spend.add_metric([scope], view["spend"][scope])
    priced = GaugeMetricFamily(
        "hybridllm_live_spend_priced",
        "spend vs always the reference in the models' prices, % (priced shadow pairs; low/high: 95 % interval)",
        labels=["scope", "bound"],
    )
    for scope, est in view["spend_priced"].items():
        if isinstance(est, dict):
            for bound in ("value", "low", "high"):
                priced.add_metric([scope, bound], est[bound])
    return [drop, share, pairs, spend, priced]
