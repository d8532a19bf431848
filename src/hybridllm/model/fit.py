"""Fitting a router, estimator style: :func:`fit_router` trains in memory and returns a
:class:`FittedRouter`; ``.save(dir)`` writes the artifact that :class:`hybridllm.Router` loads.

Any number of models, and a pair is a fleet of two. One encoder pass and one head with one output
per model cheaper than the reference (the best model on average on the training rows, or the
``large`` one of a pair): output k predicts whether model k's answer is good enough compared with
the reference's on that query (:func:`hybridllm.stages.labels.label_matrix`, each model with its own
t*). All models' outcomes train the same hidden layer, so every model's successes and failures teach
it what makes a query hard. Calibration is the policy's sweep over the validation rows
(:func:`hybridllm.routing.policy.sweep`), whatever the number of models.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm._version import __version__
from hybridllm.errors import UsageError, require
from hybridllm.evaluate.metrics import evaluate_scores
from hybridllm.features.cache import EmbeddingCache
from hybridllm.features.featurize import featurize, make_encoder
from hybridllm.features.text import distractor_copies, routing_text
from hybridllm.features.transformer import TransformerEncoder
from hybridllm.routing.knob import operating_points
from hybridllm.routing.policy import Fleet, sweep
from hybridllm.routing.value import Policy
from hybridllm.stages.labels import LABEL_TYPES, label_matrix
from hybridllm.tables.format import Row, TableError, split_rows, table_digest

from .artifact import save_artifact
from .finetune import finetune
from .fleet_rows import make_fleet, quality_matrix, samples_note, usable_rows
from .head import HeadConfig, HeadWeights
from .head_fit import train_head
from .select import route_head

DEFAULT_EXTRA = ["log_tokens"]


@dataclass
class TrainOptions:
    """What to train. The models: ``small`` and ``large`` (a pair, the large one the reference), or
    ``models`` (any number; the reference is the best on average) with ``costs`` (relative cost per
    model in any unit: price per 1M tokens, parameter count; without costs the order given is taken
    as cheapest first, and the router takes no budget knob)."""

    small: str | None = None
    large: str | None = None
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
    models: Sequence[str] | None = None
    costs: Mapping[str, float] | None = None

    def model_names(self) -> tuple[list[str], str | None]:
        """(the models as given, the declared reference or None for the best on average)."""
        if self.models is not None:
            if self.small or self.large:
                raise UsageError("give models, or small and large, not both")
            names = list(self.models)
            if len(names) < 2 or len(set(names)) != len(names):
                raise UsageError(f"models needs at least two distinct names, got {names}")
            return names, None
        if not self.small or not self.large:
            raise UsageError("give small and large (two models) or models (any number)")
        if self.small == self.large:
            raise TableError(f"small and large model are the same ({self.small!r})")
        return [self.small, self.large], self.large


@dataclass
class TrainResult:
    output: Path
    config: dict[str, Any]
    val_scores: np.ndarray
    skipped_train: int
    skipped_val: int


@dataclass
class FittedRouter:
    """A trained router in memory: ``save(dir)`` writes the artifact, and ``Router.from_fitted``
    scores with it directly. ``work_dir``: the fine-tuned encoder's weights (finetune mode only),
    copied into the artifact on save."""

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


@dataclass
class _Split:
    """The rows a router is fitted and calibrated on, and the models' qualities on the latter."""

    fleet: Fleet
    train: list[Row]
    val: list[Row]
    skipped_train: int
    skipped_val: int
    val_source: str
    q_val: np.ndarray  # [n_val, M], cost order

    @property
    def candidates(self) -> list[str]:
        return [self.fleet.models[i] for i in self.fleet.candidates]


MIN_TRAIN_ROWS, MIN_VALIDATION_ROWS = 10, 5  # the fewest rows a router is fitted, and calibrated, on


def holdout(rows: Sequence[Row], options: TrainOptions) -> tuple[list[Row], list[Row]]:
    """(train, validation) of a table trained on without a validation table: ``val_fraction`` of
    its rows held out by hashed id."""
    train, val = split_rows(rows, [1 - options.val_fraction, options.val_fraction], "hybridllm-val")
    return train, val


def _split(rows: Sequence[Row], options: TrainOptions, validation: Sequence[Row] | None) -> _Split:
    names, reference = options.model_names()
    kept, skipped = usable_rows(rows, names)
    skipped_val = 0
    if validation is None:
        train_rows, val_rows = holdout(kept, options)
        val_source = f"held out {options.val_fraction:.0%} of TABLE by hashed id"
    else:
        train_rows = kept
        val_rows, skipped_val = usable_rows(validation, names)
        val_source = "--validation table"
    if len(train_rows) < MIN_TRAIN_ROWS or len(val_rows) < MIN_VALIDATION_ROWS:
        raise TableError(
            f"too few rows to train ({len(train_rows)} train, {len(val_rows)} validation); "
            f"need >= {MIN_TRAIN_ROWS} and >= {MIN_VALIDATION_ROWS}"
        )
    fleet = make_fleet(train_rows, names, options.costs, reference)
    q_val = quality_matrix(val_rows, fleet.models)
    return _Split(fleet, train_rows, val_rows, skipped, skipped_val, val_source, q_val)


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
    :func:`hybridllm.engine.jobs.featurize_ray`); it must return what ``featurize(encoder, texts,
    options.head.extra)`` would."""
    if options.labels not in LABEL_TYPES:
        raise UsageError(f"unknown label type {options.labels!r}; expected one of {', '.join(LABEL_TYPES)}")
    if options.mode not in ("head", "finetune"):
        raise UsageError(f"unknown mode {options.mode!r}; expected head or finetune")
    for module in ("torch", "sklearn"):  # before any work: the plain install serves, it does not train
        require(module, "train", "training a router")
    t0 = time.perf_counter()
    split = _split(rows, options, validation)
    fleet, cands = split.fleet, split.candidates
    _log(
        progress,
        f"{len(split.train)} train rows, {len(split.val)} validation rows ({split.val_source}); skipped "
        f"{split.skipped_train} rows without every model; reference {fleet.reference}; scoring {', '.join(cands)}",
    )
    y, stars = label_matrix(split.train, cands, fleet.reference, options.labels)
    y_val, _ = label_matrix(split.val, cands, fleet.reference, options.labels, stars)
    stars_txt = ", ".join(f"{m} {t:g}" for m, t in zip(cands, stars, strict=True) if t is not None)
    _log(progress, f"labels {options.labels}: mean {y.mean():.3f}" + (f", t* {stars_txt}" if stars_txt else ""))
    _log(progress, samples_note(split.train, fleet.models))
    qs_val, ql_val = split.q_val[:, fleet.candidates], split.q_val[:, fleet.ref]
    if len(cands) == 1:  # one scored model: the head's single-output form (w2 [E, h])
        y, y_val, qs_val = y[:, 0], y_val[:, 0], qs_val[:, 0]
    train_texts = [routing_text(r["prompt"], options.prompt_turns) for r in split.train]
    val_texts = [routing_text(r["prompt"], options.prompt_turns) for r in split.val]
    fit = _fit_head if options.mode == "head" else _fit_finetuned
    part = fit(options, split, train_texts, y, val_texts, y_val, qs_val, ql_val, progress, cache, show_progress,
               featurizer)  # fmt: skip
    val_scores = part.val_scores
    config = _config(options, split, stars, part, val_scores, qs_val, ql_val)
    config["train_seconds"] = round(time.perf_counter() - t0, 2)
    return FittedRouter(config, part.weights, val_scores, split.skipped_train, split.skipped_val, part.work_dir)


@dataclass
class _Head:
    """What either training mode gives: the weights, validation scores and the encoder's identity."""

    weights: Any
    val_scores: np.ndarray
    info: dict[str, Any]
    encoder: dict[str, Any]
    extra: list[str]
    work_dir: Path | None = None
    policy: Policy = field(default_factory=Policy)
    choice: dict[str, Any] | None = None


def _fit_head(options, split, train_texts, y, val_texts, y_val, qs_val, ql_val, progress, cache, show_progress,
              featurizer) -> _Head:  # fmt: skip
    encoder = make_encoder(options.encoder, max_length=options.max_length)
    cache = cache if cache is not None else EmbeddingCache()
    _log(progress, f"encoder {encoder.name} ({encoder.backend}), {encoder.dim}-d, max {options.max_length} tokens")
    extra = list(options.head.extra)
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
    weights, info = train_head(
        x_train, y_fit, x_val, qs_val, ql_val, cfg_head, progress, y_val, memory_rows=len(train_texts)
    )
    enc = {"name": encoder.name, "spec": options.encoder, "bundled": False, "fingerprint": encoder.fingerprint}
    policy, choice = route_head(weights, x_val, y_val, split.q_val, split.fleet, options.head.route, options.seed,
                                progress)  # fmt: skip
    val_scores = policy.decision_scores(weights.predict(x_val), split.fleet)
    info = {**options.head.to_dict(), "training": info}
    return _Head(weights, val_scores, info, enc, extra, policy=policy, choice=choice)


def _fit_finetuned(options, split, train_texts, y, val_texts, y_val, qs_val, ql_val, progress, cache, show_progress,
                   featurizer) -> _Head:  # fmt: skip
    if y.ndim != 1:
        raise UsageError("finetune mode trains a router over two models; give two models (or use head mode)")
    if featurizer is not None:
        raise UsageError("--engine ray covers the head-mode embedding pass; finetune trains in one process")
    work_dir = Path(tempfile.mkdtemp(prefix="hybridllm-finetune-"))
    try:  # a failed fine-tune leaves no directory behind (a finished one: FittedRouter.close)
        enc_dir = work_dir / "encoder"
        base_spec = options.encoder
        if base_spec is not None and (base_spec == "static" or base_spec.endswith(":static")):
            base_spec = None if base_spec == "static" else base_spec[: -len(":static")]
        weights, val_scores, info = finetune(
            base_spec, train_texts, y, val_texts, qs_val, ql_val, enc_dir, max_length=options.max_length,
            epochs=options.finetune_epochs, batch_size=options.finetune_batch_size, lr=options.finetune_lr,
            seed=options.seed, progress=progress,
        )  # fmt: skip
        encoder = TransformerEncoder(str(enc_dir), max_length=options.max_length)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    enc = {"name": encoder.name, "spec": base_spec, "bundled": True, "fingerprint": encoder.fingerprint}
    return _Head(weights, val_scores, {"members": 1, "training": info}, enc, [], work_dir)


def _config(options: TrainOptions, split: _Split, stars: list, part: _Head, val_scores: np.ndarray,
            qs_val: np.ndarray, ql_val: np.ndarray) -> dict[str, Any]:  # fmt: skip
    fleet, cands = split.fleet, split.candidates
    table = sweep(val_scores.reshape(len(split.val), -1), split.q_val, fleet)
    # a router over two models also reports the two-model measures (APGR, cost advantage)
    metrics = evaluate_scores(val_scores, qs_val, ql_val, with_curve=False) if len(cands) == 1 else None
    return {
        "hybridllm_version": __version__,
        "fleet": fleet.to_dict(),
        "candidates": cands,
        # mean validation quality per model (cost order): the serving fallback order
        "fleet_quality": [round(float(x), 6) for x in split.q_val.mean(axis=0)],
        # small/large name the cheapest and the reference model, for tools that show a pair
        "small": fleet.models[0],
        "large": fleet.reference,
        "encoder": {**part.encoder, "max_length": options.max_length, "pooling": "mean"},
        "mode": options.mode,
        "labels": options.labels,
        "t_star": dict(zip(cands, stars, strict=True)),
        "seed": options.seed,
        "prompt_turns": options.prompt_turns,
        "augment": options.augment if options.mode == "head" else 0,
        "head": {**part.info, "extra": part.extra},
        # how the head's scores route (absent in formats 1-3: the threshold rule on raw scores)
        "policy": {**part.policy.to_dict(), **({"choice": part.choice} if part.choice else {})},
        "data": {
            "train_rows": len(split.train),
            "validation_rows": len(split.val),
            "skipped_train": split.skipped_train,
            "skipped_validation": split.skipped_val,
            "validation_source": split.val_source,
            "train_digest": table_digest(split.train, fleet.models[0], fleet.reference),
            "validation_digest": table_digest(split.val, fleet.models[0], fleet.reference),
        },
        "validation_metrics": metrics,
        "calibration": table,
        "operating_points": operating_points(table),
        "default_operating_point": {"kind": "max_quality_drop", "value": options.default_max_quality_drop},
    }


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)
