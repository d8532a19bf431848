"""Evaluating a router on a table: section-5 metrics, predictions, and the cost/quality plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import evaluate_scores, expected_quality, quality_curve, quality_drop, random_curve
from .router import Router
from .table import Row, select_pair


def evaluate_router(
    router: Router, rows: Sequence[Row], scorer: Callable[[list[Any]], np.ndarray] | None = None
) -> tuple[dict[str, Any], list[Row], np.ndarray, int]:
    """Score every row that has both models' quality; returns (report, rows used, scores, skipped).
    ``scorer``: router scores for a list of prompts computed elsewhere (the Ray engine)."""
    pair = select_pair(rows, router.small, router.large)
    prompts = [r["prompt"] for r in pair.rows]
    scores = scorer(prompts) if scorer is not None else router.score(prompts, show_progress=len(pair.rows) > 256)
    qs, ql = expected_quality(pair.rows, router.small, router.large)
    report = evaluate_scores(scores, qs, ql)
    ordered = {"n": report["n"], "small": router.small, "large": router.large, "skipped": pair.skipped}
    ordered.update({k: v for k, v in report.items() if k != "n"})
    return ordered, pair.rows, scores, pair.skipped


def write_predictions(path: str | Path, rows: Sequence[Row], scores: np.ndarray) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for r, s in zip(rows, scores, strict=True):
            fh.write(json.dumps({"id": r["id"], "score": round(float(s), 6)}) + "\n")


def plot_curves(path: str | Path, scores: np.ndarray, qs: np.ndarray, ql: np.ndarray, title: str = "") -> Path:
    """Quality drop vs cost advantage for router, random and oracle (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(qs)
    ca = np.arange(n + 1) / max(n, 1) * 100
    q_large = float(ql.mean())
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.plot(ca, quality_drop(quality_curve(scores, qs, ql), q_large), label="router", lw=2)
    ax.plot(ca, quality_drop(random_curve(qs, ql), q_large), label="random", ls="--", color="gray")
    ax.plot(ca, quality_drop(quality_curve(qs - ql, qs, ql), q_large), label="oracle", ls=":", color="green")
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(1, color="red", lw=0.6, ls="-.", label="1% quality drop")
    ax.set_xlabel("cost advantage: % of queries answered by the small model")
    ax.set_ylabel("quality drop vs all-at-large (%)")
    ax.set_title(title or "hybridllm router: cost vs quality")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
