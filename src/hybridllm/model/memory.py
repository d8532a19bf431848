"""The head's memory member: the training prompts themselves, read back by similarity.

For a query, the mean label of its k most similar training prompts, each weighted by
1 / (1 - cosine) (a prompt seen in training all but takes its own label, distant ones count little)
or all alike (``uniform``: smoother where the data is not clustered); k and the weighting are chosen
on validation.
Prompts are compared in a 64-d principal subspace of the training embeddings (centred, projected,
renormalised): on MMLU-Pro this scored as well as the full 384-d embedding on held-out data and
reads a sixth of the memory per decision, which is what a decision's time is spent on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: dimensions of the subspace prompts are compared in
DIMS = 64
#: neighbourhood sizes tried on validation, and the member's weights in the final mix
SIZES = (10, 25, 50, 100, 200, 400, 800)
MIXES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)
#: the weightings tried: similarity (1 / (1 - cosine)) and uniform
WEIGHTINGS = (False, True)


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def keys(x: np.ndarray, mu: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Unit vectors to compare prompts by: the prompt embedding (the first ``len(mu)`` columns of
    ``x``), normalised, centred on ``mu``, projected on ``proj`` [d, r], normalised again."""
    return _unit((_unit(np.asarray(x[:, : len(mu)], dtype=np.float32)) - mu) @ proj).astype(np.float32)


def recall(mem_x: np.ndarray, mem_y: np.ndarray, q: np.ndarray, k: int, uniform: bool = False) -> np.ndarray:
    """Similarity-weighted mean of the labels of the ``k`` memory keys nearest to each unit key in
    ``q`` (cosine; weight 1 / (1 - cosine), or 1 each when ``uniform``). [N] labels give [n], [N, K]
    give [n, K]."""
    sims = q @ mem_x.T
    k = min(k, len(mem_x))
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(mem_x) else np.argsort(-sims, axis=1)
    w = 1.0 / np.maximum(1.0 - np.take_along_axis(sims, idx, axis=1), 1e-4)
    if uniform:
        w = np.ones_like(w)
    y = mem_y.reshape(len(mem_y), -1)[idx]  # [n, k, K]
    out = (np.einsum("nk,nkj->nj", w, y) / w.sum(axis=1, keepdims=True)).astype(np.float32)
    return out[:, 0] if mem_y.ndim == 1 else out


@dataclass
class Memory:
    """Stored as the head's tensors knn_x [N, r], knn_y [N] or [N, K], knn_mu [d], knn_proj [d, r]
    (and knn_uniform [1] = 1 for uniform weights, absent for similarity weights)."""

    x: np.ndarray
    y: np.ndarray
    mu: np.ndarray
    proj: np.ndarray
    k: int
    uniform: bool = False
    _c: np.ndarray = field(init=False, repr=False, compare=False)  # mu @ proj, for _one

    def __post_init__(self) -> None:
        self._c = (self.mu @ self.proj).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 1:
            return self._one(x[0])
        return recall(self.x, self.y, keys(x, self.mu, self.proj), self.k, self.uniform)

    def _one(self, x: np.ndarray) -> np.ndarray:
        """:func:`keys` and :func:`recall` for one prompt (the proxy's lone decisions) on vectors
        instead of [1, d] matrices: the same arithmetic in half the NumPy calls, as float32 as the
        batch form (``mu @ proj`` taken out of the projection once). Agrees with the batch form to
        float32 rounding (tested)."""
        u = np.asarray(x[: len(self.mu)], dtype=np.float32)
        z = (u @ self.proj) / np.float32(max(math.sqrt(float(u @ u)), 1e-12)) - self._c
        z = z / np.float32(max(math.sqrt(float(z @ z)), 1e-12))
        sims = self.x @ z
        k = min(self.k, len(sims))
        idx = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.argsort(-sims)
        w = np.ones(len(idx), np.float32) if self.uniform else 1.0 / np.maximum(1.0 - sims[idx], 1e-4)
        out = (w @ self.y[idx]) / w.sum()
        return np.asarray(out, dtype=np.float32).reshape(1, *self.y.shape[1:])


def fit_memory(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, metric: Callable[[np.ndarray], float], dim: int
) -> tuple[Memory, float]:
    """The subspace from the training prompts' embeddings (first ``dim`` columns), k and the
    weighting by the validation ``metric``; returns the member and its validation score."""
    e = _unit(np.asarray(x_train[:, :dim], dtype=np.float32))
    mu = e.mean(axis=0)
    r = min(DIMS, dim, len(e))
    proj = np.ascontiguousarray(np.linalg.svd(e - mu, full_matrices=False)[2][:r].T, dtype=np.float32)
    mem = Memory(keys(e, mu, proj), np.asarray(y_train, dtype=np.float32), mu.astype(np.float32), proj, 0)
    q = keys(np.asarray(x_val, dtype=np.float32), mem.mu, proj)
    sizes = [k for k in SIZES if k <= len(e)] or [len(e)]
    scores = {(k, u): metric(recall(mem.x, mem.y, q, k, u)) for k in sizes for u in WEIGHTINGS}
    mem.k, mem.uniform = max(scores, key=lambda c: round(scores[c], 9))
    return mem, scores[mem.k, mem.uniform]
