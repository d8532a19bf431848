"""Shadow pairs and the estimates made from them (docs/control.md): pure numbers, no I/O.

- :func:`ratio_interval` / :class:`RatioSums`: a ratio of weighted sums (the drop is
  Σ w (q_ref - q_served) / Σ w q_ref) with its delta-method interval, and two pseudo-observations at
  the ends of the difference's range added to the variance only, so that a handful of pairs that
  happen to agree does not give an interval of width zero.
- :class:`ShadowPair`, :func:`policy_sides`: what one shadowed request tells; :func:`realised_drop`
  and :func:`pair_drop_at`: the drop served, and the drop a threshold would give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .policy import Fleet, choose

Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95 %


def ratio_interval(
    num: np.ndarray, den: np.ndarray, weight: np.ndarray, z: float = Z95, span: float = 1.0, horizon: int = 0
) -> tuple[float, float, float] | None:
    """(estimate, low, high) of Σ w·num / Σ w·den, in percent; None without a positive denominator.
    ``span``: the largest |num| can be (1 for scores in [0, 1]); the two pseudo-observations at
    ±span enter the variance only (:class:`RatioSums` is the same in running sums). ``horizon``:
    the interval of the ratio over the next ``horizon`` requests like these (a prediction interval:
    the estimate's own variance plus that of ``horizon`` fresh requests); 0: of the ratio itself."""
    num, den, w = (np.asarray(a, dtype=np.float64) for a in (num, den, weight))
    acc = RatioSums(span)
    acc.n = len(num)
    acc.w, acc.d = float(w.sum()), float(den.sum())
    acc.w2 = float((w * w).sum())
    acc.wn, acc.wd = float((w * num).sum()), float((w * den).sum())
    w2 = w * w
    acc.w2n2, acc.w2nd, acc.w2d2 = (
        float((w2 * num * num).sum()),
        float((w2 * num * den).sum()),
        float((w2 * den * den).sum()),
    )
    return acc.interval(z, horizon)


class RatioSums:
    """Running sums behind :func:`ratio_interval`, for an estimate since start in O(1) memory.

    Delta method: Var(R) ≈ n s² / (Σ w den)², s² the variance of the residuals w (num - R den); two
    pseudo-residuals w̄ (±span - R d̄) are added to s² so that agreeing pairs never give width 0."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self.n = 0
        self.w = self.w2 = self.wn = self.wd = self.d = 0.0
        self.w2n2 = self.w2nd = self.w2d2 = 0.0

    def add(self, num: float, den: float, weight: float = 1.0) -> None:
        self.n += 1
        self.w += weight
        self.w2 += weight * weight
        self.d += den
        self.wn += weight * num
        self.wd += weight * den
        self.w2n2 += weight * weight * num * num
        self.w2nd += weight * weight * num * den
        self.w2d2 += weight * weight * den * den

    def interval(self, z: float = Z95, horizon: int = 0) -> tuple[float, float, float] | None:
        if self.n == 0 or self.wd <= 0:
            return None
        r = self.wn / self.wd
        ss = max(self.w2n2 - 2 * r * self.w2nd + r * r * self.w2d2, 0.0)
        w_bar, d_bar = self.w / self.n, self.d / self.n
        ss += (w_bar * (self.span - r * d_bar)) ** 2 + (w_bar * (-self.span - r * d_bar)) ** 2
        sd = math.sqrt(self.n * ss / (self.n + 1)) / self.wd
        if horizon > 0:  # the same residual variance over `horizon` fresh requests: sd ∝ 1/sqrt(n)
            n_eff = self.w * self.w / self.w2 if self.w2 > 0 else float(self.n)
            sd *= math.sqrt(1.0 + n_eff / horizon)
        return 100.0 * r, 100.0 * (r - z * sd), 100.0 * (r + z * sd)


@dataclass(frozen=True)
class ShadowPair:
    """One shadowed request: the router's candidate scores, the model that answered (``served``) and
    the one asked in the shadow (``other``), indices into the fleet's models; both answers' scores;
    ``weight`` = 1 / the sampling probability when it was drawn. ``extra``: (model, score) of the
    further models asked for a fleet of more than two under a quality hold (every model the policy
    picks for this request at some threshold), so that every threshold's choice is known."""

    scores: tuple[float, ...]
    served: int
    other: int
    q_served: float
    q_other: float
    weight: float = 1.0
    t: float = 0.0
    extra: tuple[tuple[int, float], ...] = ()
    #: the served and the other answer's estimated cost from the models' prices (None: unpriced)
    c_served: float | None = None
    c_other: float | None = None

    def cost(self, model: int) -> float | None:
        return self.c_served if model == self.served else self.c_other if model == self.other else None

    def quality(self, model: int) -> float | None:
        if model == self.served:
            return self.q_served
        if model == self.other:
            return self.q_other
        for m, q in self.extra:
            if m == model:
                return q
        return None


def policy_sides(scores: Sequence[float], ref: int) -> list[int]:
    """Every model the policy sends a request with these candidate scores to at some threshold:
    the reference, and each candidate scored above every cheaper one (as the threshold falls, the
    cheapest model whose score clears it only ever moves to such a one)."""
    out, best = [], -math.inf
    for k, v in enumerate(scores):
        if v > best:
            out.append(k)
            best = v
    return [*out, ref]


def realised_drop(pairs: Sequence[ShadowPair], ref: int, z: float = Z95) -> tuple[float, float, float] | None:
    """The quality drop of the answers served against always using the reference, in % with its
    interval, from shadow pairs (every pair includes the reference's answer)."""
    if not pairs:
        return None
    q_ref = np.array([p.quality(ref) for p in pairs], dtype=np.float64)
    q_srv = np.array([p.q_served for p in pairs], dtype=np.float64)
    w = np.array([p.weight for p in pairs], dtype=np.float64)
    return ratio_interval(q_ref - q_srv, q_ref, w, z)


class PairArrays:
    """Shadow pairs as arrays, built once per control step: candidate scores [n, K], every model's
    quality where the pair knows it (NaN where not) [n, M], and the weights."""

    def __init__(self, pairs: Sequence[ShadowPair], n_models: int) -> None:
        self.scores = np.array([p.scores for p in pairs], dtype=np.float64).reshape(len(pairs), -1)
        self.q = np.full((len(pairs), n_models), np.nan)
        for i, p in enumerate(pairs):
            self.q[i, p.served], self.q[i, p.other] = p.q_served, p.q_other
            for m, v in p.extra:
                self.q[i, m] = v
        self.weight = np.array([p.weight for p in pairs], dtype=np.float64)


def pair_drop_at(
    pairs: Sequence[ShadowPair] | PairArrays,
    threshold: float,
    z: float,
    shift: np.ndarray | None = None,
    fleet: Fleet | None = None,
    horizon: int = 0,
) -> tuple[float, float, float] | None:
    """What a threshold would give on the shadow pairs (every model the policy picks for each is
    known: both of a two-model fleet's, :func:`policy_sides` for more); ``shift``: each pair's extra
    weight (the covariate-shift correction of :meth:`Hold._shift`). Pairs missing the model a
    threshold picks (drawn before the hold asked for every side) are left out."""
    fleet = fleet or Fleet(("small", "large"), (1.0, 2.0), "large")
    arr = pairs if isinstance(pairs, PairArrays) else PairArrays(pairs, len(fleet.models))
    if len(arr.weight) == 0:
        return None
    picks = choose(arr.scores, fleet, threshold)
    qp = arr.q[np.arange(len(picks)), picks]
    qr = arr.q[:, fleet.ref]
    keep = ~(np.isnan(qp) | np.isnan(qr))
    if not keep.any():
        return None
    w = arr.weight if shift is None else arr.weight * shift
    return ratio_interval((qr - qp)[keep], qr[keep], w[keep], z, horizon=horizon)


__all__ = [
    "Z95",
    "PairArrays",
    "RatioSums",
    "ShadowPair",
    "pair_drop_at",
    "policy_sides",
    "ratio_interval",
    "realised_drop",
]
