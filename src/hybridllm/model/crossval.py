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

import math
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

from .fit import (
    MIN_TRAIN_ROWS,
    MIN_VALIDATION_ROWS,
    TrainOptions,
    fit_router,
    holdout,
)
from .fleet_rows import make_fleet, quality_matrix, usable_rows
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
    _check_folds(used, parts, options, salt, fleet.reference)  # before any training, not after minutes of it
    cache = cache if cache is not None else EmbeddingCache()
    scores: dict[str, np.ndarray] = {}
    picked: dict[str, int] = {}  # each row's model at its fold router's default point
    folds_out = []
    for f, test in enumerate(parts):
        train = [r for g, part in enumerate(parts) if g != f for r in part]
        if progress is not None:
            progress(f"fold {f + 1}/{folds}: train on {len(train)} rows, score {len(test)}")
        fitted = fit_router(train, replace(options, seed=options.seed + f), cache=cache, show_progress=False)
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


def _fold_problem(parts: list[list[Row]], options: TrainOptions, reference: str | None) -> str | None:
    """Why some fold's router cannot be trained as ``fit_router`` would train it (its training rows,
    the held-out share of them it calibrates on, the model best on them), or None."""
    names, given = options.model_names()
    for f in range(len(parts)):
        train, val = holdout([r for g, part in enumerate(parts) if g != f for r in part], options)
        if len(train) < MIN_TRAIN_ROWS or len(val) < MIN_VALIDATION_ROWS:
            return (
                f"fold {f + 1}'s router would train on {len(train)} rows and validate on {len(val)} (each fold's "
                f"router needs >= {MIN_TRAIN_ROWS} training and >= {MIN_VALIDATION_ROWS} validation rows, "
                f"validation being {options.val_fraction:.0%} of its fold's rows)"
            )
        if reference is not None and make_fleet(train, names, options.costs, given).reference != reference:
            return f"fold {f + 1}'s training rows have another best model than the table"
    return None


def _check_folds(used: list[Row], parts: list[list[Row]], options: TrainOptions, salt: str, reference: str) -> None:
    """Refuse, before any training, folds that some fold's router cannot be trained on, saying what
    to change: a fold count that works with this table, and the table size the asked one needs."""
    problem = _fold_problem(parts, options, reference)
    if problem is None:
        return
    folds, n, vf = len(parts), len(used), options.val_fraction
    # each fold trains on (folds - 1) / folds of the rows and holds out vf of those to calibrate on
    per_fold = max(MIN_TRAIN_ROWS / (1 - vf), MIN_VALIDATION_ROWS / vf)
    need = math.ceil(per_fold * folds / (folds - 1))
    cuts = {k: split_rows(used, [1 / k] * k, salt) for k in range(2, min(n, 20) + 1)}
    works = [k for k, cut in cuts.items() if _fold_problem(cut, options, reference) is None]
    if works:
        other = f"--folds {min(works, key=lambda k: (abs(k - folds), k))} works with these rows"
    else:
        other = "no fold count from 2 to 20 works with these rows"
    raise TableError(
        f"{n} rows are too few for {folds}-fold cross-validation: {problem}; {other}; {folds} folds need a "
        f"table of at least {need} rows, in practice some more (folds and held-out rows are cut by hashed id, "
        "so they come out uneven)"
    )


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
