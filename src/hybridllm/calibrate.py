"""Calibration: turn a quality knob into a score threshold, measured on validation data.

A threshold routes every query whose score is >= it to the small model, so only thresholds equal to
an observed score (plus "route nothing") are distinct operating points. The table lists each one with
the cost advantage and quality drop it achieved on validation; knobs are answered from the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import HybridLLMError
from .metrics import QD_POINTS

NEVER = 1.0 + 1e-6  # a threshold above any probability: everything goes to the large model


class CalibrationError(HybridLLMError, ValueError):
    pass


def calibration_table(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray, max_rows: int = 1001) -> list[dict]:
    """Rows {threshold, cost_advantage, quality_drop} for every achievable threshold, ordered by
    increasing cost advantage; thinned to at most max_rows (always keeping both ends)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n == 0:
        raise CalibrationError("calibration needs at least one validation row")
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    gain = (qs - ql)[order]
    cum = np.cumsum(gain)
    q_large = float(ql.mean())
    denom = abs(q_large) if q_large != 0 else 1.0
    # block ends: positions where the next score is strictly smaller
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    rows = [{"threshold": NEVER, "cost_advantage": 0.0, "quality_drop": 0.0}]
    for e in ends:
        k = e + 1
        q = (ql.sum() + cum[e]) / n
        rows.append(
            {
                "threshold": float(s[e]),
                "cost_advantage": k / n * 100.0,
                "quality_drop": (q_large - q) / denom * 100.0,
            }
        )
    if len(rows) > max_rows:
        keep = np.unique(np.linspace(0, len(rows) - 1, max_rows).round().astype(int))
        rows = [rows[i] for i in keep]
    # thresholds stay exact: one rounded up past a query's score would route that query differently
    return [{k: (v if k == "threshold" else round(v, 8)) for k, v in r.items()} for r in rows]


def threshold_for_quality_drop(table: list[dict], max_quality_drop: float) -> dict:
    """The operating point with the largest cost advantage whose validation quality drop is within
    the limit (the route-nothing row always qualifies)."""
    ok = [r for r in table if r["quality_drop"] <= max_quality_drop + 1e-9]
    return max(ok, key=lambda r: (r["cost_advantage"], -r["threshold"]))


def threshold_for_cost_advantage(table: list[dict], cost_advantage: float) -> dict:
    """The operating point whose validation cost advantage is closest to the target (ties: lower CA)."""
    if not 0 <= cost_advantage <= 100:
        raise CalibrationError(f"cost advantage must be within 0..100 percent, got {cost_advantage}")
    return min(table, key=lambda r: (abs(r["cost_advantage"] - cost_advantage), r["cost_advantage"]))


def operating_points(table: list[dict]) -> dict[str, Any]:
    """Named points stored in the artifact: max quality drop 0/0.5/1/2/5 % and CA 10..90 %."""
    qd = {}
    for d in QD_POINTS:
        key = str(int(d)) if float(d).is_integer() else str(d)
        qd[key] = threshold_for_quality_drop(table, d)
    ca = {str(c): threshold_for_cost_advantage(table, c) for c in range(10, 100, 10)}
    return {"max_quality_drop": qd, "cost_advantage": ca}


def resolve_knob(
    table: list[dict],
    default: dict,
    max_quality_drop: float | None = None,
    cost_advantage: float | None = None,
    threshold: float | None = None,
) -> tuple[float, str]:
    """One knob → (threshold, description). At most one knob may be given; none = default point."""
    given = [
        k
        for k, v in (
            ("max_quality_drop", max_quality_drop),
            ("cost_advantage", cost_advantage),
            ("threshold", threshold),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise CalibrationError(f"give at most one quality knob, got {', '.join(given)}")
    if threshold is not None:
        if not (0.0 <= threshold <= NEVER) or math.isnan(threshold):
            raise CalibrationError(f"threshold must be within 0..1, got {threshold}")
        return float(threshold), f"threshold={threshold:g}"
    if max_quality_drop is not None:
        if math.isnan(max_quality_drop) or max_quality_drop < 0:
            raise CalibrationError(f"max quality drop must be >= 0 percent, got {max_quality_drop}")
        r = threshold_for_quality_drop(table, max_quality_drop)
        return r["threshold"], f"max_quality_drop={max_quality_drop:g}%"
    if cost_advantage is not None:
        r = threshold_for_cost_advantage(table, cost_advantage)
        return r["threshold"], f"cost_advantage={cost_advantage:g}%"
    kind, value = default["kind"], default["value"]
    if kind == "threshold":
        return resolve_knob(table, default, threshold=value)[0], f"default (threshold={value:g})"
    if kind == "cost_advantage":
        return resolve_knob(table, default, cost_advantage=value)[0], f"default (cost_advantage={value:g}%)"
    return resolve_knob(table, default, max_quality_drop=value)[0], f"default (max_quality_drop={value:g}%)"


def recalibrate(
    router: Any, rows: Sequence[dict], max_quality_drop: float | None = None, cost_advantage: float | None = None
) -> tuple[dict, dict, int]:
    """Calibrate a two-model router on ``rows`` for one target: (the chosen point, the router's
    config with this calibration and that target as its default point, rows used)."""
    from .metrics import expected_quality
    from .table import select_pair

    if (max_quality_drop is None) == (cost_advantage is None):
        raise CalibrationError("give exactly one of max quality drop or cost advantage")
    if router.config.get("kind") == "fleet":
        raise CalibrationError("recalibrating a router over N models is not supported yet; retrain it")
    pair = select_pair(rows, router.small, router.large)
    scores = router.score([r["prompt"] for r in pair.rows], show_progress=len(pair.rows) > 256)
    qs, ql = expected_quality(pair.rows, router.small, router.large)
    table = calibration_table(scores, qs, ql)
    if max_quality_drop is not None:
        if math.isnan(max_quality_drop) or max_quality_drop < 0:
            raise CalibrationError(f"max quality drop must be >= 0, got {max_quality_drop}")
        point = threshold_for_quality_drop(table, max_quality_drop)
        default = {"kind": "max_quality_drop", "value": max_quality_drop}
    else:
        assert cost_advantage is not None
        point = threshold_for_cost_advantage(table, cost_advantage)
        default = {"kind": "cost_advantage", "value": cost_advantage}
    cfg = {
        **router.config,
        "calibration": table,
        "operating_points": operating_points(table),
        "default_operating_point": default,
    }
    return point, cfg, len(pair.rows)
