"""What the proxy counts and logs: each request's :class:`~.hooks.RequestContext`, once it ended,
turned into Prometheus metrics, one JSON access-log line, and the traffic window the dashboard reads
(:mod:`.traffic`); each decision counted once (:meth:`Metrics.decided`)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .hooks import RequestContext
from .settle import price
from .traffic import Event, TrafficWindow

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from hybridllm.routing.money import Price

    from .decision import RouteDecision

log = logging.getLogger("hybridllm.access")
#: built once (json.dumps with a non-default option builds an encoder per call)
_JSON_LINE = json.JSONEncoder(ensure_ascii=False)


class Metrics:
    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        reference: str | None = None,
        models: list[str] | None = None,
        state_dir: str | None = None,
    ) -> None:
        """``state_dir``: set for the workers of one ``--workers N`` server; their counters are
        then prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the
        runner) and /metrics adds them up."""
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "hybridllm_requests", "requests answered, by upstream model and status", ["model", "status"], registry=reg
        )
        self.decisions = Counter("hybridllm_routing_decisions", "routing decisions", ["model", "reason"], registry=reg)
        self.tokens = Counter("hybridllm_tokens", "tokens reported by upstreams", ["model", "kind"], registry=reg)
        self.errors = Counter("hybridllm_upstream_errors", "failed upstream calls", ["model"], registry=reg)
        self.fallbacks = Counter(
            "hybridllm_fallbacks",
            "requests answered by another model after a failure",
            ["from_model", "to_model"],
            registry=reg,
        )
        self.prices, self.reference = prices or {}, reference
        share = os.path.join(state_dir, "traffic") if state_dir else None
        if share:
            os.makedirs(share, exist_ok=True)
        self.traffic = TrafficWindow(models or [], share_dir=share)
        self.multiprocess = bool(state_dir and os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.worker = os.getpid() if state_dir else None  # named in the access log of --workers N
        self.cost = Counter(
            "hybridllm_cost",
            "estimated cost of answered requests (usage x price per 1M tokens)",
            ["model"],
            registry=reg,
        )
        self.cost_best = Counter(
            "hybridllm_cost_always_best", "what the same requests would have cost on the best model", registry=reg
        )
        self.shadow_calls = Counter(
            "hybridllm_shadow_calls",
            "shadow checks by the model asked and outcome (scored, ceiling, busy, upstream_error, judge_error)",
            ["model", "outcome"],
            registry=reg,
        )
        self.shadow_spent = Counter(
            "hybridllm_shadow_cost",
            "estimated cost of shadow checks (not in hybridllm_cost), by model and role (shadow answer or judge)",
            ["model", "role"],
            registry=reg,
        )
        self.shadow_tokens = Counter(
            "hybridllm_shadow_tokens",
            "tokens of shadow checks, priced or not, by model, role (shadow answer or judge) and kind",
            ["model", "role", "kind"],
            registry=reg,
        )
        self.steering = Counter(
            "hybridllm_steering_suspected",
            "times a key's share of the dearer models jumped well above its own history",
            ["key"],
            registry=reg,
        )
        self.feedback = Counter("hybridllm_feedback", "/v1/feedback scores recorded, by model", ["model"], registry=reg)
        #: callables giving extra metric families at scrape time (live estimates, the hold)
        self.extra: list[Callable[[], Iterable[Metric]]] = []
        self.router = Histogram(
            "hybridllm_router_seconds",
            "router decision latency",
            registry=reg,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
        )

    def cost_of(self, model: str, usage: dict[str, Any]) -> float | None:
        """Estimated cost of an answer with this usage on ``model`` (None when a price or a count is missing)."""
        return price(self.prices, model, usage)

    def shadow_cost(self, model: str, usage: dict[str, Any], role: str = "shadow") -> float | None:
        """The tokens and cost of a shadow answer (``role`` shadow) or of a judge's verdict (``judge``),
        counted apart from the served traffic's; None when ``model`` has no price (its tokens still count)."""
        for k in ("prompt_tokens", "completion_tokens"):
            v = usage.get(k)
            if isinstance(v, int) and _count(v):
                self.shadow_tokens.labels(model, role, k.split("_")[0]).inc(v)
        cost = self.cost_of(model, usage)
        if cost is not None:
            self.shadow_spent.labels(model, role).inc(cost)
        return cost

    def decided(self, model: str, decision: RouteDecision) -> None:
        """Count one decision (the decider's, once per request): the router's when it scored the
        prompt, else a forced one."""
        self.decisions.labels(model, "router" if decision.score is not None else "forced").inc()

    def _price(self, rec: RequestContext) -> None:
        """The cost of one charged request (``rec.cost``, computed by the proxy) counted, with the
        always-best counterfactual (the same tokens on the reference) when both are priced."""
        if rec.cost is None or self.reference is None or self.reference not in self.prices:
            return
        usage = rec.billed if rec.billed is not None else rec.usage  # usage, else the request's bound
        best = self.cost_of(self.reference, usage)
        if best is None:
            return
        self.cost.labels(rec.model).inc(rec.cost)
        self.cost_best.inc(best)
        rec.best_cost = best

    def exposition(self) -> bytes:
        """The /metrics body: this process's counters, or every worker's added up; then the saving
        ratio, computed from the (summed) cost counters at scrape time so it is right across workers."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily

        reg = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
        spent = best = 0.0
        for family in reg.collect():
            for s in family.samples:
                if s.name == "hybridllm_cost_total":
                    spent += s.value
                elif s.name == "hybridllm_cost_always_best_total":
                    best += s.value
        extra_families = self.extra
        saving = GaugeMetricFamily("hybridllm_saving_ratio", "1 - cost / cost on the best model, so far")
        if best > 0:
            saving.add_metric([], 1 - spent / best)

        class _Saving:
            def collect(self) -> list[Any]:
                return ([saving] if best > 0 else []) + [f for fn in extra_families for f in fn()]

        extra = CollectorRegistry()
        extra.register(_Saving())
        return generate_latest(reg) + generate_latest(extra)

    def count_shadow(self, model: str, outcome: str) -> None:
        self.shadow_calls.labels(model, outcome).inc()

    def record(self, rec: RequestContext, log_prompts: bool) -> None:
        self.requests.labels(rec.model, str(rec.status)).inc()
        self._price(rec)
        decision = rec.decision
        score, threshold = (None, None) if decision is None else (decision.score, decision.threshold)
        for k in ("prompt_tokens", "completion_tokens"):
            v = rec.usage.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                self.tokens.labels(rec.model, k.split("_")[0]).inc(v)
        latency = time.perf_counter() - rec.t0
        self.traffic.add(
            Event(time.time(), rec.model, rec.status, latency, score, rec.fallback_from is not None),
            rec.cost,
            rec.best_cost,
        )
        line: dict[str, Any] = {
            "id": rec.rid,
            "model": rec.model,
            "status": rec.status,
            "latency_ms": round(latency * 1000, 1),
            "score": score,
            "threshold": threshold,
            "stream": rec.stream,
            "api": rec.kind,
            "prompt_tokens": rec.usage.get("prompt_tokens"),
            "completion_tokens": rec.usage.get("completion_tokens"),
        }
        if rec.key is not None:
            line["key"] = rec.key
        if rec.best_cost is not None and rec.cost is not None:  # what hybridllm_cost counted
            line["cost"] = round(rec.cost, 8)
        if rec.outcome is not None:
            line["outcome"] = rec.outcome
        if rec.billed is not None:
            line["charged"] = "bound"  # no usage came: the request's own bound (docs/control.md)
        if self.worker is not None:
            line["worker"] = self.worker
        if rec.fallback_from:
            line["fallback_from"] = rec.fallback_from
        if decision is not None and decision.scores is not None:
            line["scores"] = decision.scores
        if rec.error:
            line["error"] = rec.error[:300]
        if log_prompts and rec.prompt is not None:
            line["prompt"] = rec.prompt
        if rec.log:
            for k, v in rec.log.items():
                line.setdefault(k, v)
        log.info(_JSON_LINE.encode(line))


def _count(v: object) -> bool:
    """A token count an upstream reported: a non-negative int (a bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
