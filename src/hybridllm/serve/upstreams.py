"""Which upstream answers: the router's scores through the policy, one upstream per model of the
router (matched by name; a two-model router's ``--small``/``--large`` upstreams by position), and
where a failed call falls back to (the next better model, then the next worse). A request goes only
to the upstreams that speak its protocol (each backend's ``api``: the models file's ``api`` key):
:meth:`Upstreams.speaking` keeps a decision among them, and a fallback never leaves them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridllm.backends import Backend
from hybridllm.routing.capabilities import pick

from .errors import RequestError, ServeConfigError

if TYPE_CHECKING:
    from .decision import RouteDecision


def as_row(scores: Any) -> list[float]:
    """One request's candidate scores as plain floats (cost order)."""
    return np.asarray(scores, dtype=np.float64).reshape(-1).tolist()


class Upstreams:
    """The router's models as upstream backends, in cost order, and where a failed call falls back to."""

    def __init__(self, router: Any, upstreams: Sequence[Backend]) -> None:
        fleet = router.fleet
        by_name = {u.who: u for u in upstreams}
        if set(by_name) == set(fleet.models) and len(by_name) == len(upstreams):
            self.ups = [by_name[m] for m in fleet.models]
        elif len(fleet.models) == len(upstreams) == 2:  # --small, --large: the cheaper one first
            self.ups = list(upstreams)
        else:
            missing = [m for m in fleet.models if m not in by_name]
            extra = [n for n in by_name if n not in fleet.models]
            raise ServeConfigError(
                f"upstreams must be one per model of the router ({', '.join(fleet.models)}); "
                f"missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'}"
            )
        self.fleet = fleet
        #: two models keep their spelling: forced names small/large, labels small/large
        self.pair = len(fleet.models) == 2
        self.candidates: list[str] = list(router.config["candidates"])
        quality = router.config.get("fleet_quality") or range(len(fleet.models))  # else the cost order
        self.quality = [float(q) for q in quality]
        self._orders = [self._fallback_order(i) for i in range(len(self.ups))]  # fixed: computed once
        self._ref = self.fleet.ref
        #: which upstreams speak each API the fleet speaks (the models file's ``api``), and each
        #: target's fallback order kept within its API (the target itself first, whatever it speaks)
        apis = [u.api for u in self.ups]
        self._speak = {a: tuple(x == a for x in apis) for a in apis}
        self._api_orders = {
            a: [[t, *(i for i in order[1:] if apis[i] == a)] for t, order in enumerate(self._orders)]
            for a in self._speak
        }

    def label(self, index: int) -> str:
        if self.pair:
            return "small" if index == 0 else "large"
        return self.ups[index].who

    def decide(self, scores: Any, threshold: float) -> tuple[int, float]:
        """(index of the chosen upstream, the score shown for the decision): the policy's choice
        (:func:`hybridllm.routing.policy.choose`, the first model in cost order whose score reaches
        the threshold, else the reference), taken here on plain floats: one request's row is a few
        numbers, where NumPy's per-call cost is the whole cost."""
        return self.decide_row(as_row(scores), threshold)

    def decide_row(self, row: list[float], threshold: float) -> tuple[int, float]:
        """:meth:`decide` on one request's scores already as a list of floats."""
        index = next((i for i, v in enumerate(row) if v >= threshold), self._ref)
        return index, row[index] if index < len(row) else max(row)

    def named_scores(self, row: Sequence[float]) -> dict[str, float] | None:
        """Every scored model's score, when the router scores more than one."""
        if len(row) == 1:
            return None
        return dict(zip(self.candidates, row, strict=True))

    def fallback_order(self, target: int, api: str = "chat") -> list[int]:
        """``target``, then the models better than it from the nearest up, then the worse ones from
        the nearest down (two models: the other one); of these, only the ones that speak ``api``."""
        orders = self._api_orders.get(api)
        return [target] if orders is None else orders[target]

    def speakers(self, api: str) -> tuple[bool, ...] | None:
        """Which upstreams speak ``api`` (cost order); None when none does."""
        return self._speak.get(api)

    def speaking(self, decision: RouteDecision, api: str) -> RouteDecision:
        """``decision`` kept among the upstreams that speak ``api``: itself when its target does; a
        routed one moved as :func:`hybridllm.routing.capabilities.pick` moves a choice (the cheapest
        upstream of the protocol dearer than the choice, else the dearest cheaper one), its reason
        saying so; a forced one (the client named a model of another protocol) refused with a 400,
        and a request of a protocol no upstream speaks with a 404. Never translated."""
        allowed = self._speak.get(api)
        if allowed is None:
            raise RequestError(404, f"no model of this server speaks the {api} API", "model", "model_not_found")
        if allowed[decision.target]:
            return decision
        up = self.ups[decision.target]
        if decision.row is None:
            raise RequestError(400, f"model {up.who!r} speaks the {up.api} API, not {api}: send it there", "model")
        moved = pick(decision.target, allowed).target
        return replace(decision, target=moved, reason=f"{decision.reason}; {up.who} speaks {up.api}, not {api}")

    def _fallback_order(self, target: int) -> list[int]:
        q = self.quality[target]
        others = [i for i in range(len(self.ups)) if i != target]
        better = sorted((i for i in others if self.quality[i] >= q), key=lambda i: (self.quality[i], i))
        worse = sorted((i for i in others if self.quality[i] < q), key=lambda i: (-self.quality[i], i))
        return [target, *better, *worse]
