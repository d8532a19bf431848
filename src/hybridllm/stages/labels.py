"""Training labels of the Hybrid LLM paper (docs/method.md, Labels).

Why three kinds: a single sample per model (``det``) is a noisy label; averaging over all sample
pairs (``prob``) estimates P[q(S) >= q(L)]; when the small model is almost never as good as the large
one, ``prob`` labels collapse towards 0 and carry little ranking signal, so ``trans`` relaxes the
comparison by a margin t chosen to spread the labels out as much as possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hybridllm.errors import UsageError

LABEL_TYPES = ("det", "prob", "trans")


def _pair_arrays(
    qualities: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(s, dtype=np.float64), np.asarray(lg, dtype=np.float64)) for s, lg in qualities]


def det_labels(qualities: Sequence[tuple[Sequence[float], Sequence[float]]]) -> np.ndarray:
    """y = 1[s_1 >= l_1]: first sample of each model."""
    return np.array([1.0 if s[0] >= lg[0] else 0.0 for s, lg in qualities], dtype=np.float64)


def _prob_at(pairs: list[tuple[np.ndarray, np.ndarray]], t: float) -> np.ndarray:
    # mean over all (a, b) of 1[s_a >= l_b - t]; sorting l makes each row O((n + m) log m)
    out = np.empty(len(pairs), dtype=np.float64)
    for i, (s, lg) in enumerate(pairs):
        ls = np.sort(lg)
        counts = np.searchsorted(ls, s + t, side="right")  # number of l_b <= s_a + t
        out[i] = counts.sum() / (len(s) * len(lg))
    return out


def prob_labels(qualities: Sequence[tuple[Sequence[float], Sequence[float]]]) -> np.ndarray:
    """y = mean over all sample pairs of 1[s_a >= l_b]."""
    return _prob_at(_pair_arrays(qualities), 0.0)


def mean_abs_pairwise_diff(y: np.ndarray) -> float:
    """(1/N²) Σ_i Σ_j |y_i - y_j| in O(N log N): after sorting, y_(k) is larger than k others."""
    y = np.sort(np.asarray(y, dtype=np.float64))
    n = len(y)
    if n == 0:
        return 0.0
    k = np.arange(n)
    return float(2.0 * np.sum(y * (2 * k - n + 1)) / (n * n))


def candidate_margins(pairs: list[tuple[np.ndarray, np.ndarray]], max_candidates: int = 512) -> np.ndarray:
    """Margins where some label can change: 0 and every positive l_b - s_a (labels are step functions
    of t, right-continuous at these points, so the argmax over them is the exact argmax over t >= 0).
    Continuous qualities give many distinct margins; then a quantile grid of them is searched."""
    diffs = [np.subtract.outer(lg, s).ravel() for s, lg in pairs]
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    d = np.unique(d[d > 0])
    if len(d) > max_candidates:
        d = np.unique(np.quantile(d, np.linspace(0, 1, max_candidates), method="nearest"))
    return np.concatenate([[0.0], d])


@dataclass(frozen=True)
class TransResult:
    labels: np.ndarray
    t_star: float
    spread: float  # the objective at t*


def trans_labels(
    qualities: Sequence[tuple[Sequence[float], Sequence[float]]],
    t: float | None = None,
    max_candidates: int = 512,
) -> TransResult:
    """y(t) = mean 1[s_a >= l_b - t], with t* = argmax_t (1/N²) Σ |y_i(t) - y_j(t)| unless t is given.

    Ties in the objective go to the smallest t, the one closest to the unrelaxed comparison.
    """
    pairs = _pair_arrays(qualities)
    if t is not None:
        y = _prob_at(pairs, float(t))
        return TransResult(y, float(t), mean_abs_pairwise_diff(y))
    best_t, best_obj, best_y = 0.0, -1.0, None
    for cand in candidate_margins(pairs, max_candidates):
        y = _prob_at(pairs, float(cand))
        obj = mean_abs_pairwise_diff(y)
        if obj > best_obj + 1e-12:
            best_t, best_obj, best_y = float(cand), obj, y
    assert best_y is not None
    return TransResult(best_y, best_t, best_obj)


def make_labels(
    qualities: Sequence[tuple[Sequence[float], Sequence[float]]], kind: str, t: float | None = None
) -> tuple[np.ndarray, float | None]:
    """Labels of the given kind and, for ``trans``, the margin t* used."""
    if kind == "det":
        return det_labels(qualities), None
    if kind == "prob":
        return prob_labels(qualities), None
    if kind == "trans":
        res = trans_labels(qualities, t=t)
        return res.labels, res.t_star
    raise UsageError(f"unknown label type {kind!r}; expected one of {', '.join(LABEL_TYPES)}")


def label_matrix(
    rows: Sequence[dict],
    models: Sequence[str],
    reference: str,
    label_type: str,
    t_stars: Sequence[float | None] | None = None,
) -> tuple[np.ndarray, list]:
    """The router's training labels, for any number of models: column k is the label of ``models[k]``
    against ``reference`` (is its answer good enough compared with the best model's on this query?),
    each with its own t* for ``trans`` (found on ``rows``, or the given ``t_stars``: validation rows
    get the training rows' margins). Returns (Y [n, K], [t* per model])."""
    cols, stars = [], []
    for k, m in enumerate(models):
        t = None if t_stars is None else t_stars[k]
        y, t = make_labels([(r["quality"][m], r["quality"][reference]) for r in rows], label_type, t)
        cols.append(y)
        stars.append(t)
    return np.stack(cols, axis=1), stars
