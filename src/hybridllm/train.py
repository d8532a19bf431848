"""Training a router: table → labels → features → head (or fine-tuned encoder) → calibrated artifact."""

from __future__ import annotations

import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact import save_artifact
from .calibrate import calibration_table, operating_points
from .encoder import EmbeddingCache, TransformerEncoder, make_encoder
from .head import HeadConfig, HeadWeights, train_head
from .labels import LABEL_TYPES, make_labels
from .metrics import evaluate_scores, expected_quality
from .router import featurize
from .routing_text import distractor_copies, routing_text
from .table import Row, TableError, select_pair, split_rows, table_digest

DEFAULT_EXTRA = ["log_tokens"]


@dataclass
class TrainOptions:
    small: str
    large: str
    labels: str = "trans"
    mode: str = "head"
    encoder: str | None = "static"
    max_length: int = 256
    seed: int = 0
    val_fraction: float = 0.2
    head: HeadConfig = field(default_factory=lambda: HeadConfig(extra=list(DEFAULT_EXTRA)))
    finetune_epochs: int = 3
    finetune_batch_size: int = 16
    finetune_lr: float = 3e-5
    default_max_quality_drop: float = 1.0
    prompt_turns: str = "all"
    # head mode: copies of each training prompt with appended filler, same label (routing_text.distractor_copies)
    augment: int = 2


@dataclass
class TrainResult:
    output: Path
    config: dict[str, Any]
    val_scores: np.ndarray
    skipped_train: int
    skipped_val: int


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def pair_qualities(rows: Sequence[Row], small: str, large: str) -> list[tuple[list[float], list[float]]]:
    return [(r["quality"][small], r["quality"][large]) for r in rows]


@dataclass
class FittedRouter:
    """A trained two-model router in memory: ``save(dir)`` writes the artifact, and
    ``Router.from_fitted`` scores with it directly. ``work_dir``: the fine-tuned encoder's weights
    (finetune mode only), copied into the artifact on save."""

    config: dict[str, Any]
    weights: Any  # HeadWeights, or the fine-tuned head's tensors
    val_scores: np.ndarray
    skipped_train: int
    skipped_val: int
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        # the fine-tuned encoder's temporary directory lives as long as this object, or until close()
        self._remove = None if self.work_dir is None else weakref.finalize(self, shutil.rmtree, self.work_dir, True)

    def close(self) -> None:
        """Remove the fine-tuned encoder's temporary directory now (a saved artifact has its own copy)."""
        if self._remove is not None:
            self._remove()

    def tensors(self) -> dict[str, np.ndarray]:
        return self.weights.tensors() if isinstance(self.weights, HeadWeights) else self.weights

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        if self.work_dir is not None:
            enc = out / "encoder"
            if enc.exists():
                shutil.rmtree(enc)
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.work_dir / "encoder", enc)
        return save_artifact(out, self.config, self.tensors())


def train_router(
    rows: Sequence[Row],
    options: TrainOptions,
    output: str | Path,
    validation: Sequence[Row] | None = None,
    progress: Callable[[str], None] | None = None,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
    featurizer: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> TrainResult:
    """:func:`fit_router`, then save the artifact at ``output``."""
    fitted = fit_router(rows, options, validation, progress, cache, show_progress, featurizer)
    try:
        out = fitted.save(output)
    finally:
        fitted.close()
    return TrainResult(out, fitted.config, fitted.val_scores, fitted.skipped_train, fitted.skipped_val)


def fit_router(
    rows: Sequence[Row],
    options: TrainOptions,
    validation: Sequence[Row] | None = None,
    progress: Callable[[str], None] | None = None,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
    featurizer: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> FittedRouter:
    """Train, select and calibrate a router in memory. ``featurizer``: computes the head's inputs
    for a list of texts in place of the in-process embedding pass (the Ray engine passes
    :func:`hybridllm.engine.featurize_ray`); it must return what ``featurize(encoder, texts,
    options.head.extra)`` would."""
    if options.labels not in LABEL_TYPES:
        raise ValueError(f"unknown label type {options.labels!r}; expected one of {', '.join(LABEL_TYPES)}")
    if options.mode not in ("head", "finetune"):
        raise ValueError(f"unknown mode {options.mode!r}; expected head or finetune")
    t0 = time.perf_counter()
    pair = select_pair(rows, options.small, options.large)
    skipped_val = 0
    if validation is None:
        train_rows, val_rows = split_rows(pair.rows, [1 - options.val_fraction, options.val_fraction], "hybridllm-val")
        val_source = f"held out {options.val_fraction:.0%} of TABLE by hashed id"
    else:
        vpair = select_pair(validation, options.small, options.large)
        train_rows, val_rows, skipped_val = pair.rows, vpair.rows, vpair.skipped
        val_source = "--validation table"
    if len(train_rows) < 10 or len(val_rows) < 5:
        raise TableError(
            f"too few rows to train ({len(train_rows)} train, {len(val_rows)} validation); need >= 10 and >= 5"
        )
    _log(
        progress,
        f"{len(train_rows)} train rows, {len(val_rows)} validation rows ({val_source}); "
        f"skipped {pair.skipped} rows without both models",
    )
    y, t_star = make_labels(pair_qualities(train_rows, options.small, options.large), options.labels)
    _log(
        progress,
        f"labels {options.labels}: mean {y.mean():.3f}" + (f", t* = {t_star:g}" if t_star is not None else ""),
    )
    qs_val, ql_val = expected_quality(val_rows, options.small, options.large)
    train_texts = [routing_text(r["prompt"], options.prompt_turns) for r in train_rows]
    val_texts = [routing_text(r["prompt"], options.prompt_turns) for r in val_rows]
    work_dir: Path | None = None
    if options.mode == "head":
        encoder = make_encoder(options.encoder, max_length=options.max_length)
        cache = cache if cache is not None else EmbeddingCache()
        _log(
            progress,
            f"encoder {encoder.name} ({encoder.backend}), {encoder.dim}-d, max {options.max_length} tokens",
        )
        extra = options.head.extra
        aug_texts, aug_src = distractor_copies(train_texts, options.augment, options.seed)
        fit_texts, y_fit = [*train_texts, *aug_texts], np.concatenate([y, y[aug_src]])
        if aug_texts:
            _log(progress, f"augmented with {len(aug_texts)} copies carrying appended filler (same labels)")
        if featurizer is not None:
            x_all = featurizer([*fit_texts, *val_texts])
            x_train, x_val = x_all[: len(fit_texts)], x_all[len(fit_texts) :]
        else:
            x_train = featurize(encoder, fit_texts, extra, cache, show_progress)
            x_val = featurize(encoder, val_texts, extra, cache, show_progress)
        cfg_head = replace(options.head, seed=options.seed)
        # the validation rows' labels, with the training rows' t*: what the head's choices are scored on
        y_val, _ = make_labels(pair_qualities(val_rows, options.small, options.large), options.labels, t_star)
        weights, info = train_head(
            x_train, y_fit, x_val, qs_val, ql_val, cfg_head, progress, y_val, memory_rows=len(train_texts)
        )
        val_scores = weights.predict(x_val)
        bundled = False
        enc_name, enc_spec, enc_fp = encoder.name, options.encoder, encoder.fingerprint
    else:
        import tempfile

        from .finetune import finetune

        work_dir = Path(tempfile.mkdtemp(prefix="hybridllm-finetune-"))
        try:  # a failed fine-tune leaves no directory behind (a finished one: FittedRouter.close)
            enc_dir = work_dir / "encoder"
            base_spec = options.encoder
            if base_spec is not None and (base_spec == "static" or base_spec.endswith(":static")):
                base_spec = None if base_spec == "static" else base_spec[: -len(":static")]
            weights, val_scores, info = finetune(
                base_spec,
                train_texts,
                y,
                val_texts,
                qs_val,
                ql_val,
                enc_dir,
                max_length=options.max_length,
                epochs=options.finetune_epochs,
                batch_size=options.finetune_batch_size,
                lr=options.finetune_lr,
                seed=options.seed,
                progress=progress,
            )
            encoder = TransformerEncoder(str(enc_dir), max_length=options.max_length)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        bundled = True
        enc_name, enc_spec, enc_fp = encoder.name, base_spec, encoder.fingerprint
        extra = []
    metrics = evaluate_scores(val_scores, qs_val, ql_val, with_curve=False)
    table = calibration_table(val_scores, qs_val, ql_val)
    config: dict[str, Any] = {
        "hybridllm_version": __version__,
        "small": options.small,
        "large": options.large,
        "encoder": {
            "name": enc_name,
            "spec": enc_spec,
            "bundled": bundled,
            "max_length": options.max_length,
            "fingerprint": enc_fp,
            "pooling": "mean",
        },
        "mode": options.mode,
        "labels": options.labels,
        "t_star": t_star,
        "seed": options.seed,
        "prompt_turns": options.prompt_turns,
        "augment": options.augment if options.mode == "head" else 0,
        "head": {
            **(options.head.to_dict() if options.mode == "head" else {"members": 1}),
            "extra": list(extra),
            "training": info,
        },
        "data": {
            "train_rows": len(train_rows),
            "validation_rows": len(val_rows),
            "skipped_train": pair.skipped,
            "skipped_validation": skipped_val,
            "validation_source": val_source,
            "train_digest": table_digest(train_rows, options.small, options.large),
            "validation_digest": table_digest(val_rows, options.small, options.large),
        },
        "validation_metrics": metrics,
        "calibration": table,
        "operating_points": operating_points(table),
        "default_operating_point": {"kind": "max_quality_drop", "value": options.default_max_quality_drop},
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return FittedRouter(config, weights, val_scores, pair.skipped, skipped_val, work_dir)
