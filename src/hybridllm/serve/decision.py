"""The decision seam of the request path: which upstream answers one request, and why.

The proxy asks a :class:`Decider` and acts on the :class:`RouteDecision` it returns; it never looks
inside. :class:`PolicyDecider` is the default: the request's knob (its routing name, the body's
``hybridllm`` field, or the run-time default) resolved into a threshold, the router's scores for the
prompt (micro-batched with concurrent requests), and the policy's choice among the upstreams. A
controller that holds a target on live traffic (:class:`~hybridllm.serve.control.hold.HoldDecider`)
or another strategy wraps a ``Decider`` through this protocol alone (or replaces it) without touching
the handler; what runs around the upstream call (budget caps, shadow checks) is a hook (:mod:`.hooks`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hybridllm.routing.policy import Fleet

from .admin_knob import AdminKnob
from .batcher import MicroBatcher
from .errors import RequestError
from .knobs import parse_knob
from .options import ServeOptions
from .telemetry import Metrics
from .upstreams import Upstreams, as_row


class ServingRouter(Protocol):
    """What the proxy needs of a router (:class:`hybridllm.Router` is one)."""

    config: Mapping[str, Any]
    fleet: Fleet
    turns: str

    def score(self, prompts: Sequence[Any]) -> np.ndarray: ...

    def threshold(
        self,
        max_quality_drop: float | None = None,
        cost_advantage: float | None = None,
        threshold: float | None = None,
        budget: float | None = None,
    ) -> tuple[float, str]: ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one request goes: ``target`` indexes the upstreams (cost order), ``reason`` is the
    ``x-hybridllm-reason`` header, ``may_fall_back`` whether a failed call may go to another model;
    a routed decision also carries the score shown, the threshold and every scored model's score.
    Frozen once made: a wrapper or a hook that changes it makes a new one (``dataclasses.replace``)."""

    target: int
    reason: str
    may_fall_back: bool
    score: float | None = None
    threshold: float | None = None
    scores: dict[str, float] | None = None
    #: the router's score of each candidate model (cost order), as the policy compared them
    row: tuple[float, ...] | None = None
    #: the upstreams that can serve the request (None: every one): a failed call falls back only to
    #: these (a hook that knows what the request needs sets it)
    allowed: frozenset[int] | None = None


class Decider(Protocol):
    async def decide(self, model: str, extra: Any, text: str, alone: bool) -> RouteDecision:
        """The decision for a request naming ``model``, with its ``hybridllm`` body field ``extra``
        and the text the router reads; ``alone``: no other request is in flight. Raises
        :class:`~hybridllm.serve.knobs.KnobError` or :class:`~hybridllm.serve.errors.RequestError`
        for a request that cannot be routed."""
        ...


class PolicyDecider:
    """The router's decision (see the module docstring). ``start()`` and ``stop()`` run the
    micro-batcher on the serving event loop."""

    def __init__(
        self, router: ServingRouter, upstreams: Upstreams, knob: AdminKnob, metrics: Metrics, options: ServeOptions,
        forced: dict[str, int],
    ) -> None:  # fmt: skip
        self.router, self.upstreams, self.knob, self.metrics = router, upstreams, knob, metrics
        self.options, self.forced = options, forced
        self.batcher: MicroBatcher | None = None

    def start(self) -> None:
        self.batcher = MicroBatcher(self.router, self.options.batch_window_s)
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    async def decide(self, model: str, extra: Any, text: str, alone: bool) -> RouteDecision:
        opts, upstreams = self.options, self.upstreams
        if model == "hybrid" and opts.state_dir:
            self.knob.sync()  # another worker may have changed it
        if model == "hybrid" and self.knob.name != "hybrid":
            model = self.knob.name
        knob = parse_knob(model, extra, self.forced)
        if knob.force:
            target = self.forced[knob.force]
            return RouteDecision(target, f"forced {upstreams.label(target)}", bool(knob.fallback))
        try:
            threshold, reason = self.knob.threshold(knob)
        except ValueError as exc:
            raise RequestError(400, str(exc), "model") from None
        fall_back = opts.fallback if knob.fallback is None else knob.fallback
        return await self.routed(text, alone, threshold, reason, fall_back)

    async def routed(self, text: str, alone: bool, threshold: float, reason: str, fall_back: bool) -> RouteDecision:
        """The router's decision at a given threshold (a controller's, or the request's knob's)."""
        upstreams = self.upstreams
        assert self.batcher is not None, "PolicyDecider.start() runs before the first request"
        r0 = time.perf_counter()
        try:
            scores = await self.batcher.score(text, alone=alone)
        except Exception as exc:
            raise RequestError(400, f"the router could not read this prompt ({type(exc).__name__})") from None
        self.metrics.router.observe(time.perf_counter() - r0)
        row = as_row(scores)
        target, chosen = upstreams.decide_row(row, threshold)
        return RouteDecision(target, reason, fall_back, chosen, threshold, upstreams.named_scores(row), tuple(row))
