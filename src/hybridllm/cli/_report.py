"""Printing and writing what train, evaluate and crossval report: the validation operating points of
a fitted router, and an evaluation (the two-model view: the table with intervals and baselines, the
operating point, warnings; beyond two models: AIQ against the single models and their best fixed
mix), with the JSON / PNG / HTML files. Which view a report is in is decided here, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from hybridllm.evaluate.metrics import _key
from hybridllm.routing.knob import CA_POINTS, QD_POINTS, point_for_quality_drop, promised_point
from hybridllm.routing.policy import Fleet

from ._common import CLIError, _fmt, _progress, err, out

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


def is_pair(report: dict[str, Any]) -> bool:
    """Whether a report is the two-model view (APGR and cost advantage) or the N-model one (AIQ)."""
    return "apgr" in report["router"]


def show_report(report: dict[str, Any], title: str) -> None:
    (show_pair_report if is_pair(report) else show_fleet_report)(report, title)


def write_outputs(
    report: dict[str, Any], rows: list[Any], scores: np.ndarray, band: np.ndarray | None, title: str,
    json_out: Path | None, plot: Path | None, html_out: Path | None, turns: str = "all",
) -> None:  # fmt: skip
    """The files a user asked for, each named once it is written."""
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
        _progress(f"wrote {json_out}")
    if is_pair(report):
        write_pair_outputs(report, rows, scores, band, title, plot, html_out, turns)
        return
    if html_out:
        raise CLIError("--html reports on two models; for more, write --json and --plot")
    if plot:
        from hybridllm.evaluate.fleet import plot_fleet

        plot_fleet(str(plot), report, title)
        _progress(f"wrote {plot}")


def show_fit(cfg: dict[str, Any]) -> None:
    """A fitted router's validation figures: the two-model summary when it has one, and the
    operating points at a few quality-drop limits with each model's share."""
    metrics = cfg.get("validation_metrics")
    if metrics:
        out.print(summary_table(metrics, f"validation ({cfg['data']['validation_rows']} rows)"))
    fl = Fleet.from_dict(cfg["fleet"])
    t = Table(title=f"validation ({cfg['data']['validation_rows']} rows): operating points")
    t.add_column("max quality drop")
    t.add_column("threshold", justify="right")
    if fl.costs_given:
        t.add_column("cost, % of always-best", justify="right")
    for m in fl.models:
        t.add_column(f"% {m}", justify="right")
    for qd in (0, 1, 2, 5, 10):
        p = point_for_quality_drop(cfg["calibration"], qd)
        cost = [f"{p['cost']:.1f}"] if fl.costs_given else []
        t.add_row(f"{qd}%", f"{p['threshold']:.4f}", *cost, *[f"{s:.1f}" for s in p["shares"]])
    out.print(t)
    costs = ", ".join(f"{m} {c:g}" for m, c in zip(fl.models, fl.costs, strict=True)) if fl.costs_given else None
    out.print(f"models by cost: {costs or ', '.join(fl.models)}; reference: {fl.reference}", highlight=False)
    point = promised_point(cfg)
    promised = point["promised"]
    if promised["cost_advantage"] is not None:
        out.print(
            f"default operating point {point['knob']} (calibrated on validation): threshold "
            f"{point['threshold']:.4f}, {promised['cost_advantage']:.1f}% away from {fl.reference}, "
            f"quality drop {promised['quality_drop']:.2f}%",
            highlight=False,
        )


def show_fleet_report(report: dict[str, Any], title: str) -> None:
    fl, ci = report["fleet"], report.get("ci95") or {}
    t = Table(title=f"{title}; cost in % of {fl['reference']}")
    t.add_column("method")
    t.add_column("AIQ", justify="right")
    t.add_column("cost at <= 1% quality drop", justify="right")
    ci_of = {"router": ("router_aiq", "router_cost_at_1pct_drop"), "hull": ("hull_aiq", None)}
    for name in ("router", "hull", "random"):
        label = {"hull": "best fixed mix of models", "random": "random (cheapest | best)"}.get(name, name)
        a_ci, c_ci = (ci.get(k) if k else None for k in ci_of.get(name, (None, None)))
        t.add_row(
            label,
            f"{report[name]['aiq']:.4f}" + (f" [{a_ci[0]:.4f}, {a_ci[1]:.4f}]" if a_ci else ""),
            f"{report[name]['cost_at_1pct_drop']:.1f}%" + (f" [{c_ci[0]:.1f}, {c_ci[1]:.1f}]" if c_ci else ""),
        )
    o = report["oracle"]
    t.add_row("oracle", "", f"{o['cost']:.1f}% (quality {o['quality']:.3f})")
    out.print(t)
    for s_ in report["singles"]:
        out.print(f"  {s_['model']}: cost {s_['cost']:.1f}%, quality {s_['quality']:.4f}")
    d = ci.get("router_minus_hull_aiq")
    if d:
        out.print(f"router minus best fixed mix, AIQ: 95 % interval [{d[0]:+.4f}, {d[1]:+.4f}]", highlight=False)
    for w in report.get("warnings") or []:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


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
    plot: Path | None,
    html_out: Path | None,
    turns: str = "all",
) -> None:
    if not (plot or html_out):
        return
    from hybridllm.evaluate.metrics import expected_quality
    from hybridllm.evaluate.plots import figure_png, pair_figure, save_figure
    from hybridllm.evaluate.report import breakdown_by_meta, prompt_lengths

    qs, ql = expected_quality(rows, report["small"], report["large"])
    lengths = prompt_lengths(rows, turns)
    if plot:
        save_figure(pair_figure(report, scores, qs, ql, lengths, band, title), plot)
        _progress(f"wrote {plot}")
    if html_out:
        from hybridllm.evaluate.html import render_html
        from hybridllm.fsutil import atomic_write

        png = figure_png(pair_figure(report, scores, qs, ql, lengths, band, title))
        op = report.get("operating_point")
        parts = breakdown_by_meta(rows, np.asarray(scores), qs, ql, op["threshold"] if op else None)
        atomic_write(html_out, render_html(report, png, parts, title))
        _progress(f"wrote {html_out}")
