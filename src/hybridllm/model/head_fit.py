"""Training the head: each MLP member stopped at its best validation epoch, the logistic member with
its C, the memory member with its k, and the weights that mix them, all chosen on validation by one
smooth criterion (HeadConfig.select). Needs the train extra (torch, scikit-learn)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from hybridllm.errors import UsageError, require
from hybridllm.evaluate.metrics import apgr, quality_curve

from .head import HeadConfig, HeadWeights, embedding_width, scalar_columns
from .memory import MIXES as MEMORY_MIXES
from .memory import fit_memory


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
    LogisticRegression = require("sklearn.linear_model", "train", "training a router").LogisticRegression

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
    cfg = config or HeadConfig()
    metric = selection_metric(qs_val, ql_val, y_val, cfg.select)
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.float32)
    x_val = np.asarray(x_val, dtype=np.float32)
    weights, history = _train_mlps(x_train, y_train, x_val, metric, cfg, progress)
    info: dict = {"members": history}
    if cfg.linear:
        info["linear"] = _mix_linear(weights, x_train, y_train, x_val, metric, cfg, progress)
    if cfg.knn:
        n = len(x_train) if memory_rows is None else memory_rows
        info["knn"] = _mix_memory(weights, x_train[:n], y_train[:n], x_val, metric, cfg, progress)
    return weights, info


def _train_mlps(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, metric: Callable[[np.ndarray], float],
    cfg: HeadConfig, progress: Callable[[str], None] | None,
) -> tuple[HeadWeights, list[dict]]:  # fmt: skip
    """The MLP members, each from its own seed, each kept at its best validation epoch."""
    torch = require("torch", "train", "training a router")
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0) + 1e-6
    xt = torch.from_numpy((x_train - mu) / sd)
    yt = torch.from_numpy(y_train)
    xv = torch.from_numpy((x_val - mu) / sd)
    members, history = [], []
    for e in range(cfg.members):
        best_state, best_epoch, best = _train_member(torch, xt, yt, xv, metric, cfg, cfg.seed * 1000 + e)
        members.append(best_state)
        history.append({"member": e, "best_epoch": best_epoch, "val_score": best})
        if progress is not None:
            progress(f"member {e + 1}/{cfg.members}: val score {best:.4f} at epoch {best_epoch + 1}")
    one = yt.ndim == 1
    weights = HeadWeights(
        w1=np.stack([m["1.weight"].numpy().T for m in members]),
        b1=np.stack([m["1.bias"].numpy() for m in members]),
        w2=np.stack([m["4.weight"].numpy()[0] if one else m["4.weight"].numpy().T for m in members]),
        b2=np.array([float(m["4.bias"].numpy()[0]) if one else m["4.bias"].numpy() for m in members], np.float32),
        mu=mu.astype(np.float32),
        sd=sd.astype(np.float32),
    )
    return weights, history


def _train_member(
    torch: Any, xt: Any, yt: Any, xv: Any, metric: Callable[[np.ndarray], float], cfg: HeadConfig, seed: int
) -> tuple[dict[str, Any], int, float]:
    """One MLP member: (its state at the best validation epoch, that epoch, its score)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    k_out = 1 if yt.ndim == 1 else yt.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Dropout(cfg.input_dropout),
        torch.nn.Linear(xt.shape[1], cfg.hidden),
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
    return best_state, best_epoch, best


def _mix_linear(
    weights: HeadWeights, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
    metric: Callable[[np.ndarray], float], cfg: HeadConfig, progress: Callable[[str], None] | None,
) -> dict[str, Any]:  # fmt: skip
    """The logistic member and its weight in the mix, set on ``weights``; returns what was chosen."""
    scaled = scalar_columns(x_train.shape[1], list(cfg.extra))
    lw, lb, lmu, lsd, c, lin_score = train_linear(x_train, y_train, x_val, metric, scaled)
    weights.lin_w, weights.lin_b, weights.lin_mu, weights.lin_sd = lw, lb, lmu, lsd
    p_mlp = weights.predict_mlp(x_val)
    p_lin = weights.predict_linear(x_val)
    scores = {a: metric((1 - a) * p_mlp + a * p_lin) for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    mix = max(scores, key=lambda a: (round(scores[a], 9), -abs(a - 0.5)))
    weights.mix = np.array([mix], np.float32)
    if progress is not None:
        progress(f"linear member: C={c:g}, val score {lin_score:.4f}; mix weight {mix} (val score {scores[mix]:.4f})")
    return {"C": c, "val_score": lin_score, "mix": mix, "mix_val_score": scores, "select": cfg.select}


def _mix_memory(
    weights: HeadWeights, x_mem: np.ndarray, y_mem: np.ndarray, x_val: np.ndarray,
    metric: Callable[[np.ndarray], float], cfg: HeadConfig, progress: Callable[[str], None] | None,
) -> dict[str, Any]:  # fmt: skip
    """The memory member over ``x_mem`` set on ``weights`` with its weight in the mix by the smooth
    metric (0: kept for the routing choice on validation, :mod:`hybridllm.model.select`, which sets
    the weight it routes with and drops a member it gives none); returns what was chosen."""
    dim = embedding_width(x_mem.shape[1], list(cfg.extra))
    mem, knn_score = fit_memory(x_mem, y_mem, x_val, metric, dim)
    p_head, p_mem = weights.predict(x_val), mem(x_val)
    bscores = {b: metric((1 - b) * p_head + b * p_mem) for b in MEMORY_MIXES}
    b = max(bscores, key=lambda v: (round(bscores[v], 9), -v))
    weights.knn_x, weights.knn_y, weights.knn_mu, weights.knn_proj = mem.x, mem.y, mem.mu, mem.proj
    weights.knn_k, weights.knn_mix = np.array([mem.k], np.float32), np.array([b], np.float32)
    weights.knn_uniform = np.array([1.0], np.float32) if mem.uniform else None
    weighting = "uniform" if mem.uniform else "similarity"
    if progress is not None:
        progress(f"memory member: k={mem.k} ({weighting}) of {len(x_mem)} prompts, val score {knn_score:.4f}")
    return {"k": mem.k, "weights": weighting, "rows": len(x_mem), "dims": mem.x.shape[1], "val_score": knn_score,
            "mix": b, "mix_val_score": bscores}  # fmt: skip
