"""Printing and writing a two-model evaluation (evaluate, crossval): the table with intervals and
baselines, the operating point, warnings, and the JSON / PNG / HTML files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from ..metrics import CA_POINTS, QD_POINTS, _key
from ._common import _fmt, _progress, err, out

_NAMES = {
    "router": "router",
    "random": "random",
    "oracle": "oracle",
    "shorter_prompts_to_small": "short→small",
    "longer_prompts_to_small": "long→small",
}


def _ci(ci: list[float] | None, digits: int) -> str:
    return "" if not ci else f"\n[dim][{ci[0]:.{digits}f}, {ci[1]:.{digits}f}][/dim]"


def summary_table(report: dict[str, Any], title: str) -> Table:
    """Router (95 % interval under each figure), random, oracle and the prompt-length baselines."""
    ci = report.get("ci95") or {}
    t = Table(title=title)
    t.add_column("method")
    t.add_column("APGR", justify="right")
    for ca in CA_POINTS:
        t.add_column(f"QD@CA{_key(ca)}%", justify="right")
    for qd in QD_POINTS:
        t.add_column(f"CA@QD≤{_key(qd)}%", justify="right")
    rows = [("router", report["router"])]
    rows += [(n, report[n]) for n in ("random", "oracle")]
    rows += list((report.get("baselines") or {}).items())
    for name, r in rows:
        mine = ci if name == "router" else {}
        t.add_row(
            _NAMES.get(name, name),
            _fmt(r["apgr"]) + _ci(mine.get("apgr"), 3),
            *[
                _fmt(r["quality_drop_at_cost_advantage"][_key(x)], 2)
                + _ci(mine.get("quality_drop_at_cost_advantage", {}).get(_key(x)), 2)
                for x in CA_POINTS
            ],
            *[
                _fmt(r["cost_advantage_at_quality_drop"][_key(x)], 1)
                + _ci(mine.get("cost_advantage_at_quality_drop", {}).get(_key(x)), 1)
                for x in QD_POINTS
            ],
        )
    return t


def show_pair_report(report: dict[str, Any], title: str) -> None:
    out.print(summary_table(report, title))
    out.print(f"Q_small {report['Q_small']:.4f}   Q_large {report['Q_large']:.4f}   (95 % bootstrap intervals in grey)")
    op = report.get("operating_point")
    if op is not None:
        r, p = op["realised"], op.get("promised") or {}
        ci = (report.get("ci95") or {}).get("operating_point") or {}
        ca_ci, qd_ci = ci.get("cost_advantage"), ci.get("quality_drop")
        promised = (
            f"calibration promised {p['cost_advantage']:.1f}% small at a {p['quality_drop']:.2f}% drop"
            if p.get("cost_advantage") is not None
            else "no calibration promise (raw threshold)"
        )
        where = f"threshold {op['threshold']:.4f}" if "threshold" in op else "each fold router's own, out of fold"
        out.print(
            f"operating point {op['knob']} ({where}): "
            f"{r['cost_advantage']:.1f}% small"
            + (f" [{ca_ci[0]:.1f}, {ca_ci[1]:.1f}]" if ca_ci else "")
            + f", quality drop {r['quality_drop']:.2f}%"
            + (f" [{qd_ci[0]:.2f}, {qd_ci[1]:.2f}]" if qd_ci else "")
            + f"; {promised}",
            highlight=False,
        )
    for w in report.get("warnings") or []:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def write_pair_outputs(
    report: dict[str, Any],
    rows: list[Any],
    scores: np.ndarray,
    band: np.ndarray | None,
    title: str,
    json_out: Path | None,
    plot: Path | None,
    html_out: Path | None,
    turns: str = "all",
) -> None:
    """The files a user asked for, each named once it is written."""
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
        _progress(f"wrote {json_out}")
    if not (plot or html_out):
        return
    from ..evaluate import breakdown_by_meta, prompt_lengths
    from ..metrics import expected_quality
    from ..plots import figure_png, pair_figure, save_figure

    qs, ql = expected_quality(rows, report["small"], report["large"])
    lengths = prompt_lengths(rows, turns)
    if plot:
        save_figure(pair_figure(report, scores, qs, ql, lengths, band, title), plot)
        _progress(f"wrote {plot}")
    if html_out:
        from ..fsutil import atomic_write
        from ..html_report import render_html

        png = figure_png(pair_figure(report, scores, qs, ql, lengths, band, title))
        op = report.get("operating_point")
        parts = breakdown_by_meta(rows, np.asarray(scores), qs, ql, op["threshold"] if op else None)
        atomic_write(html_out, render_html(report, png, parts, title))
        _progress(f"wrote {html_out}")
