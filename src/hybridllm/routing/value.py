"""The quality-minus-cost rule, written as scores the threshold policy reads.

A router may predict, for each model m cheaper than the reference, its expected signed quality gap
to the reference on a query, ĝ_m (the reference's own gap is 0). The cost-aware rule sends the query
to argmax_m ĝ_m − λ·c_m / c_ref, λ ≥ 0 the price of a unit of cost in quality. As λ grows the choice
only ever moves to cheaper models (the upper envelope of lines of slope −c_m), so each model m
enters the choice at one λ*_m (∞ if never). Scoring m by t_m = 1 / (1 + λ*_m / scale) makes "the
cheapest model whose score is at least t" (:func:`hybridllm.routing.policy.choose`) exactly the
argmax at λ = scale · (1/t − 1): the threshold is the knob, so the calibration sweep, the knob's
resolution, the live hold and the shadow estimates work on these scores as they are, and λ moves
wherever the threshold moves. ``scale`` (the median λ* on validation) spreads the thresholds over
0..1 as probabilities are.

The per-model maps (:class:`ScoreMap`) turn a head's raw score into a number that means the same for
every model (its expected gap, or its calibrated chance of being good enough), fitted on validation.

Imports nothing of hybridllm's but :mod:`hybridllm.errors` (through the policy): pure arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from .policy import NEVER, CalibrationError, Fleet

#: the decision rules: the cheapest model whose score clears the threshold, or quality minus λ·cost
RULES = ("threshold", "value")
#: what the rule reads: the head's scores as they are, or mapped per model on validation
SCORE_KINDS = ("raw", "calibrated")
#: the slope a score map keeps beyond its fitted range, so that its order is never lost
_TAIL = 1e-6


@dataclass(frozen=True)
class ScoreMap:
    """A non-decreasing piecewise-linear map of one model's raw score, fitted on validation (the
    centroids of an isotonic fit: strictly increasing between them, a tiny slope beyond them)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    _xa: np.ndarray = field(init=False, repr=False, compare=False)  # x and y as arrays, made once
    _ya: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if not (1 <= len(x) == len(y)) or not all(math.isfinite(v) for v in (*x, *y)):
            raise CalibrationError("a score map needs as many finite x as y, at least one")
        if any(b <= a for a, b in pairwise(x)) or any(b < a for a, b in pairwise(y)):
            raise CalibrationError("a score map must rise: x strictly, y never falling")
        object.__setattr__(self, "_xa", np.asarray(x, dtype=np.float64))
        object.__setattr__(self, "_ya", np.asarray(y, dtype=np.float64))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        out = np.interp(p, self._xa, self._ya)
        return out + _TAIL * (np.minimum(p - self.x[0], 0.0) + np.maximum(p - self.x[-1], 0.0))

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreMap:
        return cls(tuple(float(v) for v in d["x"]), tuple(float(v) for v in d["y"]))


def lambda_of(threshold: float, scale: float) -> float:
    """The λ (quality per reference cost) a threshold on value scores stands for; ∞ at 0."""
    return math.inf if threshold <= 0 else max(scale * (1.0 / min(threshold, 1.0) - 1.0), 0.0)


def threshold_of(lam: float, scale: float) -> float:
    """The threshold on value scores at which the rule routes at ``lam``."""
    return 1.0 / (1.0 + max(lam, 0.0) / scale)


def entry_lambdas(gap: np.ndarray, fleet: Fleet) -> np.ndarray:
    """λ*_m [n, K]: from which λ on each candidate is argmax ĝ_m − λ·c_m / c_ref among the
    candidates and the reference (gap 0); ∞ for a candidate never chosen. ``gap`` [n, K]."""
    g = np.asarray(gap, dtype=np.float64).reshape(len(gap), -1)
    n, k = g.shape
    if k != fleet.ref:
        raise CalibrationError(f"expected {fleet.ref} candidate gaps per query, got {k}")
    c = np.asarray(fleet.costs[: k + 1], dtype=np.float64) / fleet.costs[fleet.ref]
    v = np.concatenate([g, np.zeros((n, 1))], axis=1)  # the values at λ = 0; the reference's is 0
    rows = np.arange(n)
    cur = np.argmax(v, axis=1)  # ties: the cheapest, which wins for any λ > 0
    lam = np.zeros(n)
    entry = np.full((n, k + 1), np.inf)
    entry[rows, cur] = 0.0
    cheaper = np.arange(k + 1)[None, :]
    for _ in range(k):
        live = cur > 0
        if not live.any():
            break
        dc = c[cur][:, None] - c[None, :]  # > 0 for the models cheaper than the current one
        ok = (cheaper < cur[:, None]) & (dc > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = np.where(ok, (v[rows, cur][:, None] - v) / np.where(ok, dc, 1.0), np.inf)
        nxt = np.argmin(cross, axis=1)  # ties: the cheapest
        at = np.maximum(cross[rows, nxt], lam)
        move = live & np.isfinite(at)
        entry[rows[move], nxt[move]] = at[move]
        lam = np.where(move, at, lam)
        cur = np.where(move, nxt, 0)
    return entry[:, :k]


def _entry_one(g: Sequence[float], c: Sequence[float]) -> list[float]:
    """:func:`entry_lambdas` of one query in plain floats (a lone decision: a handful of models,
    where NumPy's per-call cost would be the whole time); the same operations in the same order, so
    the same numbers (tested)."""
    k = len(g)
    v = [*g, 0.0]
    cur = max(range(k + 1), key=lambda i: (v[i], -i))  # ties: the cheapest
    lam = 0.0
    entry = [math.inf] * (k + 1)
    entry[cur] = 0.0
    while cur > 0:
        best, nxt = math.inf, -1
        for i in range(cur):
            dc = c[cur] - c[i]
            if dc > 0:
                x = (v[cur] - v[i]) / dc
                if x < best:
                    best, nxt = x, i
        if nxt < 0:
            break
        lam = max(best, lam)
        entry[nxt] = lam
        cur = nxt
    return entry[:k]


def value_scores(gap: np.ndarray, fleet: Fleet, scale: float) -> np.ndarray:
    """The decision scores of the quality-minus-cost rule (see the module), [n, K] in 0..1."""
    lam = entry_lambdas(gap, fleet)
    with np.errstate(over="ignore"):
        return np.where(np.isfinite(lam), 1.0 / (1.0 + lam / scale), 0.0)


def lambda_scale(gap: np.ndarray, fleet: Fleet) -> float:
    """The median λ* > 0 over validation queries and candidates (1 when there is none): the λ a
    threshold of 0.5 stands for."""
    lam = entry_lambdas(gap, fleet)
    pos = lam[np.isfinite(lam) & (lam > 0)]
    return float(np.median(pos)) if len(pos) else 1.0


@dataclass(frozen=True)
class Policy:
    """How a router turns its head's scores [n, K] into the scores the threshold policy reads: the
    ``rule`` (:data:`RULES`), the ``kind`` of scores (:data:`SCORE_KINDS`) with one map per
    candidate when calibrated, and the λ ``scale`` of the value rule. The default (threshold, raw)
    is every router of artifact formats 1 to 3: scores pass through unchanged."""

    rule: str = "threshold"
    kind: str = "raw"
    maps: tuple[ScoreMap, ...] = ()
    scale: float = 1.0

    def __post_init__(self) -> None:
        self._stack()
        if self.rule not in RULES or self.kind not in SCORE_KINDS:
            raise CalibrationError(f"unknown policy {self.rule}/{self.kind}")
        if (self.kind == "calibrated") != bool(self.maps):
            raise CalibrationError("calibrated scores need one map per candidate (and raw ones none)")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise CalibrationError(f"lambda scale must be positive, got {self.scale}")

    def _stack(self) -> None:
        """All maps as one: map j's knots shifted by j·w (w wider than every map's range), so one
        np.interp call maps a row of K scores, each clipped to its map's range and shifted likewise
        (the tails added apart). A lone decision is then a few NumPy calls, not K of each."""
        if not self.maps:
            return
        lo = np.array([m.x[0] for m in self.maps])
        hi = np.array([m.x[-1] for m in self.maps])
        w = float(hi.max() - lo.min()) + 1.0
        off = np.arange(len(self.maps)) * w
        stacked = {
            "_lo": lo, "_hi": hi, "_off": off,
            "_cx": np.concatenate([np.asarray(m.x) + o for m, o in zip(self.maps, off, strict=True)]),
            "_cy": np.concatenate([np.asarray(m.y) for m in self.maps]),
        }  # fmt: skip
        for k, v in stacked.items():
            object.__setattr__(self, k, v)

    @property
    def passthrough(self) -> bool:
        return self.rule == "threshold" and self.kind == "raw"

    def gaps(self, p: np.ndarray) -> np.ndarray:
        """What the rule compares, [n, K]: the mapped scores, or (raw) the scores themselves; for
        the value rule a raw score p (the chance of being good enough, 1 for the reference) is the
        gap p − 1."""
        p = np.asarray(p, dtype=np.float64).reshape(len(p), -1)
        if self.maps:
            if len(self.maps) != p.shape[1]:
                raise CalibrationError(f"{len(self.maps)} score maps for {p.shape[1]} scores")
            lo, hi = self.__dict__["_lo"], self.__dict__["_hi"]
            out = np.interp(np.minimum(np.maximum(p, lo), hi) + self.__dict__["_off"], self.__dict__["_cx"],
                            self.__dict__["_cy"])  # fmt: skip
            return out + _TAIL * (np.minimum(p - lo, 0.0) + np.maximum(p - hi, 0.0))
        return p - 1.0 if self.rule == "value" else p

    def decision_scores(self, p: np.ndarray, fleet: Fleet) -> np.ndarray:
        """Scores for :func:`hybridllm.routing.policy.choose`, in the shape of ``p``."""
        if self.passthrough:
            return p
        shape = np.shape(p)
        if self.rule == "value" and shape[:1] == (1,):  # one prompt: plain floats, the same numbers
            return self._one(np.asarray(p), fleet)
        g = self.gaps(p)
        out = value_scores(g, fleet, self.scale) if self.rule == "value" else np.clip(g, 0.0, 1.0)
        return out.reshape(shape).astype(np.asarray(p).dtype, copy=False)

    def _one(self, p: np.ndarray, fleet: Fleet) -> np.ndarray:
        g = self.gaps(p.reshape(1, -1))[0].tolist()
        if len(g) != fleet.ref:
            raise CalibrationError(f"expected {fleet.ref} candidate gaps per query, got {len(g)}")
        c_ref = fleet.costs[fleet.ref]
        c = [fleet.costs[i] / c_ref for i in range(len(g) + 1)]
        lam = _entry_one(g, c)
        out = [1.0 / (1.0 + x / self.scale) if x != math.inf else 0.0 for x in lam]
        return np.asarray(out, dtype=p.dtype).reshape(p.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rule": self.rule, "scores": self.kind}
        if self.rule == "value":
            d["lambda_scale"] = self.scale
        if self.maps:
            d["maps"] = [m.to_dict() for m in self.maps]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Policy:
        if not d:
            return cls()
        maps = tuple(ScoreMap.from_dict(m) for m in d.get("maps", ()))
        return cls(str(d["rule"]), str(d["scores"]), maps, float(d.get("lambda_scale", 1.0)))


def check_policy(d: Any, candidates: Sequence[str]) -> str | None:
    """Why an artifact's ``policy`` block cannot be used (None: it can): the field and the fault."""
    if not isinstance(d, dict):
        return "expected an object"
    if d.get("rule") not in RULES:
        return f"'rule': expected one of {', '.join(RULES)}"
    if d.get("scores") not in SCORE_KINDS:
        return f"'scores': expected one of {', '.join(SCORE_KINDS)}"
    scale = d.get("lambda_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        return "'lambda_scale': expected a positive number"
    maps = d.get("maps", [])
    if not isinstance(maps, list) or len(maps) != (len(candidates) if d["scores"] == "calibrated" else 0):
        return f"'maps': expected one map per candidate ({len(candidates)}) for calibrated scores, none for raw"
    for i, m in enumerate(maps):
        ok = isinstance(m, dict) and all(
            isinstance(m.get(a), list) and len(m[a]) <= 4096
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in m[a])
            for a in ("x", "y")
        )  # fmt: skip
        if not ok:
            return f"'maps[{i}]': expected lists of numbers x and y"
        try:
            ScoreMap.from_dict(m)
        except CalibrationError as exc:
            return f"'maps[{i}]': {exc}"
    return None


__all__ = [
    "NEVER",
    "RULES",
    "SCORE_KINDS",
    "Policy",
    "ScoreMap",
    "check_policy",
    "entry_lambdas",
    "lambda_of",
    "lambda_scale",
    "threshold_of",
    "value_scores",
]
