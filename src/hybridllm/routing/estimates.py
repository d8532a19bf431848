"""Shadow pairs and the estimates made from them (docs/control.md): pure numbers, no I/O.

- :func:`ratio_interval` / :class:`RatioSums`: a ratio of weighted sums (the drop is
  Σ w (q_ref - q_served) / Σ w q_ref) with its delta-method interval, and two pseudo-observations at
  the ends of the difference's range added to the variance only, so that a handful of pairs that
  happen to agree does not give an interval of width zero.
- :class:`ShadowPair`, :func:`policy_sides`: what one shadowed request tells; :func:`realised_drop`
  and :func:`drop_curve`: the drop served, and the drop each threshold would give;
  :func:`spend_curve`: what each threshold would spend (in money, from each request's own costs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .policy import Fleet

Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95 %


def _terms(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each observation's part of the sums behind the interval, [9, n]: count, w, w², den, w·num,
    w·den, w²·num², w²·num·den, w²·den² (summed, they are what :func:`_bounds` reads)."""
    w2 = w * w
    return np.stack([np.ones_like(w), w, w2, den, w * num, w * den, w2 * num * num, w2 * num * den, w2 * den * den])


def _bounds(sums: np.ndarray, span: float, z: float, horizon: int) -> np.ndarray:
    """(estimate, low, high) in percent from the sums of :func:`_terms` ([9] or [9, T]); NaN where
    there is no positive denominator. Delta method: Var(R) ≈ n s² / (Σ w den)², s² the variance of
    the residuals w (num - R den); two pseudo-residuals w̄ (±span - R d̄) are added to s² so that
    agreeing pairs never give width 0. ``horizon`` > 0: over that many fresh requests like these, the
    same residual variance adds n_eff / horizon times the estimate's own."""
    n, w, w2, d, wn, wd, w2n2, w2nd, w2d2 = np.asarray(sums, dtype=np.float64)
    ok = (n > 0.5) & (wd > 1e-12)  # counts are whole numbers; a cumulated zero may not be exact
    with np.errstate(divide="ignore", invalid="ignore"):
        r = wn / wd
        ss = np.maximum(w2n2 - 2 * r * w2nd + r * r * w2d2, 0.0)
        w_bar, d_bar = w / n, d / n
        ss = ss + (w_bar * (span - r * d_bar)) ** 2 + (w_bar * (-span - r * d_bar)) ** 2
        sd = np.sqrt(n * ss / (n + 1)) / wd
        if horizon > 0:
            sd = sd * np.sqrt(1.0 + np.where(w2 > 0, w * w / w2, n) / horizon)
    out = np.stack([r, r - z * sd, r + z * sd]) * 100.0
    return np.where(ok, out, np.nan)


def _triple(got: np.ndarray) -> tuple[float, float, float] | None:
    return None if np.isnan(got[0]) else (float(got[0]), float(got[1]), float(got[2]))


def ratio_interval(
    num: np.ndarray, den: np.ndarray, weight: np.ndarray, z: float = Z95, span: float = 1.0, horizon: int = 0
) -> tuple[float, float, float] | None:
    """(estimate, low, high) of Σ w·num / Σ w·den, in percent; None without a positive denominator.
    ``span``: the largest |num| can be (1 for scores in [0, 1]); the two pseudo-observations at
    ±span enter the variance only (:class:`RatioSums` is the same in running sums). ``horizon``:
    the interval of the ratio over the next ``horizon`` requests like these (a prediction interval:
    the estimate's own variance plus that of ``horizon`` fresh requests); 0: of the ratio itself."""
    num, den, w = (np.asarray(a, dtype=np.float64).ravel() for a in (num, den, weight))
    return _triple(_bounds(_terms(num, den, w).sum(axis=1), span, z, horizon))


class RatioSums:
    """Running sums behind :func:`ratio_interval`, for an estimate since start in O(1) memory."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self.sums = np.zeros(9)

    def add(self, num: float, den: float, weight: float = 1.0) -> None:
        self.sums += _terms(np.array([num]), np.array([den]), np.array([weight], dtype=np.float64))[:, 0]

    def interval(self, z: float = Z95, horizon: int = 0) -> tuple[float, float, float] | None:
        return _triple(_bounds(self.sums, self.span, z, horizon))


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


def realised_drop(
    pairs: Sequence[ShadowPair] | PairArrays, ref: int, z: float = Z95
) -> tuple[float, float, float] | None:
    """The quality drop of the answers served against always using the reference, in % with its
    interval, from shadow pairs (every pair includes the reference's answer)."""
    if not isinstance(pairs, PairArrays):
        top = max((max(p.served, p.other, *(m for m, _ in p.extra)) for p in pairs), default=ref)
        pairs = PairArrays(pairs, max(top, ref) + 1)
    if len(pairs.weight) == 0:
        return None
    q_ref, q_srv = pairs.q[:, ref], pairs.q[np.arange(len(pairs.served)), pairs.served]
    return ratio_interval(q_ref - q_srv, q_ref, pairs.weight, z)


class PairArrays:
    """Shadow pairs as arrays, built once per control step: candidate scores [n, K], every model's
    quality where the pair knows it (NaN where not) [n, M], the model that answered, the weights."""

    def __init__(self, pairs: Sequence[ShadowPair], n_models: int) -> None:
        self.scores = np.array([p.scores for p in pairs], dtype=np.float64).reshape(len(pairs), -1 if pairs else 0)
        self.q = np.full((len(pairs), n_models), np.nan)
        self.served = np.array([p.served for p in pairs], dtype=np.int64)
        self.q[np.arange(len(pairs)), self.served] = [p.q_served for p in pairs]
        for i, p in enumerate(pairs):
            self.q[i, p.other] = p.q_other
            for m, v in p.extra:
                self.q[i, m] = v
        self.weight = np.array([p.weight for p in pairs], dtype=np.float64)


def pick_runs(
    scores: np.ndarray, thresholds: np.ndarray, ref: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
    """The policy's pick for every row of candidate ``scores`` [n, K] at every threshold, as runs:
    (the thresholds' order by falling value, [(model, first, end)] with each row's run of that
    model over the falling thresholds' indices, [first, end), empty where first >= end). Each row's
    pick is the same over a run of thresholds, at most one run per model: a candidate is the pick
    from where its score clears the threshold until a cheaper one's does, the reference until the
    first candidate clears."""
    s = np.asarray(scores, dtype=np.float64)
    n, k = s.shape
    order = np.argsort(-thresholds, kind="stable")  # falling threshold: index t of the runs
    # a candidate's score clears the threshold from this run index on (choose: score >= threshold)
    start = np.searchsorted(-thresholds[order], -s, side="left")
    # a candidate is the pick from its start until a cheaper one clears: the running min of the starts
    until = np.minimum.accumulate(np.concatenate([np.full((n, 1), len(thresholds)), start], axis=1), axis=1)
    runs = [(m, start[:, m], until[:, m]) for m in range(k)] + [(ref, np.zeros(n, dtype=np.int64), until[:, k])]
    return order, runs


def spend_curve(
    scores: np.ndarray, costs: np.ndarray, ref: int, thresholds: np.ndarray, ref_costs: np.ndarray | None = None
) -> np.ndarray:
    """What each threshold would spend on these requests, in % of sending them all to the reference:
    Σ costs[i, pick_i(t)] / Σ costs[i, ref] (NaN without a positive reference cost), every threshold
    at once from :func:`pick_runs`. ``scores``: [n, K] candidate scores; ``costs``: [n, M] each
    request's cost on every model (its own, in money: :class:`hybridllm.routing.money.CostModel`);
    ``ref_costs``: [n], each request's cost always on the reference, where it is not ``costs[i, ref]``
    (a session's turn moved to the reference re-reads its history there; always-reference would not)."""
    g = np.asarray(thresholds, dtype=np.float64).ravel()
    c = np.asarray(costs, dtype=np.float64)
    base = c[:, ref] if ref_costs is None else np.asarray(ref_costs, dtype=np.float64)
    den = float(base.sum()) if len(c) else 0.0
    if len(g) == 0 or not den > 0:
        return np.full(len(g), np.nan)
    order, runs = pick_runs(scores, g, ref)
    diff = np.zeros(len(g) + 1)
    for m, a, b in runs:
        live = a < b
        diff += np.bincount(a[live], c[live, m], minlength=len(g) + 1)
        diff -= np.bincount(b[live], c[live, m], minlength=len(g) + 1)
    out = np.empty(len(g))
    out[order] = np.cumsum(diff)[: len(g)] / den * 100.0
    return out


def drop_curve(
    pairs: Sequence[ShadowPair] | PairArrays,
    fleet: Fleet,
    thresholds: Sequence[float] | np.ndarray,
    z: float,
    shift: np.ndarray | None = None,
    horizon: int = 0,
) -> np.ndarray:
    """What each threshold would give on the shadow pairs, [3, T] (estimate, low, high of the drop
    in %; NaN where no pair tells), every threshold at once: each pair's pick is the same over a run
    of thresholds (at most one run per model), so its part of the sums is added where its run
    starts and taken off where it ends, and one cumulative sum over the thresholds gives them all,
    in O(pairs × models + thresholds). Every model the policy picks for each pair is known (both of
    a two-model fleet's, :func:`policy_sides` for more); ``shift``: each pair's extra weight (the
    covariate-shift correction of :meth:`Hold._shift`). A pair missing the model a threshold picks
    (drawn before the hold asked for every side) is left out at that threshold."""
    arr = pairs if isinstance(pairs, PairArrays) else PairArrays(pairs, len(fleet.models))
    g = np.asarray(thresholds, dtype=np.float64).ravel()
    n_t, n = len(g), len(arr.weight)
    if n == 0 or n_t == 0:
        return np.full((3, n_t), np.nan)
    order, runs = pick_runs(arr.scores, g, fleet.ref)
    w = arr.weight if shift is None else arr.weight * shift
    qr = arr.q[:, fleet.ref]
    diff = np.zeros(9 * (n_t + 1))  # [9, n_t + 1] flat: each sum's changes at each run index
    row = (np.arange(9) * (n_t + 1))[:, None]
    for m, a, b in runs:
        qm = arr.q[:, m]
        live = (a < b) & ~(np.isnan(qm) | np.isnan(qr))
        if not live.any():
            continue
        part = _terms((qr - qm)[live], qr[live], w[live]).ravel()
        diff += np.bincount((row + a[live]).ravel(), part, minlength=diff.size)
        diff -= np.bincount((row + b[live]).ravel(), part, minlength=diff.size)
    out = np.empty((3, n_t))
    out[:, order] = _bounds(np.cumsum(diff.reshape(9, n_t + 1), axis=1)[:, :n_t], 1.0, z, horizon)
    return out


__all__ = [
    "Z95",
    "PairArrays",
    "RatioSums",
    "ShadowPair",
    "drop_curve",
    "pick_runs",
    "policy_sides",
    "ratio_interval",
    "realised_drop",
    "spend_curve",
]
