"""Choosing how a trained head routes, on validation: the rule (cheapest good enough, or quality
minus λ·cost), the kind of scores it reads (raw, or mapped per model on validation so that they mean
the same for every model) and the memory member's weight in the mix. Every combination is scored by
validation AIQ (APGR for a pair); a map is judged out of fold (fitted on one half of the validation
rows, scored on the other, and back), so a calibrated candidate is not favoured for having seen the
rows it is judged on. The best is kept, the runner-up's figure recorded beside it.

Pure NumPy: the maps are isotonic fits (pool-adjacent-violators) kept as their blocks' centroids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridllm.evaluate.fleet import area, curve_points
from hybridllm.evaluate.metrics import apgr, quality_curve
from hybridllm.routing.policy import Fleet
from hybridllm.routing.value import Policy, ScoreMap, lambda_scale

from .head import HeadWeights

#: the memory member's weights tried in the mix (1: the memory alone)
MIXES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
#: (rule, scores) tried, in the order ties are settled (the first wins a tie)
COMBOS = (("threshold", "raw"), ("value", "raw"), ("threshold", "calibrated"), ("value", "calibrated"))
_FOLDS = 2


def isotonic_map(p: np.ndarray, target: np.ndarray) -> ScoreMap:
    """The least-squares non-decreasing fit of ``target`` on ``p`` (pool adjacent violators),
    as the centroids (mean p, mean target) of its blocks; equal means are pooled, so the map rises
    strictly between centroids and keeps the order of every two scores it separates."""
    p = np.asarray(p, dtype=np.float64)
    ux, inv = np.unique(p, return_inverse=True)
    sy = np.bincount(inv, np.asarray(target, dtype=np.float64), len(ux))
    cnt = np.bincount(inv, minlength=len(ux)).astype(np.float64)
    blocks: list[list[float]] = []  # [sum of targets, sum of scores, count]
    for y, x, c in zip(sy.tolist(), (ux * cnt).tolist(), cnt.tolist(), strict=True):
        blocks.append([y, x, c])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][2] >= blocks[-1][0] / blocks[-1][2] - 1e-12:
            y2, x2, c2 = blocks.pop()
            blocks[-1][0] += y2
            blocks[-1][1] += x2
            blocks[-1][2] += c2
    return ScoreMap(tuple(b[1] / b[2] for b in blocks), tuple(b[0] / b[2] for b in blocks))


def routing_metric(fleet: Fleet, q: np.ndarray) -> Callable[[np.ndarray], float]:
    """Validation AIQ of decision scores [n, K] on qualities ``q`` [n, M]; APGR for a pair."""
    if len(fleet.models) == 2:
        qs, ql = q[:, 0], q[:, 1]

        def pair(s: np.ndarray) -> float:
            a = apgr(quality_curve(np.asarray(s).reshape(-1), qs, ql), float(qs.mean()), float(ql.mean()))
            return -1.0 if a is None else a

        return pair
    lo = fleet.costs[0] / fleet.costs[fleet.ref] * 100

    def aiq(s: np.ndarray) -> float:
        cx, cy = curve_points(np.asarray(s).reshape(len(q), -1), q, fleet)
        return area(cx, cy, lo, 100.0)

    return aiq


@dataclass(frozen=True)
class Choice:
    """One way of routing: the memory weight, the rule and the scores, and its validation figure."""

    mix: float
    rule: str
    kind: str
    score: float

    def name(self) -> str:
        return f"{self.rule}/{self.kind}, memory weight {self.mix:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "scores": self.kind, "memory_mix": self.mix, "val_score": round(self.score, 6)}


def _targets(kind_rule: str, y_val: np.ndarray, q: np.ndarray, fleet: Fleet) -> np.ndarray:
    """What a map predicts: the chance of being good enough (threshold rule) or the signed quality
    gap to the reference (value rule), [n, K]."""
    if kind_rule == "threshold":
        return np.asarray(y_val, dtype=np.float64).reshape(len(q), -1)
    return q[:, : fleet.ref] - q[:, fleet.ref : fleet.ref + 1]


def fit_policy(rule: str, kind: str, p: np.ndarray, y_val: np.ndarray, q: np.ndarray, fleet: Fleet) -> Policy:
    """The policy of ``rule``/``kind`` fitted on validation scores ``p`` [n, K]: maps (calibrated)
    and the λ scale (value rule)."""
    p = np.asarray(p, dtype=np.float64).reshape(len(q), -1)
    maps: tuple[ScoreMap, ...] = ()
    if kind == "calibrated":
        t = _targets(rule, y_val, q, fleet)
        maps = tuple(isotonic_map(p[:, j], t[:, j]) for j in range(p.shape[1]))
    pol = Policy(rule, kind, maps)
    if rule == "value":
        pol = Policy(rule, kind, maps, lambda_scale(pol.gaps(p), fleet))
    return pol


def _out_of_fold(rule: str, kind: str, p: np.ndarray, y_val: np.ndarray, q: np.ndarray, fleet: Fleet,
                 folds: Sequence[np.ndarray]) -> np.ndarray:  # fmt: skip
    """Decision scores of every validation row from a policy fitted without its fold."""
    if kind == "raw":
        return fit_policy(rule, kind, p, y_val, q, fleet).decision_scores(p, fleet)
    out = np.empty_like(p, dtype=np.float64)
    y2 = np.asarray(y_val).reshape(len(q), -1)
    for f in folds:
        rest = np.setdiff1d(np.arange(len(q)), f)
        pol = fit_policy(rule, kind, p[rest], y2[rest], q[rest], fleet)
        out[f] = pol.decision_scores(p[f], fleet)
    return out


def _mixed(p_head: np.ndarray, p_mem: np.ndarray | None, b: float) -> np.ndarray:
    p = p_head if b == 0 or p_mem is None else (1 - b) * p_head + b * np.asarray(p_mem).reshape(p_head.shape)
    return p.astype(np.float32).astype(np.float64)  # as the router computes it, in float32


def choose_policy(
    p_head: np.ndarray,
    p_mem: np.ndarray | None,
    y_val: np.ndarray,
    q: np.ndarray,
    fleet: Fleet,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[Choice, Choice | None, Policy, list[dict[str, Any]]]:
    """Every memory weight × rule × scores on validation: (the best, the runner-up, the best's
    policy fitted on all validation rows, every candidate's figure). ``p_head`` [n, K] (or [n]) the
    head's scores without memory, ``p_mem`` the memory member's (None: no memory)."""
    shape = np.shape(p_head)
    p_head = np.asarray(p_head, dtype=np.float64).reshape(len(q), -1)
    metric = routing_metric(fleet, q)
    perm = np.random.default_rng(seed).permutation(len(q))
    folds = [np.sort(perm[i::_FOLDS]) for i in range(_FOLDS)]
    mixes = MIXES if p_mem is not None else (0.0,)
    # one scored model: every rule and map keeps the order of its scores, so they route alike
    combos = COMBOS if p_head.shape[1] > 1 else COMBOS[:1]
    tried: list[Choice] = []
    for b in mixes:
        p = _mixed(p_head, p_mem, b)
        for rule, kind in combos:
            s = _out_of_fold(rule, kind, p, y_val, q, fleet, folds)
            tried.append(Choice(b, rule, kind, metric(s.reshape(shape))))
    ranked = sorted(range(len(tried)), key=lambda i: (-round(tried[i].score, 9), i))
    best = tried[ranked[0]]
    runner = tried[ranked[1]] if len(ranked) > 1 else None
    p = _mixed(p_head, p_mem, best.mix)
    policy = fit_policy(best.rule, best.kind, p, y_val, q, fleet)
    if progress is not None:
        ru = f"; runner-up {runner.name()} ({runner.score:.4f})" if runner else ""
        progress(f"routing chosen on validation: {best.name()} ({best.score:.4f}){ru}")
    return best, runner, policy, [c.to_dict() for c in tried]


def route_head(
    weights: HeadWeights,
    x_val: np.ndarray,
    y_val: np.ndarray,
    q_val: np.ndarray,
    fleet: Fleet,
    route: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[Policy, dict[str, Any] | None]:
    """How a trained head routes, and its memory member's weight set on ``weights`` (the member
    dropped when it gets none): :func:`choose_policy` on the validation rows ``x_val`` (labels
    ``y_val``, qualities ``q_val``); the policy and the choice as the artifact records it. Without
    ``route`` (``HeadConfig.route``), the threshold rule on raw scores and the memory's weight by the
    head's smooth metric."""
    mem = weights.memory()
    if not route:
        if mem is not None and weights.knn_mix is not None and float(weights.knn_mix[0]) == 0.0:
            _drop_memory(weights)
        return Policy(), None
    if mem is not None:
        weights.knn_mix = np.array([0.0], np.float32)
    p_head = weights.predict(x_val)
    p_mem = mem(x_val) if mem is not None else None
    best, runner, policy, tried = choose_policy(p_head, p_mem, y_val, q_val, fleet, seed, progress)
    if mem is not None and best.mix > 0:
        weights.knn_mix = np.array([best.mix], np.float32)
    elif mem is not None:
        _drop_memory(weights)
    measure = "APGR" if len(fleet.models) == 2 else "AIQ"
    runner_up = runner.to_dict() if runner is not None else None
    return policy, {"by": f"validation {measure}", "chosen": best.to_dict(), "runner_up": runner_up, "tried": tried}


def _drop_memory(weights: HeadWeights) -> None:
    for name in ("knn_x", "knn_y", "knn_mu", "knn_proj", "knn_k", "knn_mix", "knn_uniform"):
        setattr(weights, name, None)
