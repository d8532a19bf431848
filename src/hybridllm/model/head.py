"""The router head: a small ensemble of MLPs over frozen query embeddings.

Why an ensemble with validation-selected checkpoints: routing labels are very noisy (one sampled
answer per model often decides a label), so a single MLP's ranking varies a lot with its seed and its
stopping epoch. Averaging a few members trained from different seeds, each stopped where its
validation log-likelihood peaks, is cheap on CPU and gives a steadier ranking than any single member.
The same smooth criterion picks the logistic member's C and the mix weight (``HeadConfig.select``;
validation APGR, the reported metric, is too flat and noisy near its optimum to choose by).

Training uses torch; inference is plain numpy, so serving needs neither torch nor a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hybridllm.errors import UsageError
from hybridllm.evaluate.metrics import apgr, quality_curve

from .memory import MIXES as MEMORY_MIXES
from .memory import Memory, fit_memory


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
        assert self.lin_w is not None and self.lin_b is not None
        z = (np.asarray(x, dtype=np.float32) - self.lin_mu) / self.lin_sd
        if self.lin_w.ndim == 1:
            return _sigmoid(z @ self.lin_w + self.lin_b[0])
        return _sigmoid(z @ self.lin_w + self.lin_b)

    def memory(self) -> Memory | None:
        """The memory member (:mod:`hybridllm.memory`), or None when the head has none."""
        x, y, mu, proj, k = self.knn_x, self.knn_y, self.knn_mu, self.knn_proj, self.knn_k
        if x is None or y is None or mu is None or proj is None or k is None:
            return None
        return Memory(x, y, mu, proj, int(k[0]))

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


def neg_log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Minus the binary cross-entropy of predictions ``p`` against (soft) labels ``y``, averaged
    over rows and outputs: higher is better, like the APGR it stands in for."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64).reshape(p.shape)
    return float(np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


#: what ``HeadConfig.select`` may name
SELECTION_METRICS = ("loss", "apgr")


def selection_metric(
    qs_val: np.ndarray, ql_val: np.ndarray, y_val: np.ndarray | None, select: str
) -> Callable[[np.ndarray], float]:
    """The validation score that the head's choices maximise (see ``HeadConfig.select``)."""
    if select not in SELECTION_METRICS:
        raise UsageError(f"unknown selection metric {select!r}; expected one of {', '.join(SELECTION_METRICS)}")
    if select == "loss" and y_val is not None:
        return lambda p: neg_log_loss(p, y_val)
    return lambda p: val_metric(p, qs_val, ql_val)  # "apgr", or no validation labels given


def train_linear(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    metric: Callable[[np.ndarray], float],
    scaled: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """L2 logistic regression on soft labels (as sample weights), C picked by the validation ``metric``.

    Embedding dimensions are used as they are (already on the unit sphere); the ``scaled`` columns
    (scalar extra features) are standardised so the penalty treats them alike."""
    from sklearn.linear_model import LogisticRegression

    mu = np.zeros(x_train.shape[1], dtype=np.float32)
    sd = np.ones(x_train.shape[1], dtype=np.float32)
    mu[scaled] = x_train[:, scaled].mean(axis=0)
    sd[scaled] = x_train[:, scaled].std(axis=0) + 1e-6
    z = (x_train - mu) / sd
    zv = (x_val - mu) / sd
    # a soft label y is the same as a positive copy weighted y and a negative copy weighted 1 - y
    zz = np.concatenate([z, z])
    yy = np.concatenate([np.ones(len(z)), np.zeros(len(z))])
    y2 = y_train[:, None] if y_train.ndim == 1 else y_train  # one logistic model per output, one C for all
    best: tuple[float, list[Any], float] | None = None
    for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        fits = [
            LogisticRegression(C=c, max_iter=3000).fit(zz, yy, sample_weight=np.concatenate([y, 1 - y])) for y in y2.T
        ]
        p = np.stack([f.predict_proba(zv)[:, 1] for f in fits], axis=1)
        a = metric(p[:, 0] if y_train.ndim == 1 else p)
        if best is None or a > best[0] + 1e-9:
            best = (a, fits, c)
    assert best is not None
    w = np.stack([f.coef_[0] for f in best[1]], axis=1).astype(np.float32)
    b = np.array([f.intercept_[0] for f in best[1]], np.float32)
    return (w[:, 0] if y_train.ndim == 1 else w), b, mu, sd, best[2], best[0]


def _val_apgr(p: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> float:
    a = apgr(quality_curve(p, qs, ql), float(qs.mean()), float(ql.mean()))
    return -1.0 if a is None else a


def val_metric(p: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> float:
    """Checkpoint-selection metric: validation APGR; with K outputs (``p`` [n, K], ``qs`` [n, K]
    the K scored models' qualities, ``ql`` [n] the reference's), the mean of the K APGRs."""
    if p.ndim == 1:
        return _val_apgr(p, qs, ql)
    return float(np.mean([_val_apgr(p[:, k], qs[:, k], ql) for k in range(p.shape[1])]))


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    qs_val: np.ndarray,
    ql_val: np.ndarray,
    config: HeadConfig | None = None,
    progress: Callable[[str], None] | None = None,
    y_val: np.ndarray | None = None,
    memory_rows: int | None = None,
) -> tuple[HeadWeights, dict]:
    """Train the ensemble with BCE on (soft) labels; each member keeps its best validation epoch
    (by ``config.select``: log-loss against ``y_val``, the validation rows' labels, or APGR).
    The memory member (``config.knn``) keeps the first ``memory_rows`` training rows (default all:
    pass the count of original prompts when augmented copies follow them)."""
    import torch

    cfg = config or HeadConfig()
    metric = selection_metric(qs_val, ql_val, y_val, cfg.select)
    x_train = np.asarray(x_train, dtype=np.float32)
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0) + 1e-6
    xt = torch.from_numpy((x_train - mu) / sd)
    y_train = np.asarray(y_train, dtype=np.float32)
    k_out = 1 if y_train.ndim == 1 else y_train.shape[1]
    yt = torch.from_numpy(y_train)
    xv = torch.from_numpy((np.asarray(x_val, dtype=np.float32) - mu) / sd)
    d = xt.shape[1]
    members = []
    history = []
    for e in range(cfg.members):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + e)
        torch.manual_seed(cfg.seed * 1000 + e)
        net = torch.nn.Sequential(
            torch.nn.Dropout(cfg.input_dropout),
            torch.nn.Linear(d, cfg.hidden),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Dropout(cfg.dropout),
            torch.nn.Linear(cfg.hidden, k_out),
        )
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        best, best_state, best_epoch, bad = -math.inf, None, 0, 0
        for epoch in range(cfg.epochs):
            net.train()
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                opt.zero_grad()
                out = net(xt[idx])
                loss = loss_fn(out.squeeze(-1) if k_out == 1 and yt.ndim == 1 else out, yt[idx])
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                out = torch.sigmoid(net(xv))
                pv = (out.squeeze(-1) if yt.ndim == 1 else out).numpy()
            score = metric(pv)
            if score > best + 1e-9:
                best, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        assert best_state is not None
        members.append(best_state)
        history.append({"member": e, "best_epoch": best_epoch, "val_score": best})
        if progress is not None:
            progress(f"member {e + 1}/{cfg.members}: val score {best:.4f} at epoch {best_epoch + 1}")
    weights = HeadWeights(
        w1=np.stack([m["1.weight"].numpy().T for m in members]),
        b1=np.stack([m["1.bias"].numpy() for m in members]),
        w2=np.stack([m["4.weight"].numpy()[0] if yt.ndim == 1 else m["4.weight"].numpy().T for m in members]),
        b2=np.array(
            [float(m["4.bias"].numpy()[0]) if yt.ndim == 1 else m["4.bias"].numpy() for m in members],
            dtype=np.float32,
        ),
        mu=mu.astype(np.float32),
        sd=sd.astype(np.float32),
    )
    info: dict = {"members": history}
    if cfg.linear:
        scaled = scalar_columns(x_train.shape[1], list(cfg.extra))
        lw, lb, lmu, lsd, c, lin_score = train_linear(
            x_train, np.asarray(y_train), np.asarray(x_val, np.float32), metric, scaled
        )
        weights.lin_w, weights.lin_b, weights.lin_mu, weights.lin_sd = lw, lb, lmu, lsd
        p_mlp = weights.predict_mlp(x_val)
        p_lin = weights.predict_linear(x_val)
        scores = {a: metric((1 - a) * p_mlp + a * p_lin) for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
        mix = max(scores, key=lambda a: (round(scores[a], 9), -abs(a - 0.5)))
        weights.mix = np.array([mix], np.float32)
        info["linear"] = {"C": c, "val_score": lin_score, "mix": mix, "mix_val_score": scores, "select": cfg.select}
        if progress is not None:
            progress(
                f"linear member: C={c:g}, val score {lin_score:.4f}; mix weight {mix} (val score {scores[mix]:.4f})"
            )
    if cfg.knn:
        n = len(x_train) if memory_rows is None else memory_rows
        dim = embedding_width(x_train.shape[1], list(cfg.extra))
        x_val = np.asarray(x_val, np.float32)
        mem, knn_score = fit_memory(x_train[:n], np.asarray(y_train)[:n], x_val, metric, dim)
        p_head, p_mem = weights.predict(x_val), mem(x_val)
        bscores = {b: metric((1 - b) * p_head + b * p_mem) for b in MEMORY_MIXES}
        b = max(bscores, key=lambda v: (round(bscores[v], 9), -v))
        if b > 0.0:
            weights.knn_x, weights.knn_y, weights.knn_mu, weights.knn_proj = mem.x, mem.y, mem.mu, mem.proj
            weights.knn_k, weights.knn_mix = np.array([mem.k], np.float32), np.array([b], np.float32)
        info["knn"] = {"k": mem.k, "rows": n, "dims": mem.x.shape[1], "val_score": knn_score, "mix": b,
                       "mix_val_score": bscores}  # fmt: skip
        if progress is not None:
            progress(f"memory member: k={mem.k} of {n} prompts, val score {knn_score:.4f}; mix weight {b}")
    return weights, info
