"""The knob: one number a user turns (at most this quality drop, this share away from the reference
model, this budget, or a raw threshold) resolved into a score threshold from the calibration table
(:func:`hybridllm.routing.policy.sweep`), for any number of models.

Every row of the table is an achievable operating point measured on validation rows: its threshold,
average cost (% of always using the reference model), cost advantage (% of queries that do not go to
the reference model: with two models, the share to the small one), quality drop (% of the
reference's quality) and each model's share. A knob picks a row:

- ``max_quality_drop``: the cheapest row whose quality drop is at most the limit;
- ``cost_advantage``: the row whose cost advantage is closest to the target (ties: the lower one);
- ``budget``: the best-quality row whose cost is at most the budget (none that cheap: the cheapest);
- ``threshold``: used as it is.

The run-time knob of the server (:mod:`hybridllm.serve.knobs`) and the default point of an artifact
both resolve here, so a knob means the same thing in every place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .policy import NEVER, CalibrationError

#: the named points of reports and artifacts: cost advantage (%) and quality drop (%)
CA_POINTS = (10, 20, 40, 60)
QD_POINTS = (0, 0.5, 1, 2, 5)
#: what a knob may be called, and the largest value each takes
KNOBS = {"max_quality_drop": 100.0, "cost_advantage": 100.0, "budget": 100.0, "threshold": NEVER}

Table = Sequence[Mapping[str, Any]]


def point_for_quality_drop(table: Table, max_quality_drop: float) -> Mapping[str, Any]:
    """The cheapest point whose validation quality drop is within the limit (the route-nothing row
    always qualifies); ties: the higher threshold."""
    ok = [r for r in table if r["quality_drop"] <= max_quality_drop + 1e-9]
    return min(ok, key=lambda r: (r["cost"], -r["threshold"]))


def point_for_cost_advantage(table: Table, cost_advantage: float) -> Mapping[str, Any]:
    """The point whose validation cost advantage is closest to the target (ties: the lower one)."""
    if math.isnan(cost_advantage) or not 0 <= cost_advantage <= 100:
        raise CalibrationError(f"cost advantage must be within 0..100 percent, got {cost_advantage}")
    return min(table, key=lambda r: (abs(r["cost_advantage"] - cost_advantage), r["cost_advantage"]))


def point_for_budget(table: Table, budget: float) -> Mapping[str, Any]:
    """The best-quality point whose average cost is at most ``budget`` % of always using the
    reference model; the cheapest point when none is that cheap."""
    if math.isnan(budget) or not 0 <= budget <= 100:
        raise CalibrationError(f"budget must be within 0..100 percent of always-best, got {budget}")
    ok = [r for r in table if r["cost"] <= budget + 1e-9]
    if ok:
        return min(ok, key=lambda r: (r["quality_drop"], r["cost"]))
    return min(table, key=lambda r: (r["cost"], r["quality_drop"]))


def _pct(kind: str) -> str:
    return "" if kind == "threshold" else "%"


def resolve(
    table: Table,
    default: Mapping[str, Any],
    max_quality_drop: float | None = None,
    cost_advantage: float | None = None,
    budget: float | None = None,
    threshold: float | None = None,
    costs_given: bool = True,
) -> tuple[float, str]:
    """One knob → (threshold, description); none given = the artifact's ``default`` point.
    ``costs_given``: whether the models' costs were given when the router was trained (a budget is
    a share of spend, meaningless over costs that stand for nothing but the models' order)."""
    thr, _, why = resolve_point(table, default, max_quality_drop, cost_advantage, budget, threshold, costs_given)
    return thr, why


def resolve_point(
    table: Table,
    default: Mapping[str, Any],
    max_quality_drop: float | None = None,
    cost_advantage: float | None = None,
    budget: float | None = None,
    threshold: float | None = None,
    costs_given: bool = True,
) -> tuple[float, Mapping[str, Any] | None, str]:
    """:func:`resolve`, with the calibration row the knob picks between the threshold and the
    description (None for a raw threshold, which picks no row), so callers read its cost and quality
    drop without looking it up again."""
    knobs = {"max_quality_drop": max_quality_drop, "cost_advantage": cost_advantage, "budget": budget}
    given = {k: v for k, v in {**knobs, "threshold": threshold}.items() if v is not None}
    if len(given) > 1:
        raise CalibrationError(f"give at most one quality knob, got {', '.join(given)}")
    if not given:
        kind, value = default["kind"], float(default["value"])
        thr, point, _ = resolve_point(table, {}, **{kind: value}, costs_given=costs_given)
        return thr, point, f"default ({kind}={value:g}{_pct(kind)})"
    ((kind, value),) = given.items()
    if math.isnan(value):
        raise CalibrationError(f"{kind} must be a number, got {value}")
    if kind == "threshold":
        if not 0.0 <= value <= NEVER:
            raise CalibrationError(f"threshold must be within 0..1, got {value}")
        return float(value), None, f"threshold={value:g}"
    if kind == "max_quality_drop":
        if value < 0:
            raise CalibrationError(f"max quality drop must be >= 0 percent, got {value}")
        return _row(point_for_quality_drop(table, value), kind, value)
    if kind == "cost_advantage":
        return _row(point_for_cost_advantage(table, value), kind, value)
    if not costs_given:
        raise CalibrationError(
            "budget needs the models' costs: train with --models and --cost (or a models file); "
            "without costs, use max_quality_drop or cost_advantage"
        )
    return _row(point_for_budget(table, value), kind, value)


def _row(point: Mapping[str, Any], kind: str, value: float) -> tuple[float, Mapping[str, Any], str]:
    return float(point["threshold"]), point, f"{kind}={value:g}%"


def operating_points(table: Table) -> dict[str, dict[str, Mapping[str, Any]]]:
    """Named points stored in the artifact: max quality drop 0/0.5/1/2/5 % and CA 10..90 %."""
    qd = {_key(d): point_for_quality_drop(table, d) for d in QD_POINTS}
    ca = {str(c): point_for_cost_advantage(table, c) for c in range(10, 100, 10)}
    return {"max_quality_drop": qd, "cost_advantage": ca}


def promised_point(config: Mapping[str, Any]) -> dict[str, Any]:
    """An artifact's default operating point and what calibration (on validation) promised for it:
    the share away from the reference model, the cost and the quality drop."""
    default, table = config["default_operating_point"], config["calibration"]
    kind, value = default["kind"], float(default["value"])
    knob = f"{kind}={value:g}{_pct(kind)}"
    if kind == "threshold":
        return {"knob": knob, "threshold": value, "promised": {"cost_advantage": None, "quality_drop": None}}
    thr, row, _ = resolve_point(table, default)
    assert row is not None  # a default that is not a raw threshold picks a row
    promised = {"cost_advantage": row["cost_advantage"], "quality_drop": row["quality_drop"]}
    return {"knob": knob, "threshold": thr, "promised": promised}


def _key(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
