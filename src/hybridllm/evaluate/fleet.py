"""Evaluating a router over N models on a table: its cost–quality curve against every single model,
the best fixed mix of models (the upper convex hull of the single models: what a user gets by
splitting traffic at random in the best proportions), random routing between the cheapest and the
reference model, and the oracle (each query to the cheapest model that reaches the best quality any
model reaches on it).

Summary figures: AIQ (the average quality over the cost range from the cheapest model to the
reference, i.e. the area under quality-vs-cost divided by that range; RouterBench's measure, here on
the raw curve, no hull taken of the router's own points) and the cost at which quality is within
1 % of the reference's. Costs are in % of always using the reference model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hybridllm.routing.policy import Fleet, sweep_arrays

from .bootstrap import interval95


def curve_points(scores: np.ndarray, quality: np.ndarray, fleet: Fleet) -> tuple[np.ndarray, np.ndarray]:
    """(cost %, quality) of every operating point of the policy on this table, by rising cost."""
    _, cost, drop, _ = sweep_arrays(scores, quality, fleet)
    q_ref = float(quality[:, fleet.ref].mean())
    denom = abs(q_ref) if q_ref else 1.0
    q = q_ref - drop / 100 * denom
    order = np.argsort(cost, kind="stable")
    return cost[order], q[order]


def singles(quality: np.ndarray, fleet: Fleet) -> list[dict[str, Any]]:
    c_ref = fleet.costs[fleet.ref]
    return [
        {"model": m, "cost": c / c_ref * 100, "quality": float(quality[:, i].mean())}
        for i, (m, c) in enumerate(zip(fleet.models, fleet.costs, strict=True))
    ]


def upper_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave envelope of (cost, quality) points, by rising cost, made non-decreasing
    (a dearer mix that is worse is never chosen)."""
    pts = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    out = [hull[0]]
    for x, y in hull[1:]:
        out.append((x, max(y, out[-1][1])))
    return out


def area(cost: np.ndarray, q: np.ndarray, lo: float, hi: float) -> float:
    """Average of the piecewise-linear quality(cost) over [lo, hi] (held flat beyond its ends)."""
    grid = np.linspace(lo, hi, 2001)
    return float(np.mean(np.interp(grid, cost, q)))


def cost_at_drop(cost: np.ndarray, q: np.ndarray, q_ref: float, drop_pct: float = 1.0) -> float:
    """The lowest cost (%) whose quality is within ``drop_pct`` % of the reference's."""
    ok = q >= q_ref - abs(q_ref) * drop_pct / 100 - 1e-12
    return float(cost[ok].min()) if ok.any() else 100.0


def oracle_point(quality: np.ndarray, fleet: Fleet) -> dict[str, float]:
    best = quality.max(axis=1, keepdims=True)
    pick = np.argmax(quality >= best - 1e-12, axis=1)  # cost order: the first is the cheapest
    costs = np.asarray(fleet.costs)
    return {
        "cost": float(costs[pick].mean() / costs[fleet.ref] * 100),
        "quality": float(quality[np.arange(len(pick)), pick].mean()),
    }


def evaluate_fleet(
    scores: np.ndarray, quality: np.ndarray, fleet: Fleet, peers: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Everything above for one table: ``scores`` [n, K] of the router, ``quality`` [n, M] in cost
    order; ``peers``: other routers' scores in the same shape, run through the same policy."""
    q_ref = float(quality[:, fleet.ref].mean())
    lo = fleet.costs[0] / fleet.costs[fleet.ref] * 100
    sing = singles(quality, fleet)
    hull = upper_hull([(s["cost"], s["quality"]) for s in sing if s["cost"] <= 100 + 1e-9])
    hx, hy = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    rx = np.array([lo, 100.0])
    ry = np.array([float(quality[:, 0].mean()), q_ref])
    out: dict[str, Any] = {
        "n": len(quality),
        "fleet": fleet.to_dict(),
        "singles": sing,
        "oracle": oracle_point(quality, fleet),
        "cost_range": [lo, 100.0],
    }

    def summary(cx: np.ndarray, cy: np.ndarray) -> dict[str, Any]:
        return {"aiq": area(cx, cy, lo, 100.0), "cost_at_1pct_drop": cost_at_drop(cx, cy, q_ref)}

    out["hull"] = {**summary(hx, hy), "points": hull}
    out["random"] = summary(rx, ry)
    cx, cy = curve_points(scores, quality, fleet)
    out["router"] = {**summary(cx, cy), "curve": _thin(cx, cy)}
    for name, s in (peers or {}).items():
        px, py = curve_points(s, quality, fleet)
        out[name] = {**summary(px, py), "curve": _thin(px, py)}
    return out


def bootstrap_fleet(
    scores: np.ndarray, quality: np.ndarray, fleet: Fleet, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Percentile-bootstrap 95 % intervals over queries (paired: router and best fixed mix on the
    same resamples) for the router's AIQ, the mix's, their difference and the router's cost at a
    1 % quality drop."""
    rng = np.random.default_rng(seed)
    n = len(quality)
    aiq, hull_aiq, diff, cost1 = [], [], [], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        rep = evaluate_fleet(scores[idx], quality[idx], fleet)
        aiq.append(rep["router"]["aiq"])
        hull_aiq.append(rep["hull"]["aiq"])
        diff.append(rep["router"]["aiq"] - rep["hull"]["aiq"])
        cost1.append(rep["router"]["cost_at_1pct_drop"])
    return {
        "method": f"percentile bootstrap over queries, {n_boot} resamples, seed {seed} (paired)",
        "router_aiq": interval95(aiq),
        "hull_aiq": interval95(hull_aiq),
        "router_minus_hull_aiq": interval95(diff),
        "router_cost_at_1pct_drop": interval95(cost1),
    }


def _thin(x: np.ndarray, y: np.ndarray, n: int = 200) -> list[list[float]]:
    idx = np.unique(np.linspace(0, len(x) - 1, min(n, len(x))).round().astype(int))
    return [[round(float(x[i]), 4), round(float(y[i]), 6)] for i in idx]


def plot_fleet(path: str, report: dict[str, Any], title: str = "") -> None:
    """Quality vs cost: the router (and peers), the single models, their hull, random, the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    for name, style in (("router", "-"), *((k, ":") for k in report if k.startswith("peer:"))):
        c = np.array(report[name]["curve"])
        ax.plot(
            c[:, 0], c[:, 1], style, label=f"{name} (AIQ {report[name]['aiq']:.3f})", lw=2 if name == "router" else 1
        )
    h = np.array(report["hull"]["points"])
    hx = np.linspace(h[0, 0], h[-1, 0], 400)  # a mix is linear in cost: dense points keep it so on a log axis
    ax.plot(
        hx,
        np.interp(hx, h[:, 0], h[:, 1]),
        "--",
        color="grey",
        label=f"best fixed mix (AIQ {report['hull']['aiq']:.3f})",
    )
    for s in report["singles"]:
        ax.scatter([s["cost"]], [s["quality"]], color="black", s=18, zorder=3)
        ax.annotate(s["model"], (s["cost"], s["quality"]), fontsize=7, xytext=(3, -8), textcoords="offset points")
    o = report["oracle"]
    ax.scatter([o["cost"]], [o["quality"]], marker="*", s=80, color="tab:green", label="oracle", zorder=3)
    ax.set_xlabel("average cost, % of always using the reference model")
    ax.set_ylabel("quality")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
