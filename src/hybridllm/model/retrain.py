"""A router that learns from its own traffic: fit a challenger on the outcomes log (shadow pairs,
optionally feedback and the original table), score champion and challenger on the same held-out
slice of the most recent pairs, and promote the challenger only when it is measurably better.

- **Rows.** One row per shadowed request (:func:`hybridllm.stages.outcomes.outcomes_table`); a row
  trains or tests only when it has every fleet model's score (a pair's two models; beyond two, the
  server's ``--shadow-sides all`` shadow checks). Each shadow pair carries the weight it was drawn with
  (1 / the shadow rate when it was drawn): rows are repeated in proportion to it, so traffic
  shadowed at a lower rate counts as much as it stands for.
- **Held out.** The last ``holdout`` share of usable rows, in log order (the log is appended as
  traffic is served, so these are the most recent), is never trained on: both routers are scored on
  it and nothing else. Traffic repeats itself, so a training row (or table row) whose prompt is also
  a held-out prompt is dropped too: otherwise the challenger is scored on prompts it has seen and
  the gate overstates its gain.
- **The gate.** The figure is AIQ (several models) or APGR (a pair) on the held-out rows, and the
  quality drop and cost each router realises at the operator's knob. A paired percentile bootstrap
  over the held-out rows gives a 95 % interval of challenger minus champion; the challenger is
  promoted when the interval's lower bound is above ``min_gain``.
- **Promotion** repoints a router *slot* (a symbolic link) at the challenger's directory with one
  atomic rename: a server reading the slot sees the old router or the new, never a mix.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.errors import UsageError
from hybridllm.evaluate.bootstrap import interval95
from hybridllm.evaluate.fleet import evaluate_fleet
from hybridllm.evaluate.metrics import apgr, quality_curve
from hybridllm.fsutil import atomic_write
from hybridllm.stages.outcomes import outcomes_table, read_outcomes
from hybridllm.tables.format import Row, TableError

from .fit import TrainOptions, fit_router
from .fleet_rows import quality_matrix, usable_rows
from .head import HeadConfig
from .router import Router

#: how feedback enters the rows: not at all, or as the served model's score in place of the judge's
FEEDBACK_MODES = ("ignore", "replace")
#: the most copies one row gets from its weight (a pair drawn at a tiny rate must not swamp the table)
MAX_COPIES = 20


@dataclass(frozen=True)
class RetrainOptions:
    """``holdout``: the most recent share of usable traffic rows scored by the gate and never
    trained on; ``min_gain``: the improvement (AIQ or APGR points) the interval's lower bound must
    exceed; ``knob``: the operating point the drop and cost are reported at (the champion's default
    point when None), e.g. ``{"max_quality_drop": 1.0}``; ``feedback``: :data:`FEEDBACK_MODES`."""

    holdout: float = 0.2
    min_gain: float = 0.0
    knob: Mapping[str, float] | None = None
    feedback: str = "ignore"
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise UsageError(f"holdout must be between 0 and 1 (exclusive), got {self.holdout}")
        if self.feedback not in FEEDBACK_MODES:
            raise UsageError(f"feedback must be one of {', '.join(FEEDBACK_MODES)}, got {self.feedback!r}")
        if not math.isfinite(self.min_gain):
            raise UsageError("min_gain must be a finite number")
        if self.n_boot < 100:
            raise UsageError(f"n_boot must be at least 100, got {self.n_boot}")


@dataclass
class Gate:
    """The champion and the challenger on the same held-out rows, and the verdict."""

    metric: str  # "aiq" or "apgr"
    n: int
    champion: float
    challenger: float
    diff_ci95: list[float] | None
    at_knob: dict[str, dict[str, float]]  # {"champion": {...}, "challenger": {...}}: drop %, cost %
    min_gain: float
    promote: bool
    reason: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetrainResult:
    challenger: Path
    gate: Gate
    rows: dict[str, int]  # traffic rows used: train, held out, table rows added, copies from weights
    skipped: dict[str, int]
    seconds: float
    report: Path
    extra: dict[str, Any] = field(default_factory=dict)


def traffic_rows(
    records: Sequence[dict[str, Any]], models: Sequence[str], feedback: str = "ignore"
) -> tuple[list[Row], dict[str, int]]:
    """Rows with every model of ``models`` scored, in log order, each with ``meta.weight`` (the
    shadow pair's sampling weight, 1 when the log has none). ``feedback="replace"``: a request's
    feedback score replaces the judge's score of the model that served it."""
    weights: dict[str, float] = {}
    for rec in records:
        if rec["type"] == "shadow":
            w = rec.get("weight", 1.0)
            ok = isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w > 0
            weights.setdefault(rec["id"], float(w) if ok else 1.0)
    rows, skipped = outcomes_table(records, models)
    if feedback == "replace":
        for r in rows:
            served, fb = r["meta"].get("served"), r["meta"].get("feedback")
            if fb is not None and served in r["quality"]:
                r["quality"][served] = [float(fb)]
    try:
        used, incomplete = usable_rows(rows, list(models))
    except TableError:  # not one row scores every model: retrain says why, and how to collect them
        used, incomplete = [], len(rows)
    skipped["missing_model_scores"] = incomplete
    for r in used:
        r["meta"]["weight"] = weights.get(r["id"], 1.0)
    return used, skipped


def prompt_key(prompt: Any) -> str:
    """One string per distinct prompt (a message list compared by its content, not its object)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_recent(rows: Sequence[Row], holdout: float) -> tuple[list[Row], list[Row], int]:
    """(train, held out, dropped): the last ``holdout`` share of ``rows`` (log order: the most
    recent) is held out; an earlier row with the prompt of a held-out row is dropped from train."""
    n_held = max(1, round(len(rows) * holdout))
    held = list(rows[-n_held:])
    seen = {prompt_key(r["prompt"]) for r in held}
    train = [r for r in rows[:-n_held] if prompt_key(r["prompt"]) not in seen]
    return train, held, len(rows) - n_held - len(train)


def weighted(rows: Sequence[Row]) -> list[Row]:
    """Each row repeated in proportion to its weight relative to the lightest (at most
    :data:`MAX_COPIES` times); copies keep their id, so a split by hashed id puts every copy of a
    row on the same side (no row both trains and validates)."""
    if not rows:
        return []
    w = np.array([float(r.get("meta", {}).get("weight", 1.0)) for r in rows])
    copies = np.clip(np.rint(w / w.min()), 1, MAX_COPIES).astype(int)
    out: list[Row] = []
    for r, c in zip(rows, copies, strict=True):
        out.extend([r] * int(c))
    return out


def options_like(router: Router) -> TrainOptions:
    """Training options that give a challenger of the champion's kind: the same fleet and costs,
    label kind, encoder, head and seed."""
    cfg, fleet = router.config, router.fleet
    head = HeadConfig(**{k: v for k, v in cfg.get("head", {}).items() if k in HeadConfig.__dataclass_fields__})
    common: dict[str, Any] = {
        "labels": cfg.get("labels", "trans"),
        "mode": cfg.get("mode", "head"),
        "encoder": cfg.get("encoder", {}).get("spec", "static"),
        "max_length": cfg.get("encoder", {}).get("max_length", 256),
        "seed": cfg.get("seed", 0),
        "prompt_turns": cfg.get("prompt_turns", "all"),
        "augment": cfg.get("augment", 2),
        "head": head,
    }
    if len(fleet.models) == 2:
        return TrainOptions(small=fleet.models[0], large=fleet.reference, **common)
    costs = dict(zip(fleet.models, fleet.costs, strict=True)) if fleet.costs_given else None
    return TrainOptions(models=list(fleet.models), costs=costs, **common)


def _figure(router: Router, scores: np.ndarray, quality: np.ndarray) -> float:
    """AIQ (several models) or APGR (a pair) of ``scores`` on rows of ``quality`` [n, M]."""
    fleet = router.fleet
    if len(fleet.models) > 2:
        return float(evaluate_fleet(scores.reshape(len(quality), -1), quality, fleet)["router"]["aiq"])
    qs, ql = quality[:, 0], quality[:, fleet.ref]
    value = apgr(quality_curve(scores.reshape(-1), qs, ql), float(qs.mean()), float(ql.mean()))
    return float("nan") if value is None else float(value)


def _at_knob(router: Router, scores: np.ndarray, quality: np.ndarray, knob: Mapping[str, float] | None) -> dict:
    """The quality drop (% of the reference's) and cost (% of always-reference) ``router`` realises
    on these rows at the knob, deciding each row by its own rule."""
    thr, desc = router.threshold(**dict(knob or {}))
    index = {m: i for i, m in enumerate(router.fleet.models)}
    picks = np.array([index[router.decide(s, thr, desc).model] for s in scores])
    fleet = router.fleet
    q = float(quality[np.arange(len(picks)), picks].mean())
    q_ref = float(quality[:, fleet.ref].mean())
    cost = float(np.asarray(fleet.costs)[picks].mean() / fleet.costs[fleet.ref] * 100)
    drop = (q_ref - q) / (abs(q_ref) or 1.0) * 100
    return {"knob": desc, "quality_drop": round(drop, 4), "cost": round(cost, 4), "quality": round(q, 6)}


def compare(
    champion: Router, challenger: Router, rows: Sequence[Row], options: RetrainOptions = RetrainOptions()
) -> Gate:
    """Score both routers on ``rows`` and decide (module docstring, "The gate")."""
    if list(champion.fleet.models) != list(challenger.fleet.models):
        raise UsageError(f"the routers route different fleets: {champion.models} and {challenger.models}")
    used, _ = usable_rows(rows, list(champion.fleet.models))
    if len(used) < 20:
        raise TableError(f"too few held-out rows to compare routers ({len(used)}); need >= 20")
    prompts = [r["prompt"] for r in used]
    quality = quality_matrix(used, champion.fleet.models)
    s_old, s_new = (np.asarray(r.score(prompts), dtype=np.float64) for r in (champion, challenger))
    metric = "aiq" if len(champion.fleet.models) > 2 else "apgr"
    old, new = _figure(champion, s_old, quality), _figure(challenger, s_new, quality)
    rng = np.random.default_rng(options.seed)
    n, diffs = len(used), []
    for _ in range(options.n_boot):
        idx = rng.integers(0, n, n)
        d = _figure(challenger, s_new[idx], quality[idx]) - _figure(champion, s_old[idx], quality[idx])
        if math.isfinite(d):
            diffs.append(d)
    ci = interval95(diffs)
    at = {"champion": _at_knob(champion, s_old, quality, options.knob),
          "challenger": _at_knob(challenger, s_new, quality, options.knob)}  # fmt: skip
    promote = ci is not None and ci[0] > options.min_gain
    if ci is None:
        reason = "no interval: the held-out rows do not separate the models (every resample undefined)"
    elif promote:
        reason = (
            f"{metric} gain {new - old:+.4f}, 95 % interval [{ci[0]:+.4f}, {ci[1]:+.4f}] above {options.min_gain:+.4f}"
        )
    else:
        reason = (f"{metric} gain {new - old:+.4f}, 95 % interval [{ci[0]:+.4f}, {ci[1]:+.4f}] "
                  f"does not clear {options.min_gain:+.4f}: the champion stays")  # fmt: skip
    method = f"paired percentile bootstrap over {n} held-out rows, {options.n_boot} resamples, seed {options.seed}"
    return Gate(metric, n, round(old, 6), round(new, 6), ci, at, options.min_gain, promote, reason, method)


def retrain(
    outcomes: str | Path,
    champion_dir: str | Path,
    output: str | Path,
    table: Sequence[Row] | None = None,
    options: RetrainOptions = RetrainOptions(),
    progress: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Fit a challenger on the outcomes log (and ``table``, the original training rows, if given),
    save it at ``output`` with ``gate.json`` beside its config, and score it against the champion
    on the held-out recent rows. Promoting it is :func:`promote`'s (the caller decides)."""
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    champion = Router(champion_dir)
    models = list(champion.fleet.models)
    rows, skipped = traffic_rows(read_outcomes(outcomes), models, options.feedback)
    train, held, overlap = split_recent(rows, options.holdout)
    if len(held) < 20:
        missing = skipped.get("missing_model_scores", 0)
        hint = (
            f"; {missing} miss a model's score: serve a fleet with --shadow-sides all (docs/retrain.md#fleets)"
            if missing and len(models) > 2
            else ""
        )
        raise TableError(
            f"{outcomes}: {len(rows)} shadow pairs score every model of {models}; the gate needs >= 20 "
            f"held out ({options.holdout:.0%}): serve longer or raise --holdout{hint}"
        )
    train_w = weighted(train)
    held_ids, held_prompts = {h["id"] for h in held}, {prompt_key(h["prompt"]) for h in held}
    base = [r for r in (table or []) if r.get("id") not in held_ids and prompt_key(r["prompt"]) not in held_prompts]
    skipped["train_rows_held_out_prompt"] = overlap
    skipped["table_rows_held_out_prompt"] = len(table or []) - len(base)
    if not train and not base:
        raise TableError(
            f"{outcomes}: every earlier traffic row repeats a held-out prompt; nothing is left to train on "
            "(serve longer, or pass the original table)"
        )
    say(f"training the challenger on {len(train)} traffic rows ({len(train_w)} with weights) + {len(base)} table rows")
    fitted = fit_router([*base, *train_w], options_like(champion), show_progress=False)
    try:
        out = fitted.save(output)
    finally:
        fitted.close()
    challenger = Router(out)
    say(f"scoring champion and challenger on {len(held)} held-out rows")
    gate = compare(champion, challenger, held, options)
    counts = {"traffic": len(rows), "train": len(train), "held_out": len(held), "weighted_train": len(train_w),
              "table": len(base)}  # fmt: skip
    report = {"champion": str(Path(champion_dir).resolve()), "challenger": str(out), "rows": counts,
              "skipped": skipped, "gate": gate.to_dict(),
              "options": {**asdict(options), "knob": dict(options.knob or {})}}  # fmt: skip
    path = atomic_write(Path(out) / "gate.json", json.dumps(report, indent=2) + "\n")
    return RetrainResult(Path(out), gate, counts, skipped, round(time.perf_counter() - t0, 2), path)


def promote(slot: str | Path, artifact: str | Path) -> Path:
    """Point the router slot ``slot`` (a symbolic link) at ``artifact`` in one atomic rename. A
    slot that is still a plain directory is refused (convert it once: move the directory aside
    and link the slot to it)."""
    slot, target = Path(slot), Path(artifact).resolve()
    if not (target / "config.json").is_file():
        raise UsageError(f"{artifact}: not a router directory (no config.json)")
    if slot.exists() and not slot.is_symlink():
        raise UsageError(
            f"{slot} is a directory, not a router slot: move it aside and link it once "
            f"(mv {slot} {slot}.v0 && ln -s {slot.name}.v0 {slot}), then promote"
        )
    tmp = slot.with_name(f".{slot.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, slot)
    return target
