"""Which upstream answers: the router's scores through the policy, one upstream per model of the
router (matched by name; a two-model router's ``--small``/``--large`` upstreams by position), and
where a failed call falls back to (the next better model, then the next worse)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hybridllm.backends import Backend

from .errors import ServeConfigError


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

    def fallback_order(self, target: int) -> list[int]:
        """``target``, then the models better than it from the nearest up, then the worse ones from
        the nearest down (two models: the other one)."""
        return self._orders[target]

    def _fallback_order(self, target: int) -> list[int]:
        q = self.quality[target]
        others = [i for i in range(len(self.ups)) if i != target]
        better = sorted((i for i in others if self.quality[i] >= q), key=lambda i: (self.quality[i], i))
        worse = sorted((i for i in others if self.quality[i] < q), key=lambda i: (-self.quality[i], i))
        return [target, *better, *worse]
