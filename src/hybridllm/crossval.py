"""K-fold cross-validation of the whole training recipe, for tables too small to spare a test split.

Collecting responses is the expensive step (hours of GPU or API spend per thousand prompts), so real
routing tables are often a few hundred rows. A 20 % test split of 200 rows is 40 queries: one
routing curve over 40 points moves by several APGR points with the split's salt. Here every row is
scored exactly once, by a router that did not see it (trained, selected and calibrated on the other
folds with the same options as ``hybridllm train``), and the section-5 metrics are computed over the
pooled out-of-fold scores; the per-fold spread is reported beside them so the noise is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .bootstrap import realised_decisions
from .encoder import EmbeddingCache
from .evaluate import pair_report, promised_point, prompt_lengths
from .metrics import evaluate_scores, expected_quality
from .router import Router
from .table import Row, TableError, select_pair, split_rows
from .train import TrainOptions, fit_router


@dataclass
class CrossValResult:
    report: dict[str, Any]
    rows: list[Row]  # the rows evaluated (both models' quality), in table order
    scores: np.ndarray  # each row's out-of-fold router score
    band: np.ndarray | None = None  # the curve's bootstrap band (hybridllm.bootstrap.GRID)


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
    ``options.seed + f``."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    pair = select_pair(rows, options.small, options.large)
    parts = split_rows(pair.rows, [1 / folds] * folds, salt)
    if min(len(p) for p in parts) == 0:
        raise TableError(f"{len(pair.rows)} rows cannot fill {folds} folds; use fewer folds")
    cache = cache if cache is not None else EmbeddingCache()
    scores: dict[str, float] = {}
    small_here: dict[str, bool] = {}  # each row's decision at its fold router's default point
    promised: list[dict[str, Any]] = []
    per_fold = []
    for f, test in enumerate(parts):
        train = [r for g, part in enumerate(parts) if g != f for r in part]
        if progress is not None:
            progress(f"fold {f + 1}/{folds}: train on {len(train)} rows, score {len(test)}")
        fitted = fit_router(train, replace(options, seed=options.seed + f), cache=cache, show_progress=False)
        s = Router.from_fitted(fitted).score([r["prompt"] for r in test])  # in memory, no files
        scores.update({r["id"]: float(x) for r, x in zip(test, s, strict=True)})
        qs, ql = expected_quality(test, options.small, options.large)
        m = evaluate_scores(np.asarray(s), qs, ql, with_curve=False)
        point = promised_point(fitted.config)  # the fold router's own default point
        small_here.update({r["id"]: bool(x >= point["threshold"]) for r, x in zip(test, s, strict=True)})
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
    used = list(pair.rows)
    all_scores = np.array([scores[r["id"]] for r in used])
    qs, ql = expected_quality(used, options.small, options.large)
    report: dict[str, Any] = {
        "n": len(used),
        "small": options.small,
        "large": options.large,
        "skipped": pair.skipped,
        "folds": folds,
        "salt": salt,
    }
    body, boot = pair_report(all_scores, qs, ql, prompt_lengths(used, options.prompt_turns))
    report.update({k: v for k, v in body.items() if k != "n"})
    # the default operating point out of fold: every row decided by the router that did not see it
    small = np.array([small_here[r["id"]] for r in used])
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
    return CrossValResult(report, used, all_scores, boot.band)


def cross_validate_fleet(
    rows: Sequence[Row],
    options: Any,
    folds: int = 5,
    salt: str = "crossval",
    progress: Callable[[str], None] | None = None,
    cache: EmbeddingCache | None = None,
) -> tuple[dict[str, Any], list[Row], np.ndarray]:
    """``cross_validate`` for a router over N models (``options``: a ``FleetOptions``): every row
    scored by a fleet router trained on the other folds (in memory), then the N-model evaluation
    (AIQ, best fixed mix, oracle) over the pooled out-of-fold scores. The fleet (cost order and
    reference) is the one trained on all rows, so every fold's scores line up."""
    from .fleet import fit_fleet, fleet_rows, make_fleet, quality_matrix
    from .fleet_eval import evaluate_fleet

    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    used, skipped = fleet_rows(rows, options.models)
    fleet = make_fleet(used, options.models, options.costs)
    parts = split_rows(used, [1 / folds] * folds, salt)
    if min(len(p) for p in parts) == 0:
        raise TableError(f"{len(used)} rows cannot fill {folds} folds; use fewer folds")
    cache = cache if cache is not None else EmbeddingCache()
    scores: dict[str, np.ndarray] = {}
    per_fold = []
    for f, test in enumerate(parts):
        train = [r for g, part in enumerate(parts) if g != f for r in part]
        if progress is not None:
            progress(f"fold {f + 1}/{folds}: train on {len(train)} rows, score {len(test)}")
        fitted = fit_fleet(train, replace(options, seed=options.seed + f), cache=cache)
        if fitted.config["fleet"]["reference"] != fleet.reference:
            raise TableError(f"fold {f + 1}: another model is best on its training rows; use more rows or folds")
        s = Router.from_fitted(fitted).score([r["prompt"] for r in test])
        scores.update({r["id"]: row for r, row in zip(test, s, strict=True)})
        fold_report = evaluate_fleet(s, quality_matrix(test, list(fleet.models)), fleet)
        per_fold.append({"fold": f, "n": len(test), "aiq": fold_report["router"]["aiq"]})
    all_scores = np.stack([scores[r["id"]] for r in used])
    report = evaluate_fleet(all_scores, quality_matrix(used, list(fleet.models)), fleet)
    report.update({"skipped": skipped, "folds": folds, "salt": salt, "per_fold": per_fold})
    return report, used, all_scores
