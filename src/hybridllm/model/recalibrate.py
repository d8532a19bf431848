"""Recalibrating a trained router on new rows (traffic that looks like production, a fresh
validation split): the same policy's sweep measured on them, and a new default point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hybridllm.routing.knob import operating_points, resolve_point
from hybridllm.routing.policy import CalibrationError, sweep
from hybridllm.tables.format import Row

from .fleet_rows import quality_matrix, usable_rows
from .router import Router


def recalibrate(
    router: Router,
    rows: Sequence[Row],
    max_quality_drop: float | None = None,
    cost_advantage: float | None = None,
    budget: float | None = None,
) -> tuple[Mapping[str, Any], dict[str, Any], int]:
    """Calibrate ``router`` on ``rows`` for one target, any number of models: (the chosen point, the
    router's config with this calibration and that target as its default point, rows used)."""
    given = {k: v for k, v in (("max_quality_drop", max_quality_drop), ("cost_advantage", cost_advantage),
                               ("budget", budget)) if v is not None}  # fmt: skip
    if len(given) != 1:
        raise CalibrationError("give exactly one of max quality drop, cost advantage or budget")
    ((kind, value),) = given.items()
    fleet = router.fleet
    used, _ = usable_rows(rows, fleet.models)
    scores = router.score([r["prompt"] for r in used], show_progress=len(used) > 256)
    table = sweep(scores.reshape(len(used), -1), quality_matrix(used, fleet.models), fleet)
    default = {"kind": kind, "value": float(value)}
    _, point, _ = resolve_point(table, default, costs_given=fleet.costs_given)
    assert point is not None  # a quality, share or budget target picks a row
    cfg = {**router.config, "calibration": table, "operating_points": operating_points(table),
           "default_operating_point": default}  # fmt: skip
    return point, cfg, len(used)
