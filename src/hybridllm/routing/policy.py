"""Routing among N models with one knob.

A router scores, for each model m and query x, s_m(x): the predicted chance that m's answer is good
enough compared with the reference model's (the best model on average, which is always good enough
for itself). With models in cost order, the policy at threshold t sends x to the cheapest model whose
score is at least t, and to the reference model when none is. Lowering t moves traffic to cheaper
models; one threshold is the whole knob, and with two models it is exactly the two-model router's.

The knob is answered from a calibration table measured on validation data: every distinct score is
a threshold at which some query changes model, so a sweep over the sorted scores gives, for every
achievable operating point, the average cost (as % of always using the reference model) and the
quality drop (vs always using it), in O(nK log nK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridllm.errors import HybridLLMError

NEVER = 1.0 + 1e-6  # a threshold above any probability: everything goes to the reference model


class CalibrationError(HybridLLMError, ValueError):
    """A knob or calibration table that cannot be answered: the message names the knob."""


@dataclass(frozen=True)
class Fleet:
    """The models a router chooses among: names in cost order (cheapest first), relative costs, and
    the reference model (the best on average; never routed away from when nothing else qualifies)."""

    models: tuple[str, ...]
    costs: tuple[float, ...]
    reference: str
    #: False when no costs were given and ``costs`` only stand for the order (1, 2, ...)
    costs_given: bool = True

    def __post_init__(self) -> None:
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise CalibrationError(f"a fleet needs at least two distinct models, got {list(self.models)}")
        if len(self.costs) != len(self.models) or any(not (c > 0 and math.isfinite(c)) for c in self.costs):
            raise CalibrationError("every model needs a positive, finite cost")
        if list(self.costs) != sorted(self.costs):
            raise CalibrationError("models must be given cheapest first")
        if self.reference not in self.models:
            raise CalibrationError(f"reference model {self.reference!r} is not in the fleet")

    @property
    def ref(self) -> int:
        return self.models.index(self.reference)

    @property
    def candidates(self) -> list[int]:
        """Indices of the models the router scores: those cheaper than the reference."""
        return list(range(self.ref))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"models": list(self.models), "costs": list(self.costs), "reference": self.reference}
        if not self.costs_given:
            d["costs_given"] = False
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fleet:
        costs = tuple(float(c) for c in d["costs"])
        return cls(tuple(d["models"]), costs, str(d["reference"]), bool(d.get("costs_given", True)))

    @classmethod
    def pair(cls, small: str, large: str) -> Fleet:
        """Two models named small and large, without costs: the large one is the reference."""
        return cls((small, large), (1.0, 2.0), large, costs_given=False)


def choose(scores: np.ndarray, fleet: Fleet, threshold: float) -> np.ndarray:
    """Index (into ``fleet.models``) of the model each query goes to. ``scores``: [n, K] for the K
    candidate models (cost order), as the router predicts them."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    ok = s >= threshold
    first = np.argmax(ok, axis=1)
    return np.where(ok.any(axis=1), first, fleet.ref)


def sweep_arrays(
    scores: np.ndarray, quality: np.ndarray, fleet: Fleet
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every operating point of the policy, as arrays by falling threshold: (thresholds, cost in %
    of always-reference, quality drop in %, share of each model in %)."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    q = np.asarray(quality, dtype=np.float64)
    n, k = s.shape
    if n == 0:
        raise CalibrationError("calibration needs at least one validation row")
    costs = np.asarray(fleet.costs, dtype=np.float64)
    ref = fleet.ref
    c_ref = costs[ref]
    q_ref = float(q[:, ref].mean())
    denom = abs(q_ref) if q_ref != 0 else 1.0
    m_count = len(fleet.models)
    # Vectorised (the bootstrap of `evaluate` sweeps hundreds of resamples): as the threshold falls
    # past an entry (query i, model m), query i moves to m if m is cheaper than where it is, so per
    # query its model is the running minimum of model indices over its entries by falling score.
    # Ties: entries are taken by (falling score, flat index), as one pass over them would.
    by_score = np.argsort(-s, axis=1, kind="stable")  # per query: its entries by falling score
    runmin = np.minimum.accumulate(np.concatenate([np.full((n, 1), ref), by_score], axis=1), axis=1)
    before, after = runmin[:, :-1], runmin[:, 1:]
    moved = after < before
    qi, pos = np.nonzero(moved)
    src, dst = before[moved], after[moved]
    value = s[qi, by_score[qi, pos]]
    flat_index = qi * k + by_score[qi, pos]
    ev = np.lexsort((flat_index, -value))  # falling score, then flat order
    value, qi, src, dst = value[ev], qi[ev], src[ev], dst[ev]
    d_cost = np.cumsum(costs[dst] - costs[src])
    d_q = np.cumsum(q[qi, dst] - q[qi, src])
    delta = np.zeros((len(ev), m_count), dtype=np.int64)
    np.add.at(delta, (np.arange(len(ev)), dst), 1)
    np.add.at(delta, (np.arange(len(ev)), src), -1)
    counts_after = np.cumsum(delta, axis=0)
    base_counts = np.zeros(m_count, dtype=np.int64)
    base_counts[ref] = n
    # one row per distinct score value an entry has (whether or not it moved a query), with the
    # totals once every entry at or above it is taken
    values = np.unique(s)[::-1]
    upto = np.searchsorted(-value, -values, side="right")  # events with score >= each value

    e = np.concatenate([[0], upto])  # events taken by each row (the first row: none, threshold NEVER)
    taken_cost = np.concatenate([[0.0], d_cost])[e]
    taken_q = np.concatenate([[0.0], d_q])[e]
    counts = base_counts + np.concatenate([np.zeros((1, m_count), dtype=np.int64), counts_after])[e]
    thresholds = np.concatenate([[NEVER], values])
    cost = (n * c_ref + taken_cost) / (n * c_ref) * 100.0
    quality_drop = (q_ref - (float(q[:, ref].sum()) + taken_q) / n) / denom * 100.0
    return thresholds, cost, quality_drop, counts / n * 100.0


def sweep(scores: np.ndarray, quality: np.ndarray, fleet: Fleet, max_rows: int = 1001) -> list[dict[str, Any]]:
    """Calibration table of the policy: ``scores`` [n, K] (candidates), ``quality`` [n, M] (expected
    quality of every model per query, cost order). Rows ordered by falling threshold (rising savings)."""
    thresholds, cost, quality_drop, shares = sweep_arrays(scores, quality, fleet)
    keep = np.arange(len(thresholds))
    if len(keep) > max_rows:
        keep = np.unique(np.linspace(0, len(keep) - 1, max_rows).round().astype(int))
    away = 100.0 - shares[:, fleet.ref]  # cost advantage: the share not sent to the reference model
    return [
        {
            "threshold": float(thresholds[x]),  # exact: rounded up it would exclude the query it came from
            "cost": round(float(cost[x]), 6),
            "cost_advantage": round(float(away[x]), 8),
            "quality_drop": round(float(quality_drop[x]), 8),
            "shares": [round(v, 4) for v in shares[x].tolist()],
        }
        for x in keep
    ]


def calibration_table(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray, max_rows: int = 1001) -> list[dict[str, Any]]:
    """The two-model view of :func:`sweep`: ``scores`` [n] of the small model, ``qs`` and ``ql``
    the small and the large model's expected quality per query."""
    quality = np.stack([np.asarray(qs, dtype=np.float64), np.asarray(ql, dtype=np.float64)], axis=1)
    return sweep(np.asarray(scores, dtype=np.float64).reshape(-1, 1), quality, Fleet.pair("small", "large"), max_rows)
