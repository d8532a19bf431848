"""Cost/quality metrics of routing (docs/method.md, Metrics).

Everything is computed from two per-query vectors, the expected quality of the small and of the
large model, and a router score. The curve is exact (every k from 0 to N), so summaries never depend
on interpolation choices; ties in the score are broken by averaging over the tied block, which is
what a router with tied scores achieves in expectation and keeps constant-score routers honest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridllm.routing.knob import CA_POINTS, QD_POINTS


def expected_quality(rows: Sequence[dict[str, Any]], small: str, large: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean sample quality per query for the small and the large model."""
    qs = np.array([float(np.mean(r["quality"][small])) for r in rows], dtype=np.float64)
    ql = np.array([float(np.mean(r["quality"][large])) for r in rows], dtype=np.float64)
    return qs, ql


def quality_curve(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> np.ndarray:
    """Q(k) for k = 0..N when the k highest-scored queries go to the small model.

    Tied scores are treated as one block whose members are equally likely to be picked first: the
    curve is linear across a tied block.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    gain = (qs - ql)[order]  # what switching a query from large to small changes
    s_sorted = scores[order]
    # average the gain within tied blocks (vectorised: the bootstrap calls this a thousand times,
    # and a resample is full of ties, its repeated queries)
    if n:
        block = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1
        if block[-1] + 1 < n:
            gain = (np.bincount(block, weights=gain) / np.bincount(block))[block]
    q_large_total = ql.sum()
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    return (q_large_total + cum) / max(n, 1)


def random_curve(qs: np.ndarray, ql: np.ndarray) -> np.ndarray:
    """Expected Q(k) of a router that picks k queries uniformly at random."""
    n = len(qs)
    k = np.arange(n + 1)
    return ql.mean() + k / max(n, 1) * (qs.mean() - ql.mean())


@dataclass(frozen=True)
class Summary:
    apgr: float | None
    quality_drop_at_cost_advantage: dict[str, float]
    cost_advantage_at_quality_drop: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "apgr": self.apgr,
            "quality_drop_at_cost_advantage": self.quality_drop_at_cost_advantage,
            "cost_advantage_at_quality_drop": self.cost_advantage_at_quality_drop,
        }


def _key(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def quality_drop(curve: np.ndarray, q_large: float) -> np.ndarray:
    """QD(k) in percent; negative means better than sending everything to the large model."""
    denom = abs(q_large) if q_large != 0 else 1.0
    return (q_large - curve) / denom * 100.0


def apgr(curve: np.ndarray, q_small: float, q_large: float) -> float | None:
    """Area under Q vs share of large-model calls, normalised so all-small = 0, all-large = 1.

    Undefined (None) when both models have the same quality: there is no gap to recover.
    """
    if math.isclose(q_small, q_large, rel_tol=0.0, abs_tol=1e-12):
        return None
    n = len(curve) - 1
    # share of large calls for k small = (n - k) / n; integrate Q over that share in [0, 1]
    area = float(np.trapezoid(curve[::-1], dx=1.0 / max(n, 1)))
    return (area - q_small) / (q_large - q_small)


def summarize(curve: np.ndarray, q_small: float, q_large: float) -> Summary:
    n = len(curve) - 1
    qd = quality_drop(curve, q_large)
    at_ca = {}
    for ca in CA_POINTS:
        k = min(n, math.ceil(ca * n / 100 - 1e-9))
        at_ca[_key(ca)] = float(qd[k])
    at_qd = {}
    ks = np.arange(n + 1)
    for limit in QD_POINTS:
        ok = ks[qd <= limit + 1e-9]
        at_qd[_key(limit)] = float(ok.max() / max(n, 1) * 100.0) if len(ok) else 0.0
    return Summary(apgr(curve, q_small, q_large), at_ca, at_qd)


def evaluate_scores(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray, with_curve: bool = True) -> dict[str, Any]:
    """Router, random and oracle summaries for one set of scores (the `evaluate --json` body)."""
    q_small, q_large = float(qs.mean()), float(ql.mean())
    router_curve = quality_curve(scores, qs, ql)
    out: dict[str, Any] = {"n": len(qs), "Q_small": q_small, "Q_large": q_large}
    router = summarize(router_curve, q_small, q_large).to_dict()
    if with_curve:
        n = len(qs)
        router["curve"] = {
            "cost_advantage": (np.arange(n + 1) / max(n, 1) * 100).round(4).tolist(),
            "quality": router_curve.round(6).tolist(),
            "quality_drop": quality_drop(router_curve, q_large).round(4).tolist(),
        }
    out["router"] = router
    out["random"] = summarize(random_curve(qs, ql), q_small, q_large).to_dict()
    out["oracle"] = summarize(quality_curve(qs - ql, qs, ql), q_small, q_large).to_dict()
    return out
