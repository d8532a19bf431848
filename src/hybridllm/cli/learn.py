"""Learning from traffic: ``retrain`` (a challenger from the outcomes log, the gate, promotion)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import _fail, _progress, app, out


@app.command()
def retrain(
    router_dir: Annotated[
        Path, typer.Argument(metavar="ROUTER", help="the champion: the router (or router slot) served now")
    ],
    outcomes: Annotated[Path, typer.Argument(help="the outcomes log a server wrote (--outcomes)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the challenger")],
    table: Annotated[
        Path | None, typer.Option(help="the original training table, trained on beside the traffic")
    ] = None,
    holdout: Annotated[
        float, typer.Option(help="the most recent share of pairs the gate scores on (never trained on)")
    ] = 0.2,
    min_gain: Annotated[
        float, typer.Option(help="promote when the 95 % interval's lower bound of the gain exceeds this")
    ] = 0.0,
    max_quality_drop: Annotated[
        float | None,
        typer.Option(help="the knob the drop and cost are reported at (default: the champion's default point)"),
    ] = None,
    feedback: Annotated[
        str,
        typer.Option(
            help="ignore, or replace: a request's feedback score replaces the judge's score of the model that served it"
        ),
    ] = "ignore",
    promote: Annotated[
        Path | None, typer.Option(help="a router slot (symbolic link) to point at the challenger when the gate passes")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the gate's interval")] = 1000,
    seed: Annotated[int, typer.Option(help="the bootstrap's seed")] = 0,
) -> None:
    """Train a challenger on served traffic and promote it only if measurably better (docs/retrain.md)."""
    from hybridllm.model import retrain as learn
    from hybridllm.tables.format import read_table

    if output.exists() and any(output.iterdir()):
        _fail(f"{output} exists and is not empty: name a new directory for the challenger")
    knob = None if max_quality_drop is None else {"max_quality_drop": max_quality_drop}
    opts = learn.RetrainOptions(
        holdout=holdout, min_gain=min_gain, knob=knob, feedback=feedback, n_boot=n_boot, seed=seed
    )
    rows = read_table(table) if table is not None else None
    res = learn.retrain(outcomes, router_dir, output, rows, opts, progress=_progress)
    g = res.gate
    shown = {k: getattr(g, k) for k in ("promote", "metric", "champion", "challenger", "diff_ci95", "n", "at_knob")}
    out.print(json.dumps(shown), highlight=False, soft_wrap=True)
    _progress(g.reason)
    _progress(f"wrote {res.challenger} and its report {res.report} ({res.seconds:.1f} s)")
    if promote is not None and g.promote:
        learn.promote(promote, res.challenger)
        _progress(f"promoted: {promote} -> {res.challenger}; reload the server (SIGHUP or POST /admin/reload)")
    elif promote is not None:
        _progress(f"not promoted: {promote} still points at {promote.resolve()}")
