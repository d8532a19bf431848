"""Commands for routers: train, evaluate, crossval, calibrate, route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import (
    Engine,
    EngineOpt,
    Labels,
    Mode,
    RayAddressOpt,
    Select,
    ShardRowsOpt,
    WorkDirOpt,
    WorkersOpt,
    _fail,
    _fmt,
    _progress,
    _ray_options,
    app,
    err,
    out,
)
from ._report import summary_table

FeaturesOpt = Annotated[
    str,
    typer.Option(
        help="features beside the prompt's embedding, comma-separated: log_tokens (its length), head_embed (its "
        "first words alone: text appended to a prompt cannot move them; see the robustness benchmark)"
    ),
]

SelectOpt = Annotated[
    Select,
    typer.Option(
        help="what the head's validation choices (each member's epoch, the logistic member's C, the mix "
        "weight) maximise: loss (validation log-likelihood, steadier) or apgr (docs/method.md, The router model)"
    ),
]

KnnOpt = Annotated[
    bool,
    typer.Option(
        "--knn/--no-knn",
        help="mix in a nearest-neighbour member: the training prompts' embeddings and labels, stored in the "
        "artifact, with k and its weight chosen on validation (weight 0 keeps it out; docs/method.md)",
    ),
]


def _features(spec: str) -> list[str]:
    from ..head import SCALAR_EXTRAS

    names = [x.strip() for x in spec.split(",") if x.strip()]
    known = (*SCALAR_EXTRAS, "head_embed")
    bad = [n for n in names if n not in known]
    if bad or len(set(names)) != len(names):
        _fail(f"--features: expected some of {', '.join(known)} (each once), got {spec!r}")
    return names


@app.command()
def train(
    table: Annotated[Path, typer.Argument(help="routing table (.jsonl or .parquet) with the models' quality")],
    output: Annotated[Path, typer.Option(help="directory for the router artifact")],
    small: Annotated[str | None, typer.Option(help="two models: the small one's name in the table")] = None,
    large: Annotated[str | None, typer.Option(help="two models: the large one's name in the table")] = None,
    models: Annotated[
        str | None, typer.Option(help="any number of models, comma-separated (cheapest first without costs)")
    ] = None,
    cost: Annotated[
        list[str] | None, typer.Option(help="NAME=X: a model's relative cost (repeat); or use --models-file")
    ] = None,
    models_file: Annotated[
        Path | None, typer.Option(help="models.toml with each model's cost (see docs/fleet.md)")
    ] = None,
    labels: Annotated[
        Labels, typer.Option(help="label type: det, prob or trans (docs/method.md, Labels)")
    ] = Labels.trans,
    validation: Annotated[Path | None, typer.Option(help="validation table; default: hold out 20% by id")] = None,
    mode: Annotated[
        Mode, typer.Option(help="head: frozen encoder + MLP ensemble; finetune: whole encoder")
    ] = Mode.head,
    encoder: Annotated[
        str,
        typer.Option(
            help="static (fast, default), minilm (full transformer via ONNX), or a local Hugging Face encoder directory"
        ),
    ] = "static",
    max_length: Annotated[int, typer.Option(help="encoder token limit")] = 256,
    seed: Annotated[int, typer.Option(help="random seed (runs are repeatable)")] = 0,
    epochs: Annotated[int | None, typer.Option(help="max epochs (head default 40, finetune default 3)")] = None,
    members: Annotated[int, typer.Option(help="ensemble members in head mode")] = 5,
    features: FeaturesOpt = "log_tokens",
    select: SelectOpt = Select.loss,
    knn: KnnOpt = True,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 1024,
    work_dir: WorkDirOpt = None,
) -> None:
    """Train a router on a routing table and save a calibrated artifact: between --small and
    --large, or among --models. With --engine ray the embedding pass (head mode) runs on Ray."""
    from ..head import HeadConfig
    from ..table import read_table
    from ..train import TrainOptions, train_router

    rows = read_table(table)
    vrows = read_table(validation) if validation else None
    head = HeadConfig(extra=_features(features), members=members, seed=seed, select=select.value, knn=knn)
    if epochs is not None and mode == Mode.head:
        head.epochs = epochs
    if models is not None:
        if small or large:
            _fail("give --models, or --small and --large, not both")
        if mode != Mode.head or engine is not Engine.local:
            _fail("--models trains in head mode with the local engine")
        _train_fleet(rows, vrows, models, cost, models_file, labels.value, encoder, max_length, seed, head, output)
        return
    if not small or not large:
        _fail("give --small and --large (two models) or --models M1,M2,... (any number)")
    opts = TrainOptions(
        small=small,
        large=large,
        labels=labels.value,
        mode=mode.value,
        encoder=encoder,
        max_length=max_length,
        seed=seed,
        head=head,
    )
    if epochs is not None and mode != Mode.head:
        opts.finetune_epochs = epochs
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    featurizer = None
    if ray_opts is not None:
        if mode != Mode.head:
            _fail("--engine ray covers the head-mode embedding pass; finetune trains in one process")
        from ..engine import featurize_ray

        def featurizer(texts):
            x, st = featurize_ray(texts, encoder, max_length, head.extra, ray_opts)
            _progress(f"ray embedding pass: {st.items} texts in {st.seconds:.1f} s ({st.resumed} shards resumed)")
            return x

    res = train_router(rows, opts, output, validation=vrows, progress=_progress, featurizer=featurizer)
    out.print(
        summary_table(res.config["validation_metrics"], f"validation ({res.config['data']['validation_rows']} rows)")
    )
    from ..evaluate import promised_point

    point = promised_point(res.config)
    promised = point["promised"]
    if promised["cost_advantage"] is not None:
        out.print(
            f"default operating point {point['knob']} (calibrated on validation): threshold "
            f"{point['threshold']:.4f}, {promised['cost_advantage']:.1f}% to {opts.small}, "
            f"quality drop {promised['quality_drop']:.2f}%",
            highlight=False,
        )
    apgr = res.config["validation_metrics"]["router"]["apgr"]
    out.print(f"saved router to {res.output} (validation APGR {_fmt(apgr)})", highlight=False)


def _train_fleet(rows, vrows, models, cost, models_file, labels, encoder, max_length, seed, head, output) -> None:
    from ..fleet import FleetOptions, fit_fleet

    names, costs = _fleet_costs(models, cost, models_file)
    opts = FleetOptions(names, costs, labels=labels, encoder=encoder, max_length=max_length, seed=seed, head=head)
    fitted = fit_fleet(rows, opts, validation=vrows, progress=_progress, show_progress=True)
    _print_fleet(fitted.config)
    fitted.save(output)
    out.print(f"saved router to {output}")


def _fleet_costs(models: str, cost: list[str] | None, models_file: Path | None) -> tuple[list[str], Any]:
    """The --models names and their costs (--models-file, then --cost flags; None = order given)."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        _fail(f"--models needs at least two distinct names, got {models!r}")
    costs: dict[str, float] | None = None
    if models_file is not None:
        from ..registry import Registry

        costs = Registry.load(models_file).costs(names)
    for item in cost or []:
        name, sep, value = item.partition("=")
        try:
            x = float(value)
        except ValueError:
            x = float("nan")
        if not sep or name not in names or not x > 0 or x == float("inf"):
            _fail(f"--cost {item!r}: expected NAME=X with NAME in --models and X > 0")
        costs = {**(costs or {}), name: x}
    return names, costs


def _print_fleet(cfg: dict) -> None:
    fl = cfg["fleet"]
    t = Table(title=f"validation ({cfg['data']['validation_rows']} rows): operating points")
    t.add_column("max quality drop")
    t.add_column("threshold", justify="right")
    t.add_column("cost, % of always-best", justify="right")
    for m in fl["models"]:
        t.add_column(f"% {m}", justify="right")
    from ..policy import resolve

    for qd in (0, 1, 2, 5, 10):
        thr, _ = resolve(cfg["calibration"], cfg["default_operating_point"], max_quality_drop=qd)
        p = next(x for x in cfg["calibration"] if x["threshold"] == thr)
        t.add_row(f"{qd}%", f"{thr:.4f}", f"{p['cost']:.1f}", *[f"{s:.1f}" for s in p["shares"]])
    out.print(t)
    costs_txt = ", ".join(f"{m} {c:g}" for m, c in zip(fl["models"], fl["costs"], strict=True))
    out.print(f"models by cost: {costs_txt}; reference (best on training rows): {fl['reference']}")


def _crossval_fleet(
    table, models, cost, models_file, labels, encoder, seed, folds, salt, json_out, plot, features="log_tokens",
    select="loss", knn=True,
) -> None:  # fmt: skip
    from ..crossval import cross_validate_fleet
    from ..fleet import FleetOptions
    from ..fleet_eval import plot_fleet
    from ..head import HeadConfig
    from ..table import read_table

    names, costs = _fleet_costs(models, cost, models_file)
    head = HeadConfig(extra=_features(features), select=select, knn=knn)
    opts = FleetOptions(names, costs, labels=labels, encoder=encoder, seed=seed, head=head)
    rep, _, _ = cross_validate_fleet(read_table(table), opts, folds=folds, salt=salt, progress=_progress)
    out.print(
        f"{folds}-fold out-of-fold on {table.name} ({rep['n']} rows): router AIQ {rep['router']['aiq']:.4f}, "
        f"best fixed mix {rep['hull']['aiq']:.4f}, random {rep['random']['aiq']:.4f}; cost at <= 1% drop "
        f"{rep['router']['cost_at_1pct_drop']:.1f}% (oracle {rep['oracle']['cost']:.1f}%); per-fold AIQ "
        + ", ".join(f"{p['aiq']:.4f}" for p in rep["per_fold"]),
        highlight=False,
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rep, indent=1) + "\n")
    if plot:
        plot_fleet(str(plot), rep, f"{table.name}: {rep['n']} queries, {folds}-fold out-of-fold")


@app.command()
def evaluate(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact")],
    table: Annotated[Path, typer.Argument(help="table with both models' quality (a test split)")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    predictions: Annotated[Path | None, typer.Option(help="write JSONL {id, score} per row")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of quality drop vs cost advantage")] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="write one self-contained HTML report (plot, table, breakdown by meta field)"),
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95 % intervals")] = 1000,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 1024,
    work_dir: WorkDirOpt = None,
) -> None:
    """Evaluate a router on a table: the router with 95 % intervals against random, the oracle and
    prompt-length baselines, and its saved operating point as realised on the table."""
    from ..evaluate import evaluate_router, write_predictions
    from ..router import Router
    from ..table import read_table
    from ._report import show_pair_report, write_pair_outputs

    if bootstrap < 100:
        _fail("--bootstrap must be at least 100 resamples")
    router = Router(router_dir)
    rows = read_table(table)
    if router.fleet is not None:
        if engine is not Engine.local or predictions or html_out:
            _fail("routers over N models evaluate with the local engine, without --predictions or --html")
        _evaluate_fleet(router, rows, table, json_out, plot, bootstrap)
        return
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    scorer = None
    if ray_opts is not None:
        from ..engine import router_scores_ray

        def scorer(prompts):
            return router_scores_ray(router_dir, prompts, ray_opts)[0]

    report, used, scores, boot = evaluate_router(router, rows, scorer=scorer, n_boot=bootstrap)
    if report["skipped"]:
        _progress(f"skipped {report['skipped']} rows without quality for both {router.small} and {router.large}")
    title = f"{router.small} → {router.large} on {table.name} ({report['n']} rows)"
    show_pair_report(report, title)
    if predictions:
        write_predictions(predictions, used, scores)
        _progress(f"wrote {predictions}")
    write_pair_outputs(report, used, scores, boot.band, title, json_out, plot, html_out, router.turns)


def _evaluate_fleet(router, rows, table, json_out, plot, n_boot: int = 1000) -> None:
    from ..bootstrap import separation_warning
    from ..fleet import fleet_rows, quality_matrix
    from ..fleet_eval import bootstrap_fleet, evaluate_fleet, plot_fleet

    fl = router.fleet
    used, skipped = fleet_rows(rows, list(fl.models))
    if skipped:
        _progress(f"skipped {skipped} rows without quality for every model")
    scores, quality = router.score([r["prompt"] for r in used]), quality_matrix(used, list(fl.models))
    report = evaluate_fleet(scores, quality, fl)
    report["ci95"] = ci = bootstrap_fleet(scores, quality, fl, n_boot)
    rival, measure = "the best fixed mix of models", "their AIQ difference"
    warning = separation_warning(ci["router_minus_hull_aiq"], report["n"], rival, measure, digits=4)
    report["warnings"] = [warning] if warning else []
    t = Table(title=f"{' | '.join(fl.models)} on {table.name} ({report['n']} rows); cost in % of {fl.reference}")
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
    d = ci["router_minus_hull_aiq"]
    if d:
        out.print(f"router minus best fixed mix, AIQ: 95 % interval [{d[0]:+.4f}, {d[1]:+.4f}]", highlight=False)
    for w in report["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
        _progress(f"wrote {json_out}")
    if plot:
        plot_fleet(str(plot), report, f"{table.name}: {report['n']} queries")
        _progress(f"wrote {plot}")


@app.command()
def crossval(
    table: Annotated[Path, typer.Argument(help="routing table with the models' quality")],
    small: Annotated[str | None, typer.Option(help="two models: the small one's name in the table")] = None,
    large: Annotated[str | None, typer.Option(help="two models: the large one's name in the table")] = None,
    models: Annotated[str | None, typer.Option(help="any number of models, comma-separated, as in train")] = None,
    cost: Annotated[list[str] | None, typer.Option(help="NAME=X: a model's relative cost, as in train")] = None,
    models_file: Annotated[Path | None, typer.Option(help="models.toml with each model's cost")] = None,
    folds: Annotated[int, typer.Option(help="number of folds (by hashed id)")] = 5,
    labels: Annotated[
        Labels, typer.Option(help="label type: det, prob or trans (docs/method.md, Labels)")
    ] = Labels.trans,
    encoder: Annotated[str, typer.Option(help="as in train")] = "static",
    seed: Annotated[int, typer.Option(help="fold f trains with seed + f")] = 0,
    features: FeaturesOpt = "log_tokens",
    select: SelectOpt = Select.loss,
    knn: KnnOpt = True,
    salt: Annotated[str, typer.Option(help="hash salt of the folds")] = "crossval",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    predictions: Annotated[Path | None, typer.Option(help="write JSONL {id, score} of out-of-fold scores")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of quality drop vs cost advantage")] = None,
) -> None:
    """Cross-validate the training recipe: every row scored by a router trained on the other
    folds. For tables too small to spare a test split."""
    from ..crossval import cross_validate
    from ..evaluate import write_predictions
    from ..head import HeadConfig
    from ..table import read_table
    from ..train import TrainOptions
    from ._report import show_pair_report, write_pair_outputs

    if models is not None:
        if small or large or predictions:
            _fail("--models cross-validates a router over N models: no --small/--large/--predictions")
        _crossval_fleet(
            table, models, cost, models_file, labels.value, encoder, seed, folds, salt, json_out, plot, features,
            select.value, knn,
        )  # fmt: skip
        return
    if not small or not large:
        _fail("give --small and --large (two models) or --models M1,M2,... (any number)")
    opts = TrainOptions(
        small=small,
        large=large,
        labels=labels.value,
        encoder=encoder,
        seed=seed,
        head=HeadConfig(extra=_features(features), seed=seed, select=select.value, knn=knn),
    )
    res = cross_validate(read_table(table), opts, folds=folds, salt=salt, progress=_progress)
    rep = res.report
    if rep["skipped"]:
        _progress(f"skipped {rep['skipped']} rows without quality for both {small} and {large}")
    title = f"{small} → {large}: {folds}-fold cross-validation on {table.name} ({rep['n']} rows)"
    show_pair_report(rep, title)
    fold_apgr = ", ".join(_fmt(p["apgr"]) for p in rep["per_fold"])
    out.print(
        f"Q_small {rep['Q_small']:.4f}   Q_large {rep['Q_large']:.4f}   per-fold APGR {fold_apgr} "
        f"(mean {_fmt(rep['fold_apgr_mean'])} ± {_fmt(rep['fold_apgr_std'])} sd)",
        highlight=False,
    )
    if predictions:
        write_predictions(predictions, res.rows, res.scores)
        _progress(f"wrote {predictions}")
    write_pair_outputs(rep, res.rows, res.scores, res.band, title, json_out, plot, None)


@app.command()
def calibrate(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact")],
    table: Annotated[Path, typer.Argument(help="calibration table with both models' quality")],
    max_quality_drop: Annotated[float | None, typer.Option(help="target max quality drop, percent")] = None,
    cost_advantage: Annotated[float | None, typer.Option(help="target share of small-model queries, percent")] = None,
    save: Annotated[bool, typer.Option(help="store this table's calibration and the point as the default")] = False,
) -> None:
    """Find the threshold that meets a quality or cost target on a table."""
    from ..artifact import save_config
    from ..calibrate import recalibrate
    from ..router import Router
    from ..table import read_table

    if (max_quality_drop is None) == (cost_advantage is None):
        _fail("give exactly one of --max-quality-drop or --cost-advantage")
    router = Router(router_dir)
    point, cfg, n = recalibrate(router, read_table(table), max_quality_drop, cost_advantage)
    out.print(
        json.dumps(
            {
                "n": n,
                "threshold": round(float(point["threshold"]), 6),
                "cost_advantage": round(float(point["cost_advantage"]), 2),
                "quality_drop": round(float(point["quality_drop"]), 2),
            }
        ),
        highlight=False,
    )
    if save:
        save_config(router_dir, {**cfg, "calibration_source": {"table": str(table), "rows": n}})
        _progress(f"saved calibration ({n} rows) and default point {cfg['default_operating_point']} to {router_dir}")


@app.command()
def route(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact")],
    prompt: Annotated[str, typer.Argument(help="the query")],
    max_quality_drop: Annotated[float | None, typer.Option(help="max quality drop, percent")] = None,
    cost_advantage: Annotated[float | None, typer.Option(help="share of small-model queries, percent")] = None,
    threshold: Annotated[float | None, typer.Option(help="raw score threshold in 0..1")] = None,
    budget: Annotated[
        float | None, typer.Option(help="routers over N models: average cost, percent of always-best")
    ] = None,
) -> None:
    """Decide which model should answer one prompt; prints JSON."""
    from ..router import Router

    router = Router(router_dir)
    d = router.route(
        prompt, max_quality_drop=max_quality_drop, cost_advantage=cost_advantage, threshold=threshold, budget=budget
    )
    out.print_json(json.dumps(d.to_dict()))
