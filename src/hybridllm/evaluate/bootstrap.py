"""How far to trust a cost–quality curve measured on a finite table: bootstrap intervals.

Queries are resampled with replacement ``n_boot`` times; each resample gets the whole evaluation
again (curve, APGR, cost advantage at each quality-drop limit, the operating point realised), and
the 95 % interval is the 2.5th to 97.5th percentile of what the resamples gave. Random routing has
an APGR of exactly 0.5 on any table (its curve is the straight line between the two models), so
"router minus random" is APGR − 0.5 and the table separates the router from random only when that
interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridllm.routing.knob import CA_POINTS, QD_POINTS

from .metrics import _key, quality_curve, quality_drop, summarize

GRID = np.linspace(0.0, 100.0, 101)  # cost advantage (%) where the curve's band is reported


@dataclass
class Bootstrap:
    ci95: dict[str, Any]
    band: np.ndarray  # [3, len(GRID)]: 2.5th, 50th, 97.5th percentile of the quality drop on GRID


def interval95(values: Sequence[float | None] | np.ndarray) -> list[float] | None:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def realised(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray, threshold: float) -> dict[str, float]:
    """What a threshold gives on a table: share sent to the small model and the quality drop."""
    return realised_decisions(scores >= threshold, qs, ql)


def realised_decisions(small: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> dict[str, float]:
    """What routing decisions (True: the small model) give on a table."""
    q = float(np.where(small, qs, ql).mean())
    q_large = float(ql.mean())
    return {
        "cost_advantage": float(small.mean() * 100.0),
        "quality_drop": float((q_large - q) / (abs(q_large) or 1.0) * 100.0),
        "quality": q,
    }


def bootstrap_pair(
    scores: np.ndarray,
    qs: np.ndarray,
    ql: np.ndarray,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Bootstrap:
    """Intervals for a two-model router's summary (and for its operating point at ``threshold``)."""
    scores, qs, ql = (np.asarray(a, dtype=np.float64) for a in (scores, qs, ql))
    n = len(qs)
    rng = np.random.default_rng(seed)
    apgrs: list[float | None] = []
    at_qd: dict[str, list[float]] = {_key(x): [] for x in QD_POINTS}
    at_ca: dict[str, list[float]] = {_key(x): [] for x in CA_POINTS}
    op_ca: list[float] = []
    op_qd: list[float] = []
    curves = np.empty((n_boot, len(GRID)))
    x = np.arange(n + 1) / max(n, 1) * 100.0
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        s, a, l_ = scores[idx], qs[idx], ql[idx]
        curve = quality_curve(s, a, l_)
        summ = summarize(curve, float(a.mean()), float(l_.mean()))
        apgrs.append(summ.apgr)
        for k, v in summ.cost_advantage_at_quality_drop.items():
            at_qd[k].append(v)
        for k, v in summ.quality_drop_at_cost_advantage.items():
            at_ca[k].append(v)
        curves[b] = np.interp(GRID, x, quality_drop(curve, float(l_.mean())))
        if threshold is not None:
            r = realised(s, a, l_, threshold)
            op_ca.append(r["cost_advantage"])
            op_qd.append(r["quality_drop"])
    apgr_ci = interval95(apgrs)
    ci: dict[str, Any] = {
        "method": f"percentile bootstrap over queries, {n_boot} resamples, seed {seed}",
        "apgr": apgr_ci,
        "router_minus_random_apgr": None if apgr_ci is None else [round(v - 0.5, 6) for v in apgr_ci],
        "cost_advantage_at_quality_drop": {k: interval95(v) for k, v in at_qd.items()},
        "quality_drop_at_cost_advantage": {k: interval95(v) for k, v in at_ca.items()},
    }
    if threshold is not None:
        ci["operating_point"] = {"cost_advantage": interval95(op_ca), "quality_drop": interval95(op_qd)}
    band = np.percentile(curves, [2.5, 50.0, 97.5], axis=0)
    return Bootstrap(ci, band)


def separation_warning(diff: list[float] | None, n: int, rival: str, measure: str, digits: int = 3) -> str | None:
    """A warning when the 95 % interval ``diff`` of the router's margin over ``rival`` reaches 0:
    the table cannot tell them apart."""
    if diff is None or diff[0] > 0:
        return None
    return (
        f"{n} queries are too few to separate the router from {rival}: the 95 % interval of "
        f"{measure} ({diff[0]:+.{digits}f} to {diff[1]:+.{digits}f}) includes 0; evaluate on more rows"
    )
