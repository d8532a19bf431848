"""Evaluating a router on a table: score the rows with it, then the report of
:mod:`hybridllm.evaluate` for its number of models (the two-model view: APGR, cost advantage, the
saved operating point realised, length baselines; beyond two: AIQ against every single model and the
best fixed mix), with bootstrap 95 % intervals either way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridllm.evaluate.bootstrap import separation_warning
from hybridllm.evaluate.fleet import bootstrap_fleet, evaluate_fleet
from hybridllm.evaluate.report import pair_report, prompt_lengths
from hybridllm.routing.knob import promised_point
from hybridllm.tables.format import Row

from .fleet_rows import quality_matrix, usable_rows
from .router import Router


@dataclass
class Evaluation:
    report: dict[str, Any]
    rows: list[Row]  # the rows scored (every model's quality), in table order
    scores: np.ndarray  # the router's scores per row ([n], or [n, K] beyond two models)
    band: np.ndarray | None = None  # two models: the curve's bootstrap band


def evaluate_router(
    router: Router,
    rows: Sequence[Row],
    scorer: Callable[[list[Any]], np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Score every row that has every model's quality and report on it. ``scorer``: router scores
    for a list of prompts computed elsewhere (the Ray engine)."""
    fleet = router.fleet
    used, skipped = usable_rows(rows, fleet.models)
    prompts = [r["prompt"] for r in used]
    scores = scorer(prompts) if scorer is not None else router.score(prompts, show_progress=len(used) > 256)
    scores = np.asarray(scores, dtype=np.float64)
    quality = quality_matrix(used, fleet.models)
    if len(fleet.candidates) > 1:
        report = {**evaluate_fleet(scores, quality, fleet), "skipped": skipped}
        report["ci95"] = ci = bootstrap_fleet(scores, quality, fleet, n_boot, seed)
        rival, measure = "the best fixed mix of models", "their AIQ difference"
        warning = separation_warning(ci["router_minus_hull_aiq"], report["n"], rival, measure, digits=4)
        report["warnings"] = [warning] if warning else []
        return Evaluation(report, used, scores)
    qs, ql = quality[:, 0], quality[:, fleet.ref]
    lengths = prompt_lengths(used, router.turns)
    body, boot = pair_report(scores, qs, ql, lengths, promised_point(router.config), n_boot, seed)
    report = {"n": body["n"], "small": router.small, "large": router.large, "skipped": skipped}
    report.update({k: v for k, v in body.items() if k != "n"})
    return Evaluation(report, used, scores, boot.band)
