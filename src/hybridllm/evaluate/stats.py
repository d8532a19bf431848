"""What a routing table holds, before anyone trains on it.

After ``collect`` and ``score`` the first questions are always the same: how good is each model, how
often is the small one already good enough, and how much could a perfect router save? If the small
model wins almost everywhere (or almost nowhere), or the oracle's headroom is tiny, training a router
is not worth it, and it is cheaper to learn that from the table than from a trained router. The
figures here are the ones docs/method.md (Metrics) defines, computed from the table alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from hybridllm.stages.labels import det_labels, prob_labels
from hybridllm.tables.format import Row, models_in, select_pair

from .metrics import evaluate_scores, expected_quality

_TRAILING_NUMBER = re.compile(r"[-_:/.]?\d+$")


def group_key(row: Row, by: str) -> str:
    """The group a row belongs to. ``by`` is a dotted path into the row (``meta.category``), or
    ``id-prefix``: the id without its trailing number (``gsm8k-test-7`` → ``gsm8k-test``), which
    separates the sources of a mixed table whose ids name them."""
    if by == "id-prefix":
        return _TRAILING_NUMBER.sub("", str(row["id"])) or str(row["id"])
    value: Any = row
    for part in by.split("."):
        if not isinstance(value, dict) or part not in value:
            return "(none)"
        value = value[part]
    return str(value)


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def model_stats(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Per model: rows it has quality for, samples, mean quality over all samples and over queries
    (the mean of per-query means: what the routing metrics use), and mean completion tokens where
    ``collect`` recorded them."""
    out: dict[str, dict[str, Any]] = {}
    for m in models_in(rows):
        per_query: list[float] = []
        samples, tokens = 0, []  # type: int, list[float]
        flat: list[float] = []
        for r in rows:
            q = r.get("quality", {}).get(m)
            if not q:
                continue
            per_query.append(float(np.mean(q)))
            flat.extend(float(x) for x in q)
            samples += len(q)
            meta = r.get("meta")
            by_model = meta.get("completion_tokens") if isinstance(meta, dict) else None
            ct = by_model.get(m) if isinstance(by_model, dict) else None  # what `collect` records
            if isinstance(ct, list):
                tokens.extend(x for x in ct if isinstance(x, int | float))
        out[m] = {
            "rows": len(per_query),
            "samples": samples,
            "quality": _mean(flat),
            "query_quality": _mean(per_query),
            "completion_tokens": _mean(tokens),
        }
    return out


def pair_stats(rows: Sequence[Row], small: str, large: str) -> dict[str, Any]:
    """How often the small model is good enough, and what a perfect router (oracle) and a coin
    (random) would get: the ceiling and floor any trained router sits between."""
    pair = select_pair(rows, small, large)
    qs, ql = expected_quality(pair.rows, small, large)
    quals = [(r["quality"][small], r["quality"][large]) for r in pair.rows]
    report = evaluate_scores(qs - ql, qs, ql, with_curve=False)
    return {
        "small": small,
        "large": large,
        "n": len(pair.rows),
        "skipped": pair.skipped,
        "Q_small": report["Q_small"],
        "Q_large": report["Q_large"],
        # the share of queries whose first small sample is at least as good as the first large one
        "small_good_enough_det": float(det_labels(quals).mean()),
        # the same over every pair of samples (the prob label's mean)
        "small_good_enough_prob": float(prob_labels(quals).mean()),
        "small_strictly_better": float(np.mean(qs > ql)),
        "oracle": report["oracle"],
        "random": report["random"],
    }


def table_stats(
    rows: Sequence[Row], small: str | None = None, large: str | None = None, by: str | None = None
) -> dict[str, Any]:
    """The whole report: models, the pair (when both are named), and the same per group."""
    report: dict[str, Any] = {"n": len(rows), "models": model_stats(rows)}
    if small and large:
        report["pair"] = pair_stats(rows, small, large)
    if by:
        groups: dict[str, list[Row]] = {}
        for r in rows:
            groups.setdefault(group_key(r, by), []).append(r)
        report["by"] = by
        report["groups"] = {}
        for name in sorted(groups):
            g = groups[name]
            entry: dict[str, Any] = {"n": len(g), "models": model_stats(g)}
            if small and large and any(r.get("quality", {}).get(small) and r.get("quality", {}).get(large) for r in g):
                p = pair_stats(g, small, large)
                entry["pair"] = {k: p[k] for k in ("n", "Q_small", "Q_large", "small_good_enough_prob")}
                entry["pair"]["oracle_ca_at_qd0"] = p["oracle"]["cost_advantage_at_quality_drop"]["0"]
            report["groups"][name] = entry
    return report


def journal_stats(done: dict[tuple[str, str, int], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, what a (possibly still running) collection has produced: samples, prompts with
    every sample so far, tokens, and decode time. Samples decoded together (``collect --batch``)
    each carry the batch's wall time, so each counts for ``latency / batch`` of it."""
    out: dict[str, dict[str, Any]] = {}
    for (_, model, _), rec in done.items():
        m = out.setdefault(model, {"samples": 0, "completion_tokens": 0, "seconds": 0.0})
        m["samples"] += 1
        m["completion_tokens"] += int(rec.get("completion_tokens") or 0)
        m["seconds"] += float(rec.get("latency_s") or 0.0) / int(rec.get("batch") or 1)
    for m in out.values():
        m["tokens_per_s"] = m["completion_tokens"] / m["seconds"] if m["seconds"] else None
        m["seconds"] = round(m["seconds"], 1)
    return out
