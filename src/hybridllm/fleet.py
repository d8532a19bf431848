"""Training a router over N models, estimator style: :func:`fit_fleet` trains in memory and returns a
:class:`FittedFleet`; ``.save(dir)`` writes the artifact that :class:`hybridllm.Router` loads.

One encoder pass, one head with one output per model cheaper than the reference (the best model on
average on the training rows): output k predicts whether model k's answer is good enough compared
with the reference's on that query (the two-model labels, per model, each with its own t*). All
models' outcomes train the same hidden layer, so every model's successes and failures teach it what
makes a query hard. With two models this is exactly the two-model router (same labels, same head,
same calibration): tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact import save_artifact
from .encoder import EmbeddingCache, make_encoder
from .head import HeadConfig, HeadWeights, train_head
from .labels import LABEL_TYPES, fleet_labels
from .policy import Fleet, sweep
from .router import featurize
from .routing_text import distractor_copies, routing_text
from .table import Row, TableError, split_rows, table_digest

DEFAULT_EXTRA = ["log_tokens"]


@dataclass
class FleetOptions:
    """``models``: the fleet; ``costs``: relative cost per model (any unit: price per 1M tokens,
    parameter count); without costs the order given is taken as cheapest first."""

    models: list[str]
    costs: Mapping[str, float] | None = None
    labels: str = "trans"
    encoder: str | None = "static"
    max_length: int = 256
    seed: int = 0
    val_fraction: float = 0.2
    head: HeadConfig = field(default_factory=lambda: HeadConfig(extra=list(DEFAULT_EXTRA)))
    default_max_quality_drop: float = 1.0
    augment: int = 2
    prompt_turns: str = "all"


def make_fleet(rows: Sequence[Row], models: Sequence[str], costs: Mapping[str, float] | None) -> Fleet:
    """Models in cost order; the reference is the best on average on ``rows`` (ties: the dearer)."""
    if costs is None:
        costs = {m: float(i + 1) for i, m in enumerate(models)}
    missing = [m for m in models if m not in costs]
    if missing:
        raise TableError(f"no cost for {', '.join(missing)} (give --cost NAME=X or a models file)")
    ordered = sorted(models, key=lambda m: (float(costs[m]), list(models).index(m)))
    means = {m: float(np.mean([np.mean(r["quality"][m]) for r in rows])) for m in ordered}
    reference = max(ordered, key=lambda m: (round(means[m], 12), ordered.index(m)))
    if ordered.index(reference) == 0:
        raise TableError(f"the cheapest model ({reference}) is also the best on average: nothing to route")
    return Fleet(tuple(ordered), tuple(float(costs[m]) for m in ordered), reference)


def fleet_rows(rows: Sequence[Row], models: Sequence[str]) -> tuple[list[Row], int]:
    """Rows with quality for every model, and how many were skipped."""
    kept = [r for r in rows if all(r.get("quality", {}).get(m) for m in models)]
    if not kept:
        raise TableError(f"no row has quality for all of {', '.join(models)}")
    return kept, len(rows) - len(kept)


def quality_matrix(rows: Sequence[Row], models: Sequence[str]) -> np.ndarray:
    """Expected (mean sample) quality, [n, M], columns in ``models`` order."""
    return np.array([[float(np.mean(r["quality"][m])) for m in models] for r in rows], dtype=np.float64)


@dataclass
class FittedFleet:
    """A trained N-model router in memory."""

    config: dict[str, Any]
    weights: HeadWeights
    val_scores: np.ndarray

    def tensors(self) -> dict[str, np.ndarray]:
        return self.weights.tensors()

    def save(self, directory: str | Path) -> Path:
        return save_artifact(directory, self.config, self.tensors())


def fit_fleet(
    rows: Sequence[Row],
    options: FleetOptions,
    validation: Sequence[Row] | None = None,
    progress: Callable[[str], None] | None = None,
    cache: EmbeddingCache | None = None,
    show_progress: bool = False,
) -> FittedFleet:
    if options.labels not in LABEL_TYPES:
        raise ValueError(f"unknown label type {options.labels!r}; expected one of {', '.join(LABEL_TYPES)}")
    t0 = time.perf_counter()
    kept, skipped = fleet_rows(rows, options.models)
    if validation is None:
        train_rows, val_rows = split_rows(kept, [1 - options.val_fraction, options.val_fraction], "hybridllm-val")
    else:
        train_rows, _ = kept, None
        val_rows, _ = fleet_rows(validation, options.models)
    if len(train_rows) < 10 or len(val_rows) < 5:
        raise TableError(f"too few rows to train ({len(train_rows)} train, {len(val_rows)} validation)")
    fleet = make_fleet(train_rows, options.models, options.costs)
    cands = [fleet.models[i] for i in fleet.candidates]
    y, stars = fleet_labels(train_rows, cands, fleet.reference, options.labels)
    y_val, _ = fleet_labels(val_rows, cands, fleet.reference, options.labels, stars)
    q_val = quality_matrix(val_rows, fleet.models)
    qs_val, ql_val = q_val[:, fleet.candidates], q_val[:, fleet.ref]
    if len(cands) == 1:  # the two-model router, exactly
        y, y_val, qs_val = y[:, 0], y_val[:, 0], qs_val[:, 0]
    if progress:
        progress(
            f"{len(train_rows)} train rows, {len(val_rows)} validation rows; skipped {skipped}; reference "
            f"{fleet.reference}; scoring {', '.join(cands)}"
        )
    encoder = make_encoder(options.encoder, max_length=options.max_length)
    cache = cache if cache is not None else EmbeddingCache()
    train_texts = [routing_text(r["prompt"], options.prompt_turns) for r in train_rows]
    val_texts = [routing_text(r["prompt"], options.prompt_turns) for r in val_rows]
    aug_texts, aug_src = distractor_copies(train_texts, options.augment, options.seed)
    fit_texts = [*train_texts, *aug_texts]
    y_fit = np.concatenate([y, y[aug_src]]) if aug_texts else y
    extra = options.head.extra
    x_train = featurize(encoder, fit_texts, extra, cache, show_progress)
    x_val = featurize(encoder, val_texts, extra, cache, show_progress)
    weights, info = train_head(
        x_train,
        y_fit,
        x_val,
        qs_val,
        ql_val,
        replace(options.head, seed=options.seed),
        progress,
        y_val,
        memory_rows=len(train_texts),
    )
    val_scores = weights.predict(x_val).reshape(len(val_rows), -1)  # [n, K]
    table = sweep(val_scores, q_val, fleet)
    config: dict[str, Any] = {
        "hybridllm_version": __version__,
        "kind": "fleet",
        "fleet": fleet.to_dict(),
        "candidates": cands,
        # mean validation quality per model (cost order): the serving fallback order
        "fleet_quality": [round(float(x), 6) for x in q_val.mean(axis=0)],
        # small/large name the cheapest and the reference model, for tools that show a pair
        "small": fleet.models[0],
        "large": fleet.reference,
        "encoder": {
            "name": encoder.name,
            "spec": options.encoder,
            "bundled": False,
            "max_length": options.max_length,
            "fingerprint": encoder.fingerprint,
            "pooling": "mean",
        },
        "mode": "head",
        "labels": options.labels,
        "t_star": dict(zip(cands, stars, strict=True)),
        "seed": options.seed,
        "prompt_turns": options.prompt_turns,
        "augment": options.augment,
        "head": {**options.head.to_dict(), "extra": list(extra), "training": info},
        "data": {
            "train_rows": len(train_rows),
            "validation_rows": len(val_rows),
            "skipped": skipped,
            "train_digest": table_digest(train_rows, fleet.models[0], fleet.reference),
            "validation_digest": table_digest(val_rows, fleet.models[0], fleet.reference),
        },
        "calibration": table,
        "default_operating_point": {"kind": "max_quality_drop", "value": options.default_max_quality_drop},
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return FittedFleet(config, weights, val_scores)
