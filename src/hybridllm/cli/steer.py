"""``steer-check``: what appended text does to a router's decisions, on the user's own prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import _fail, _progress, app, out


@app.command("steer-check")
def steer_check(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact (two models)")],
    table: Annotated[Path, typer.Argument(help="table whose prompts to test (e.g. a held-out split)")],
    n: Annotated[int, typer.Option(help="prompts to test (the table's first N)")] = 200,
    tries: Annotated[int, typer.Option(help="random suffixes per prompt in the random search")] = 50,
    max_quality_drop: Annotated[float | None, typer.Option(help="operating point: max quality drop, percent")] = None,
    cost_advantage: Annotated[
        float | None, typer.Option(help="operating point: share of small-model queries, percent")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="operating point: raw score threshold in 0..1")] = None,
    fail_above: Annotated[
        float | None, typer.Option(help="exit 1 if a family flips more than this percent of prompts either way")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the flip rates as JSON")] = None,
) -> None:
    """Flip rates of a router's decisions when suffixes are appended to prompts: per family, the
    share of small-routed prompts moved to the large model (cost inflation) and of large-routed
    prompts moved to the small one (quality loss), at the router's default operating point or the
    one given."""
    from rich.table import Table

    from hybridllm.evaluate.steering import steer_check as check
    from hybridllm.model.router import Router
    from hybridllm.tables.format import read_table

    if n < 1 or tries < 0:
        _fail("--n must be at least 1 and --tries at least 0")
    if fail_above is not None and not 0 <= fail_above <= 100:
        _fail("--fail-above is a percent in 0..100")
    router = Router(router_dir)
    if len(router.models) != 2:
        _fail("steer-check takes a two-model router (this one routes over several models)")
    thr, point = router.threshold(max_quality_drop, cost_advantage, threshold)
    prompts = [r["prompt"] for r in read_table(table)[:n]]
    _progress(f"{len(prompts)} prompts, threshold {thr:.4f} ({point}), {tries} random tries per prompt")
    report = check(router, prompts, thr, tries)
    over = [] if fail_above is None else report.over(fail_above / 100)
    t = Table(title=f"{router.small} → {router.large}, {report.n} prompts")
    t.add_column("suffix family")
    t.add_column("to large", justify="right")
    t.add_column("to small", justify="right")
    for name, v in report.families.items():
        t.add_row(name, f"{v['to_large']:.1%}", f"{v['to_small']:.1%}", style="red" if name in over else None)
    out.print(t)
    out.print(
        f"{report.to_small_share:.0%} of the clean prompts go to small; "
        f"worst family: {report.max_flip:.1%} of prompts flipped",
        highlight=False,
    )
    if json_out is not None:
        payload = {"router": str(router_dir), "table": str(table), "operating_point": point, **report.as_dict()}
        json_out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        _progress(f"wrote {json_out}")
    if over:
        _fail(f"{len(over)} suffix families flip more than {fail_above:g} % of prompts: {', '.join(over)}")
