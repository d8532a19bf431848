"""Pictures of a two-model evaluation (matplotlib, extra-free: it is a core dependency)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .bootstrap import GRID
from .metrics import quality_curve, quality_drop, random_curve


def _fmt_ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def pair_figure(
    report: dict[str, Any],
    scores: np.ndarray,
    qs: np.ndarray,
    ql: np.ndarray,
    lengths: np.ndarray | None,
    band: np.ndarray | None,
    title: str,
) -> Any:
    """Quality drop vs cost advantage: router (with its 95 % band and its operating point), random,
    prompt-length baselines and the oracle. The y-range follows the router, random and the
    baselines: the oracle's deep dip would otherwise squash the gap that matters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(qs)
    ca = np.arange(n + 1) / max(n, 1) * 100
    q_large = float(ql.mean())
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    router_qd = quality_drop(quality_curve(scores, qs, ql), q_large)
    ci = report.get("ci95", {})
    apgr = report["router"]["apgr"]
    label = "router" if apgr is None else f"router (APGR {apgr:.3f}{_fmt_ci(ci.get('apgr'))})"
    if band is not None:
        ax.fill_between(GRID, band[0], band[2], color="C0", alpha=0.18, lw=0, label="router, 95 % band")
    ax.plot(ca, router_qd, label=label, lw=2, color="C0")
    random_qd = quality_drop(random_curve(qs, ql), q_large)
    ax.plot(ca, random_qd, label="random (APGR 0.500)", ls="--", color="gray")
    shown = [router_qd, random_qd] + ([band[0], band[2]] if band is not None else [])
    styles = {
        "shorter_prompts_to_small": ("C1", "shorter prompts → small"),
        "longer_prompts_to_small": ("C4", "longer prompts → small"),
    }
    for name, (color, text) in styles.items():
        if lengths is None or name not in report.get("baselines", {}):
            continue
        sign = 1.0 if name.startswith("longer") else -1.0
        qd = quality_drop(quality_curve(sign * lengths, qs, ql), q_large)
        b_apgr = report["baselines"][name]["apgr"]
        ax.plot(ca, qd, color=color, lw=1, alpha=0.8, label=text if b_apgr is None else f"{text} (APGR {b_apgr:.3f})")
        shown.append(qd)
    oracle_qd = quality_drop(quality_curve(qs - ql, qs, ql), q_large)
    ax.plot(ca, oracle_qd, label="oracle", ls=":", color="green")
    op = report.get("operating_point")
    if op is not None:
        r = op["realised"]
        ax.plot(
            [r["cost_advantage"]],
            [r["quality_drop"]],
            marker="o",
            ms=8,
            color="C3",
            ls="none",
            label=f"operating point ({op['knob']}): {r['cost_advantage']:.1f}% small, drop {r['quality_drop']:.2f}%",
        )
        p = op.get("promised") or {}
        if p.get("cost_advantage") is not None:
            ax.plot(
                [p["cost_advantage"]],
                [p["quality_drop"]],
                marker="x",
                ms=8,
                color="C3",
                ls="none",
                label="promised by calibration (validation)",
            )
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(1, color="red", lw=0.6, ls="-.", label="1 % quality drop")
    lo = min(float(np.min(c)) for c in shown)
    hi = max(float(np.max(c)) for c in shown)
    pad = max(0.5, 0.08 * (hi - lo))
    ax.set_ylim(min(lo, 0.0) - pad, max(hi, 1.0) + pad)
    ax.set_xlim(0, 100)
    ax.set_xlabel("cost advantage: % of queries answered by the small model")
    ax.set_ylabel("quality drop vs all-at-large (%)")
    ax.set_title(title or "hybridllm router: cost vs quality")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p


def figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
