"""K-fold cross-validation of the whole training recipe, for tables too small to spare a test split.

Collecting responses is the expensive step (hours of GPU or API spend per thousand prompts), so real
routing tables are often a few hundred rows. A 20 % test split of 200 rows is 40 queries: one
routing curve over 40 points moves by several APGR points with the split's salt. Here every row is
scored exactly once, by a router that did not see it (trained, selected and calibrated on the other
folds with the same options as ``hybridllm train``), and the metrics are computed over the pooled
out-of-fold scores; the per-fold spread is reported beside them so the noise is visible. One loop
for any number of models; the report is the two-model view (APGR, cost advantage, the operating
point realised out of fold) for a pair and the N-model view (AIQ against the best fixed mix) beyond.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hybridllm.errors import UsageError
from hybridllm.evaluate.bootstrap import realised_decisions
from hybridllm.evaluate.fleet import evaluate_fleet
from hybridllm.evaluate.metrics import evaluate_scores
from hybridllm.evaluate.report import pair_report, prompt_lengths
from hybridllm.features.cache import EmbeddingCache
from hybridllm.routing.knob import promised_point
from hybridllm.routing.policy import Fleet, choose
from hybridllm.tables.format import Row, TableError, split_rows

from .fit import TrainOptions, fit_router, make_fleet, quality_matrix, usable_rows
from .router import Router


@dataclass
class CrossValResult:
    report: dict[str, Any]
    rows: list[Row]  # the rows evaluated (every model's quality), in table order
    scores: np.ndarray  # each row's out-of-fold router scores ([n], or [n, K] beyond two models)
    band: np.ndarray | None = None  # two models: the curve's bootstrap band (hybridllm.evaluate.bootstrap.GRID)


def cross_validate(
    rows: Sequence[Row],
    options: TrainOptions,
    folds: int = 5,
    salt: str = "crossval",
    progress: Callable[[str], None] | None = None,
    cache: EmbeddingCache | None = None,
) -> CrossValResult:
    """Out-of-fold router scores for every row and the metrics over them. Folds are cut by hashed
    id (``salt``), so they are stable under reordering; fold ``f``'s router is trained with seed
    ``options.seed + f``. The fleet (cost order, reference) is the one of all rows, so every fold's
    scores line up."""
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    names, reference = options.model_names()
    used, skipped = usable_rows(rows, names)
    fleet = make_fleet(used, names, options.costs, reference)
    parts = split_rows(used, [1 / folds] * folds, salt)
    if min(len(p) for p in parts) == 0:
        raise TableError(f"{len(used)} rows cannot fill {folds} folds; use fewer folds")
    cache = cache if cache is not None else EmbeddingCache()
    scores: dict[str, np.ndarray] = {}
    picked: dict[str, int] = {}  # each row's model at its fold router's default point
    folds_out = []
    for f, test in enumerate(parts):
        train = [r for g, part in enumerate(parts) if g != f for r in part]
        if progress is not None:
            progress(f"fold {f + 1}/{folds}: train on {len(train)} rows, score {len(test)}")
        fitted = fit_router(train, replace(options, seed=options.seed + f), cache=cache, show_progress=False)
        if fitted.config["fleet"]["reference"] != fleet.reference:
            raise TableError(f"fold {f + 1}: another model is best on its training rows; use more rows or folds")
        s = Router.from_fitted(fitted).score([r["prompt"] for r in test])  # in memory, no files
        point = promised_point(fitted.config)  # the fold router's own default point
        pick = choose(s.reshape(len(test), -1), fleet, point["threshold"])
        for r, x, m in zip(test, s, pick, strict=True):
            scores[r["id"]], picked[r["id"]] = x, int(m)
        folds_out.append((f, test, s, point))
    all_scores = np.stack([scores[r["id"]] for r in used])
    quality = quality_matrix(used, fleet.models)
    report: dict[str, Any] = {"skipped": skipped, "folds": folds, "salt": salt}
    if len(fleet.candidates) > 1:
        report = {**evaluate_fleet(all_scores, quality, fleet), **report}
        report["per_fold"] = [
            {"fold": f, "n": len(t), "aiq": evaluate_fleet(s, quality_matrix(t, fleet.models), fleet)["router"]["aiq"]}
            for f, t, s, _ in folds_out
        ]
        return CrossValResult(report, used, all_scores)
    pair, band = _pair_view(used, all_scores, quality, fleet, folds_out, picked, options.prompt_turns, report)
    return CrossValResult(pair, used, all_scores, band)


def _pair_view(
    used: list[Row], all_scores: np.ndarray, quality: np.ndarray, fleet: Fleet, folds_out: list, picked: dict,
    turns: str, base: dict[str, Any],
) -> tuple[dict[str, Any], np.ndarray]:  # fmt: skip
    """The two-model report over out-of-fold scores: APGR and cost advantage with intervals, each
    fold's own figures, and the default operating point as the fold routers realised it."""
    qs, ql = quality[:, 0], quality[:, fleet.ref]
    report: dict[str, Any] = {"n": len(used), "small": fleet.models[0], "large": fleet.reference, **base}
    body, boot = pair_report(all_scores, qs, ql, prompt_lengths(used, turns))
    report.update({k: v for k, v in body.items() if k != "n"})
    per_fold, promised = [], []
    for f, test, s, point in folds_out:
        tq = quality_matrix(test, fleet.models)
        m = evaluate_scores(np.asarray(s), tq[:, 0], tq[:, fleet.ref], with_curve=False)
        promised.append(point["promised"])
        per_fold.append(
            {
                "fold": f,
                "n": len(test),
                "apgr": m["router"]["apgr"],
                "cost_advantage_at_quality_drop_1": m["router"]["cost_advantage_at_quality_drop"]["1"],
                "operating_point": {"knob": point["knob"], "threshold": point["threshold"], **point["promised"]},
            }
        )
    # the default operating point out of fold: every row decided by the router that did not see it
    small = np.array([picked[r["id"]] != fleet.ref for r in used])
    report["operating_point"] = {
        "knob": per_fold[0]["operating_point"]["knob"],
        "promised": {  # mean over the fold routers of what their own calibration promised
            k: float(np.mean([p[k] for p in promised if p[k] is not None])) if promised else None
            for k in ("cost_advantage", "quality_drop")
        },
        "realised": realised_decisions(small, qs, ql),
    }
    apgrs = [p["apgr"] for p in per_fold if p["apgr"] is not None]
    report["per_fold"] = per_fold
    report["fold_apgr_mean"] = float(np.mean(apgrs)) if apgrs else None
    report["fold_apgr_std"] = float(np.std(apgrs, ddof=1)) if len(apgrs) > 1 else None
    return report, boot.band
