"""Evaluating a two-model router on a table: the metrics of docs/method.md for the router, random,
the oracle and prompt-length baselines, the saved operating point as realised on the table beside
what calibration promised, and bootstrap 95 % intervals (:mod:`hybridllm.bootstrap`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.features.text import flatten
from hybridllm.routing.knob import point_for_cost_advantage, point_for_quality_drop
from hybridllm.tables.format import Row

from .bootstrap import Bootstrap, bootstrap_pair, realised, separation_warning
from .metrics import evaluate_scores, quality_curve, summarize

#: baselines that need nothing but the prompt: its length (characters of the text the router reads)
#: baselines that need nothing but the prompt: its length (characters of the text the router reads)
LENGTH_BASELINES = {"shorter_prompts_to_small": -1.0, "longer_prompts_to_small": 1.0}


def promised_point(config: dict[str, Any]) -> dict[str, Any]:
    """The artifact's default operating point and what calibration (on validation) promised for it."""
    default, table = config["default_operating_point"], config["calibration"]
    if default["kind"] == "max_quality_drop":
        row = point_for_quality_drop(table, float(default["value"]))
        knob = f"max_quality_drop={float(default['value']):g}%"
    elif default["kind"] == "cost_advantage":
        row = point_for_cost_advantage(table, float(default["value"]))
        knob = f"cost_advantage={float(default['value']):g}%"
    else:
        row = {"threshold": float(default["value"]), "cost_advantage": None, "quality_drop": None}
        knob = f"threshold={float(default['value']):g}"
    return {
        "knob": knob,
        "threshold": float(row["threshold"]),
        "promised": {"cost_advantage": row["cost_advantage"], "quality_drop": row["quality_drop"]},
    }


def prompt_lengths(rows: Sequence[Row], turns: str = "all") -> np.ndarray:
    return np.array([len(flatten(r["prompt"], turns, harden=False)) for r in rows], dtype=np.float64)


def pair_report(
    scores: np.ndarray,
    qs: np.ndarray,
    ql: np.ndarray,
    lengths: np.ndarray,
    point: dict[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Any], Bootstrap]:
    """The report body for one set of scores: router, random, oracle, length baselines, the
    operating point (``point``: :func:`promised_point`) realised, ``ci95`` and ``warnings``."""
    report = evaluate_scores(scores, qs, ql)
    q_small, q_large = float(qs.mean()), float(ql.mean())
    report["baselines"] = {
        name: summarize(quality_curve(sign * lengths, qs, ql), q_small, q_large).to_dict()
        for name, sign in LENGTH_BASELINES.items()
    }
    threshold = None
    if point is not None:
        threshold = point["threshold"]
        report["operating_point"] = dict(point, realised=realised(scores, qs, ql, threshold))
    boot = bootstrap_pair(scores, qs, ql, threshold, n_boot=n_boot, seed=seed)
    report["ci95"] = boot.ci95
    warnings = []
    w = separation_warning(boot.ci95["router_minus_random_apgr"], len(qs), "random routing", "APGR minus random's")
    if w:
        warnings.append(w)
    report["warnings"] = warnings
    return report, boot


def write_predictions(path: str | Path, rows: Sequence[Row], scores: np.ndarray) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for r, s in zip(rows, scores, strict=True):
            v = np.asarray(s, dtype=np.float64)  # one score, or one per scored model
            score = round(float(v), 6) if v.ndim == 0 else [round(float(x), 6) for x in v]
            fh.write(json.dumps({"id": r["id"], "score": score}) + "\n")


def breakdown_by_meta(
    rows: Sequence[Row],
    scores: np.ndarray,
    qs: np.ndarray,
    ql: np.ndarray,
    threshold: float | None,
    max_values: int = 25,
    min_rows: int = 5,
) -> dict[str, list[dict[str, Any]]]:
    """The router per group of a ``meta`` field with a few scalar values (a subject, a source): rows,
    APGR, cost advantage at ≤ 1 % quality drop and, with ``threshold``, the operating point realised
    in that group. Groups under ``min_rows`` rows are left out, fields with more than ``max_values``
    values too (an id is not a breakdown)."""
    fields: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        for k, v in (r.get("meta") or {}).items():
            if isinstance(v, (str, int, bool)) and not isinstance(v, float):
                fields.setdefault(k, {}).setdefault(str(v), []).append(i)
    out: dict[str, list[dict[str, Any]]] = {}
    for field_name, groups in sorted(fields.items()):
        if not 2 <= len(groups) <= max_values:
            continue
        entries = []
        for value, idx_list in sorted(groups.items(), key=lambda g: -len(g[1])):
            if len(idx_list) < min_rows:
                continue
            idx = np.asarray(idx_list)
            s, a, l_ = scores[idx], qs[idx], ql[idx]
            summ = summarize(quality_curve(s, a, l_), float(a.mean()), float(l_.mean()))
            entry = {
                "value": value,
                "n": len(idx),
                "Q_small": float(a.mean()),
                "Q_large": float(l_.mean()),
                "apgr": summ.apgr,
                "cost_advantage_at_quality_drop_1": summ.cost_advantage_at_quality_drop["1"],
            }
            if threshold is not None:
                entry["operating_point"] = realised(s, a, l_, threshold)
            entries.append(entry)
        if len(entries) >= 2:
            out[field_name] = entries
    return out
