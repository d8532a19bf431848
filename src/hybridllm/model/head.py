"""The router head: a small ensemble of MLPs over frozen query embeddings.

Why an ensemble with validation-selected checkpoints: routing labels are very noisy (one sampled
answer per model often decides a label), so a single MLP's ranking varies a lot with its seed and its
stopping epoch. Averaging a few members trained from different seeds, each stopped where its
validation log-likelihood peaks, is cheap on CPU and gives a steadier ranking than any single member.
The same smooth criterion picks the logistic member's C and the mix weight (``HeadConfig.select``;
validation APGR, the reported metric, is too flat and noisy near its optimum to choose by).

Inference is plain numpy, so serving needs neither torch nor a GPU; training (with torch) is
:mod:`hybridllm.model.head_fit`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .memory import Memory


@dataclass
class HeadConfig:
    hidden: int = 256
    members: int = 5
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.2
    input_dropout: float = 0.1
    patience: int = 8
    seed: int = 0
    linear: bool = True  # add an L2-logistic member, mixed in with a weight chosen on validation
    # what validation choices (each member's epoch, the linear member's C, the mix weight) maximise:
    # "loss" (the negative log-loss against the validation labels: smooth, so the choice follows the
    # data, not the noise) or "apgr" (the ranking metric itself; flat and noisy near its optimum)
    select: str = "loss"
    extra: list[str] = field(default_factory=list)  # names of extra features appended to the embedding
    # add a memory member: the training prompts' embeddings and labels, read back as a similarity-weighted
    # mean over each query's nearest ones (k and its weight in the mix chosen on validation)
    knn: bool = True
    # choose on validation AIQ (APGR for a pair) the rule (cheapest good enough, or quality minus
    # λ·cost), the scores it reads (raw, or calibrated per model) and the memory member's weight
    # (hybridllm.model.select); False: the threshold rule on raw scores, the memory weighted by `select`
    route: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _gelu(x: np.ndarray) -> np.ndarray:
    # x*x*x, not x**3: NumPy's power is a libm call per element, 30x slower on the serving path
    # (4.1 ms vs 0.13 ms for a batch of 64 through five members); the two differ in the last bit
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass
class HeadWeights:
    """Stacked MLP members: w1 [E, d, h], b1 [E, h], w2 [E, h], b2 [E]; mu/sd standardise their inputs.
    Optional linear (logistic) member: lin_w [d], lin_b [1] over inputs standardised by lin_mu/lin_sd;
    mix [1] is its weight in the final average (chosen on validation, 0 = MLPs only)."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    lin_w: np.ndarray | None = None
    lin_b: np.ndarray | None = None
    lin_mu: np.ndarray | None = None
    lin_sd: np.ndarray | None = None
    mix: np.ndarray | None = None
    knn_x: np.ndarray | None = None
    knn_y: np.ndarray | None = None
    knn_mu: np.ndarray | None = None
    knn_proj: np.ndarray | None = None
    knn_k: np.ndarray | None = None
    knn_mix: np.ndarray | None = None
    knn_uniform: np.ndarray | None = None  # [1] = 1: the memory weighs its neighbours alike

    def tensors(self) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> HeadWeights:
        return cls(**{k: np.asarray(v, dtype=np.float32) for k, v in t.items() if k in cls.__dataclass_fields__})

    @property
    def outputs(self) -> int:
        """1 for a two-model router (w2 [E, h]); K for one scoring K models (w2 [E, h, K])."""
        return 1 if self.w2.ndim == 2 else int(self.w2.shape[2])

    def predict_mlp(self, x: np.ndarray) -> np.ndarray:
        x = (np.asarray(x, dtype=np.float32) - self.mu) / self.sd
        # batched matmul (BLAS) rather than einsum's own loops: same results, a quarter faster
        h = _gelu(np.matmul(x[None], self.w1) + self.b1[:, None, :])
        if self.w2.ndim == 2:
            logits = np.matmul(h, self.w2[:, :, None])[..., 0] + self.b2[:, None]
        else:  # [E, n, K]
            logits = np.matmul(h, self.w2) + self.b2[:, None, :]
        return _sigmoid(logits).mean(axis=0)

    def predict_linear(self, x: np.ndarray) -> np.ndarray:
        assert self.lin_w is not None and self.lin_b is not None and self.lin_mu is not None and self.lin_sd is not None
        z = (np.asarray(x, dtype=np.float32) - self.lin_mu) / self.lin_sd
        if self.lin_w.ndim == 1:
            return _sigmoid(z @ self.lin_w + self.lin_b[0])
        return _sigmoid(z @ self.lin_w + self.lin_b)

    def memory(self) -> Memory | None:
        """The memory member (:mod:`hybridllm.memory`), or None when the head has none."""
        x, y, mu, proj, k = self.knn_x, self.knn_y, self.knn_mu, self.knn_proj, self.knn_k
        if x is None or y is None or mu is None or proj is None or k is None:
            return None
        uniform = self.knn_uniform is not None and bool(self.knn_uniform[0] > 0.5)
        return Memory(x, y, mu, proj, int(k[0]), uniform)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """p(x) in [0, 1]: the MLP members' mean probability, mixed with the linear member's, then
        with the memory member's.

        Runs the folded form (:class:`_Folded`): the same function as ``predict_mlp`` and
        ``predict_linear`` mixed, in a handful of array operations, and without the part the mix
        weight zeroes."""
        folded = self.__dict__.get("_folded")
        if folded is None:  # built on first use; assigning any weight drops it (__setattr__)
            folded = self.__dict__["_folded"] = _Folded(self)
        return folded(np.asarray(x, dtype=np.float32))

    def __setattr__(self, name: str, value: object) -> None:
        self.__dict__.pop("_folded", None)  # training sets the linear member and the mix after the MLPs
        super().__setattr__(name, value)


class _Folded:
    """A head prepared for inference: each member's input standardisation folded into its first
    layer (x @ (w1 / sd) + (b1 - (mu / sd) @ w1)), all members' first layers side by side in one
    matrix with the linear member's columns after them, and the second layers as one
    block-diagonal matrix. A routing decision scores one prompt at a time, where the cost is the
    number of NumPy calls, not the arithmetic: this form halves the head's time for one prompt and
    agrees with the plain one to float32 rounding (tested)."""

    def __init__(self, w: HeadWeights) -> None:
        a = 0.0 if w.mix is None or w.lin_w is None else float(w.mix[0])
        self.a = a
        e, d, h = w.w1.shape
        k = w.outputs
        self.e, self.h, self.k = e, h, k
        self.mlp = a < 1.0
        cols, bias = [], []
        if self.mlp:
            inv = (1.0 / w.sd.astype(np.float64))[:, None]
            w1 = w.w1.astype(np.float64) * inv[None]  # [E, d, h]
            b1 = w.b1.astype(np.float64) - np.einsum("d,edh->eh", w.mu.astype(np.float64), w1)
            cols.append(w1.transpose(1, 0, 2).reshape(d, e * h))
            bias.append(b1.reshape(e * h))
            w2 = w.w2.reshape(e, h, k).astype(np.float64)
            blk = np.zeros((e * h, e * k))
            for m in range(e):
                blk[m * h : (m + 1) * h, m * k : (m + 1) * k] = w2[m]
            self.w2 = blk.astype(np.float32)
            self.b2 = w.b2.reshape(e * k).astype(np.float32)
        if a > 0.0:
            assert w.lin_w is not None and w.lin_b is not None and w.lin_mu is not None and w.lin_sd is not None
            lw = w.lin_w.reshape(d, k).astype(np.float64) / w.lin_sd.astype(np.float64)[:, None]
            cols.append(lw)
            bias.append(w.lin_b.reshape(k).astype(np.float64) - w.lin_mu.astype(np.float64) @ lw)
        self.w1 = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32)
        self.b1 = np.concatenate(bias).astype(np.float32)
        self.squeeze = w.w2.ndim == 2
        self.memory = w.memory()
        self.b = 0.0 if w.knn_mix is None or self.memory is None else float(w.knn_mix[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.w1 + self.b1
        n, eh, k = len(x), self.e * self.h, self.k
        p = None
        if self.mlp:
            logits = _gelu(z[:, :eh]) @ self.w2 + self.b2
            p = _sigmoid(logits).reshape(n, self.e, k).mean(axis=1)
        if self.a > 0.0:
            lin = _sigmoid(z[:, -k:])
            p = lin if p is None else (1 - self.a) * p + self.a * lin
        assert p is not None
        if self.b > 0.0:
            assert self.memory is not None
            m = self.memory(x)
            p = (1 - self.b) * p + self.b * (m[:, None] if m.ndim == 1 else m)
        return p[:, 0] if self.squeeze else p


#: extra features that are one number each (standardised for the linear member); the others are
#: embeddings of the encoder's width (``head_embed``: the prompt's first words alone)
SCALAR_EXTRAS = ("log_tokens",)


def embedding_width(width: int, extra: list[str]) -> int:
    """How many of the ``width`` input columns are the prompt's own embedding (the first ones)."""
    n_scalar = sum(1 for e in extra if e in SCALAR_EXTRAS)
    return (width - n_scalar) // (1 + len(extra) - n_scalar)


def scalar_columns(width: int, extra: list[str]) -> np.ndarray:
    """Which of the ``width`` input columns are scalar extras. Layout: the prompt's embedding, then
    each extra in order (an embedding extra as wide as the prompt's embedding)."""
    dim = embedding_width(width, extra)
    mask = np.zeros(width, dtype=bool)
    at = dim
    for e in extra:
        if e in SCALAR_EXTRAS:
            mask[at] = True
            at += 1
        else:
            at += dim
    return mask
