"""Scoring: responses → per-sample quality (DESIGN.md section 3), as pure row-batch functions.

Each metric maps (response, row) to a number; ``score_rows`` fills ``quality`` for every model that
has ``responses``. Rows in, rows out, no hidden state: the same function runs over a list here and
over Ray Data batches on a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .table import Row, TableError

_NUM = r"-?\d[\d,]*(?:\.\d+)?"


def _normalise_number(text: str) -> str | None:
    t = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        v = float(t)
    except ValueError:
        return None
    return str(int(v)) if v.is_integer() else repr(round(v, 6))


def extract_final_number(response: str) -> str | None:
    """The answer a GSM8K-style response commits to: after '####', else in a \\boxed{}, else after
    'answer is', else the last number in the text."""
    for pattern in (rf"####\s*\$?\s*({_NUM})", rf"\\boxed\{{\s*\$?({_NUM})", rf"answer(?: is|:)\s*\$?\s*({_NUM})"):
        m = re.findall(pattern, response, flags=re.IGNORECASE)
        if m:
            return _normalise_number(m[-1])
    nums = re.findall(_NUM, response)
    return _normalise_number(nums[-1]) if nums else None


def exact_match(response: str, row: Row) -> float:
    """1.0 when the response's final number equals the reference's (numeric compare), else 0.0.
    Non-numeric references fall back to case- and space-insensitive string equality."""
    ref = _require_reference(row, "exact-match")
    ref_num = _normalise_number(ref)
    if ref_num is not None:
        return 1.0 if extract_final_number(response) == ref_num else 0.0
    return 1.0 if " ".join(response.lower().split()) == " ".join(ref.lower().split()) else 0.0


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The option letter a multiple-choice response picks: 'answer is (C)', 'Answer: C', else a
    lone letter at the start, else the last standalone letter."""
    patterns = (
        rf"answer is\s*\(?([{letters}])\)?",
        rf"answer\s*[:：]\s*\(?([{letters}])\)?",
        rf"^\s*\(?([{letters}])(?:[.):]|\s*$)",
    )
    for p in patterns:
        m = re.findall(p, response, flags=re.IGNORECASE | re.MULTILINE)
        if m:
            return m[-1].upper() if p.startswith("answer") else m[0].upper()
    m = re.findall(rf"\(([{letters}])\)", response)  # "(C)" anywhere; bare letters are too ambiguous ("I")
    return m[-1].upper() if m else None


def choice(response: str, row: Row) -> float:
    ref = _require_reference(row, "choice").strip().upper()
    return 1.0 if extract_choice(response) == ref else 0.0


def rouge_l(response: str, row: Row) -> float:
    """ROUGE-L F-measure against the reference (Google's rouge-score package, with stemming)."""
    from rouge_score import rouge_scorer

    ref = _require_reference(row, "rouge-l")
    scorer = _ROUGE.get("s")
    if scorer is None:
        scorer = _ROUGE["s"] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(ref, response)["rougeL"].fmeasure)


_ROUGE: dict[str, Any] = {}


def _require_reference(row: Row, metric: str) -> str:
    ref = row.get("reference")
    if ref is None:
        raise TableError(f"row {row.get('id')!r}: reference: missing (metric {metric} needs one)")
    return str(ref)


METRICS: dict[str, Callable[[str, Row], float]] = {
    "exact-match": exact_match,
    "choice": choice,
    "rouge-l": rouge_l,
}


def score_rows(rows: Sequence[Row], metric: str, models: Sequence[str] | None = None) -> list[Row]:
    """Return copies of the rows with ``quality[model]`` computed from ``responses[model]``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; available: {', '.join(sorted(METRICS))}")
    fn = METRICS[metric]
    out = []
    for row in rows:
        new = dict(row)
        quality = dict(row.get("quality", {}))
        for model, responses in row.get("responses", {}).items():
            if models is not None and model not in models:
                continue
            quality[model] = [fn(r, row) for r in responses]
        new["quality"] = quality
        out.append(new)
    return out
