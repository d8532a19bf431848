"""The knob's promise on live traffic: live estimates from the shadow pairs (:class:`LiveQuality`) and
the decider that holds a target (:class:`HoldDecider`, a wrapper of the policy's decider).

The held threshold applies to plain ``hybrid`` requests (no routing name, no ``hybridllm`` field); a
request's own knob still wins. Its state (threshold, the reason, the estimate against the target) is
on ``/metrics`` and the dashboard. docs/control.md has the algorithm and its assumptions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections import deque
from typing import Any

import numpy as np

from hybridllm.routing.estimates import RatioSums, ShadowPair, ratio_interval, realised_drop
from hybridllm.routing.live import Hold
from hybridllm.routing.policy import Fleet

from .decision import Decider, RouteDecision
from .state import StateStore

log = logging.getLogger("hybridllm.serve")


class LiveQuality:
    """The realised quality drop against always using the reference, over the last ``window``
    shadow pairs and since start, each with its 95 % interval; and each model's share of routed
    requests and the spend against always the reference (in the fleet's relative costs), over the
    last ``recent`` routed requests and since start: counted on every request, not sampled, so
    exact (no interval)."""

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

    def add_pair(self, pair: ShadowPair, job: Any = None) -> None:
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


class LiveDecider:
    """Counts each routed decision for the live shares and, with a controller, routes plain
    ``hybrid`` requests at :attr:`Hold.threshold` and feeds it each of their decisions; every other
    request is the wrapped decider's as it was."""

    def __init__(self, inner: Decider, hold: Hold | None, live: LiveQuality | None = None) -> None:
        self.inner, self.hold, self.live = inner, hold, live

    async def decide(self, model: str, extra: Any, text: str, alone: bool) -> RouteDecision:
        hold = self.hold if model == "hybrid" and extra is None else None
        if hold is not None:  # the held threshold as the request's knob: through the protocol alone
            extra = {"threshold": min(hold.threshold, 1.000001)}
        d = await self.inner.decide(model, extra, text, alone)
        if d.row is not None:
            if self.live is not None:
                self.live.count(d.target)
            if hold is not None:
                hold.observe(d.row, d.target)
                d.reason = f"{hold.reason}; threshold {hold.threshold:.4f}"
        return d


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

    def add(self, pair: ShadowPair, job: Any = None) -> None:
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


def live_families(live: LiveQuality | None, hold: Hold | None) -> list[Any]:
    """The live estimates and the controller's state as Prometheus families (built at scrape time)."""
    from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

    out: list[Any] = []
    if live is not None:
        view = live.view()
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
        out += [drop, share, pairs, spend, priced]
    if hold is not None:
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
