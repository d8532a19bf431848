"""A routing table's rows as a fleet's training data: the fleet in cost order with its reference,
the rows every model has a score on, their quality matrix, and what the label kinds amount to on
the table. Used by training, evaluation, recalibration and retraining alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hybridllm.routing.policy import Fleet
from hybridllm.tables.format import Row, TableError


def samples_note(rows: Sequence[Row], models: Sequence[str]) -> str:
    """What the label kinds amount to on this table (docs/method.md, the measured comparison)."""
    several = any(len(r["quality"][m]) > 1 for r in rows for m in models)
    if not several:
        return "one sample per model and query: det, prob and trans are the same labels here"
    return (
        "several samples per model and query: prob and trans average over them (the default trans, "
        "which is prob when t* = 0, ranked better than det on our multi-sample tables: docs/method.md)"
    )


def make_fleet(
    rows: Sequence[Row], models: Sequence[str], costs: Mapping[str, float] | None, reference: str | None = None
) -> Fleet:
    """Models in cost order; the reference is ``reference``, else the best on average on ``rows``
    (ties: the dearer)."""
    given = costs is not None
    if costs is None:
        costs = {m: float(i + 1) for i, m in enumerate(models)}
    missing = [m for m in models if m not in costs]
    if missing:
        raise TableError(f"no cost for {', '.join(missing)} (give --cost NAME=X or a models file)")
    ordered = sorted(models, key=lambda m: (float(costs[m]), list(models).index(m)))
    if reference is None:
        means = {m: float(np.mean([np.mean(r["quality"][m]) for r in rows])) for m in ordered}
        reference = max(ordered, key=lambda m: (round(means[m], 12), ordered.index(m)))
    if ordered.index(reference) == 0:
        raise TableError(f"the cheapest model ({reference}) is also the reference: nothing to route")
    return Fleet(tuple(ordered), tuple(float(costs[m]) for m in ordered), reference, costs_given=given)


def usable_rows(rows: Sequence[Row], models: Sequence[str]) -> tuple[list[Row], int]:
    """Rows with at least one quality sample for every model, and how many were left out."""
    kept = [r for r in rows if all(r.get("quality", {}).get(m) for m in models)]
    if not kept:
        found = sorted({m for r in rows for m in r.get("quality", {})})
        names = ", ".join(repr(m) for m in models)
        raise TableError(f"no row has quality for all of {names} (models in table: {', '.join(found) or 'none'})")
    return kept, len(rows) - len(kept)


def quality_matrix(rows: Sequence[Row], models: Sequence[str]) -> np.ndarray:
    """Expected (mean sample) quality, [n, M], columns in ``models`` order."""
    return np.array([[float(np.mean(r["quality"][m])) for m in models] for r in rows], dtype=np.float64)
