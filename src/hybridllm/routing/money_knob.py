"""The budget knob in money (docs/control.md, "Budget in money"): ``budget=X`` (a request's
``hybrid-budget-X``, the body's ``hybridllm.budget``, a default knob) means X % of what always
using the reference model costs in money on this traffic, when every model is priced.

A calibration row says which share of the traffic each model gets at its threshold
(:func:`row_shares`); each model's typical cost per request on this traffic
(:meth:`~hybridllm.routing.money.CostModel.typical`: the typical prompt at the model's prompt price,
its typical cached tokens at the cached price, its typical answer at the completion price) weighs
those shares: a row's spend is Σ_m share_m · typical_m / typical_ref (:func:`money_rows`). The knob
then picks a row by the same rule as in the artifact's costs
(:func:`hybridllm.routing.knob.point_for_budget`: the best-quality row within the budget).

:class:`MoneyBudget` keeps the resolution cheap per request: a budget's row is cached, and the
money rows are redrawn only when a model's typical cost relative to the reference's moved by more
than ``move`` (looked at every ``every`` answers). Until every model has answered ``min_answers``
requests the typical costs are guesses, and the knob resolves in the artifact's costs (the
calibration's ``cost`` column: active parameters or prices as the artifact was trained with); an
artifact trained without costs resolves in money at the lengths assumed so far (the
:class:`~hybridllm.routing.money.CostModel`'s start: :data:`~hybridllm.routing.money.DEFAULT_ANSWER_TOKENS`
an answer until a model's first answers). The reason says which.

An open loop: traffic unlike the calibration's, or answers whose length depends on which requests a
model gets (the reference gets the hard ones, and their long answers), move the spend off X;
``--hold budget=X`` closes the loop for plain ``hybrid``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .knob import point_for_budget, resolve_point
from .money import CostModel
from .policy import CalibrationError, Fleet

#: answers every model gives before the knob resolves in money on this traffic
MIN_ANSWERS = 10
#: answers between two looks at whether the typical costs moved
EVERY = 20
#: a relative move of a model's typical cost (against the reference's) that redraws the money rows
MOVE = 0.01
#: distinct budgets cached at most (knob values come from clients)
MAX_CACHED = 4096


def row_shares(row: Mapping[str, Any], models: int) -> list[float] | None:
    """A calibration row's share of traffic to each model (%, cost order): its ``shares``, or for
    two models, from its cost advantage (the share away from the reference: the small model's);
    None when the row does not say."""
    shares = row.get("shares")
    if isinstance(shares, Sequence) and len(shares) == models:
        return [float(s) for s in shares]
    if models == 2 and "cost_advantage" in row:
        away = float(row["cost_advantage"])
        return [away, 100.0 - away]
    return None


def money_rows(calibration: Sequence[Mapping[str, Any]], typical: np.ndarray, ref: int) -> list[dict[str, Any]]:
    """The calibration rows with ``cost`` in money: each row's shares of the models at their
    ``typical`` cost per request, in % of the reference's (rows that do not give their shares are
    left out; none at all when the reference's typical cost is not a positive number)."""
    t = np.asarray(typical, dtype=np.float64)
    if not (len(t) > ref and math.isfinite(t[ref]) and t[ref] > 0 and np.all(np.isfinite(t))):
        return []
    out = []
    for r in calibration:
        shares = row_shares(r, len(t))
        if shares is not None:
            out.append({**r, "cost": float(np.dot(shares, t)) / float(t[ref])})
    return out


class MoneyBudget:
    """``budget=X`` in money for one server: its ``fleet``, the router's ``calibration`` and the
    server's running :class:`~hybridllm.routing.money.CostModel` (fed by the answers elsewhere;
    read here). See the module docstring."""

    def __init__(
        self,
        fleet: Fleet,
        calibration: Sequence[Mapping[str, Any]],
        money: CostModel,
        *,
        min_answers: int = MIN_ANSWERS,
        every: int = EVERY,
        move: float = MOVE,
    ) -> None:
        if len(money.prices) != len(fleet.models):
            raise CalibrationError(f"prices for {len(money.prices)} models, the fleet has {len(fleet.models)}")
        self.fleet, self.money = fleet, money
        self.min_answers, self.every, self.move = max(int(min_answers), 1), max(int(every), 1), float(move)
        self.recalibrate(calibration)

    def recalibrate(self, calibration: Sequence[Mapping[str, Any]]) -> None:
        """Take a new router's calibration (at start, and when a router is swapped in)."""
        self.calibration = list(calibration)
        self._cache: dict[float, tuple[float, Mapping[str, Any] | None, str]] = {}
        self._rows: Sequence[Mapping[str, Any]] = []
        self._relative: np.ndarray | None = None  # the typical costs / the reference's, rows drawn at
        self._at = -1  # answers seen at the last look
        self.source = ""  # "money", "artifact" (the calibration's costs) or "assumed" (money, guessed lengths)

    @property
    def ready(self) -> bool:
        """Every model has answered ``min_answers`` requests: the typical costs are this traffic's."""
        return int(self.money.answers_seen.min()) >= self.min_answers

    def _look(self) -> None:
        n = int(self.money.answers_seen.sum())
        if n - self._at < self.every and (self.source == "money" or n == self._at):
            return
        self._at = n
        if not self.ready and self.fleet.costs_given:
            if self.source != "artifact":
                self.source, self._rows, self._relative = "artifact", self.calibration, None
                self._cache.clear()
            return
        typical = self.money.typical()
        ref = typical[self.fleet.ref]
        relative = typical / ref if ref > 0 else None
        source = "money" if self.ready else "assumed"
        old = self._relative
        moved = (
            relative is None
            or old is None
            or bool(np.any(np.abs(relative - old) > self.move * np.maximum(np.abs(old), 1e-12)))
        )
        if source != self.source or moved:
            self.source, self._relative = source, relative
            self._rows = money_rows(self.calibration, typical, self.fleet.ref)
            self._cache.clear()

    def resolve(self, budget: float) -> tuple[float, Mapping[str, Any] | None, str]:
        """(threshold, the calibration row picked, reason) for ``budget`` (% of always-reference);
        :class:`~hybridllm.routing.policy.CalibrationError` for a budget out of 0..100, or one that
        no row can answer (no shares and no costs)."""
        self._look()
        got = self._cache.get(budget)
        if got is None:
            got = self._resolve(budget)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[budget] = got
        return got

    def _resolve(self, budget: float) -> tuple[float, Mapping[str, Any] | None, str]:
        if self.source == "artifact" or not self._rows:
            thr, row, why = resolve_point(self.calibration, {}, budget=budget, costs_given=self.fleet.costs_given)
            waiting = f"money after {self.min_answers} answers of each model" if self.source == "artifact" else (
                "its rows give no shares to price")  # fmt: skip
            return thr, row, f"{why} in the artifact's costs ({waiting})"
        row = point_for_budget(self._rows, budget)
        why = f"budget={budget:g}% in money"
        if self.source == "assumed":
            why += f" at assumed lengths (this traffic's after {self.min_answers} answers of each model)"
        else:
            why += f" on this traffic ({int(self.money.answers_seen.sum())} answers)"
        return float(row["threshold"]), row, why

    def state(self) -> dict[str, Any]:
        """What the knob resolves in now, and each model's typical cost relative to the reference's."""
        self._look()
        rel = None if self._relative is None else [round(float(x), 6) for x in self._relative]
        return {"source": self.source, "answers": [int(x) for x in self.money.answers_seen], "relative_cost": rel}


__all__ = ["MoneyBudget", "money_rows", "row_shares"]
