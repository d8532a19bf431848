"""Commands for routers: train, evaluate, crossval, calibrate, route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

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
    out,
)
from ._report import show_fit

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
    from hybridllm.model.head import SCALAR_EXTRAS

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
    --large, or among --models (a pair is a fleet of two). With --engine ray the embedding pass (head
    mode) runs on Ray."""
    from hybridllm.model.fit import TrainOptions, train_router
    from hybridllm.model.head import HeadConfig
    from hybridllm.tables.format import read_table

    names, costs = _model_args(small, large, models, cost, models_file)
    rows = read_table(table)
    vrows = read_table(validation) if validation else None
    head = HeadConfig(extra=_features(features), members=members, seed=seed, select=select.value, knn=knn)
    if epochs is not None and mode == Mode.head:
        head.epochs = epochs
    opts = TrainOptions(
        small=small if names is None else None,
        large=large if names is None else None,
        models=names,
        costs=costs,
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
        from hybridllm.engine.jobs import featurize_ray

        def featurizer(texts):
            x, st = featurize_ray(texts, encoder, max_length, head.extra, ray_opts)
            _progress(f"ray embedding pass: {st.items} texts in {st.seconds:.1f} s ({st.resumed} shards resumed)")
            return x

    res = train_router(rows, opts, output, validation=vrows, progress=_progress, featurizer=featurizer)
    show_fit(res.config)
    apgr = (res.config.get("validation_metrics") or {}).get("router", {}).get("apgr")
    tail = f" (validation APGR {_fmt(apgr)})" if apgr is not None else ""
    out.print(f"saved router to {res.output}{tail}", highlight=False)


def _model_args(
    small: str | None, large: str | None, models: str | None, cost: list[str] | None, models_file: Path | None
) -> tuple[list[str] | None, Any]:
    """(the --models names, or None for --small/--large; the models' costs or None): the two
    spellings of one fleet."""
    if models is not None:
        if small or large:
            _fail("give --models, or --small and --large, not both")
        return _fleet_costs(models, cost, models_file)
    if not small or not large:
        _fail("give --small and --large (two models) or --models M1,M2,... (any number)")
    if cost or models_file:  # a pair with prices: the large model stays the reference
        return None, _fleet_costs(f"{small},{large}", cost, models_file)[1]
    return None, None


def _fleet_costs(models: str, cost: list[str] | None, models_file: Path | None) -> tuple[list[str], Any]:
    """The --models names and their costs (--models-file, then --cost flags; None = order given)."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        _fail(f"--models needs at least two distinct names, got {models!r}")
    costs: dict[str, float] | None = None
    if models_file is not None:
        from hybridllm.tables.registry import Registry

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
    prompt-length baselines, and its saved operating point as realised on the table (two models);
    against every single model and the best fixed mix of them (more)."""
    from hybridllm.evaluate.report import write_predictions
    from hybridllm.model.evaluation import evaluate_router
    from hybridllm.model.router import Router
    from hybridllm.tables.format import read_table

    from ._report import show_report, write_outputs

    if bootstrap < 100:
        _fail("--bootstrap must be at least 100 resamples")
    router = Router(router_dir)
    rows = read_table(table)
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    scorer = None
    if ray_opts is not None:
        from hybridllm.engine.jobs import router_scores_ray

        def scorer(prompts):
            return router_scores_ray(router_dir, prompts, ray_opts)[0]

    ev = evaluate_router(router, rows, scorer=scorer, n_boot=bootstrap)
    if ev.report["skipped"]:
        _progress(f"skipped {ev.report['skipped']} rows without quality for every one of {', '.join(router.models)}")
    title = f"{' → '.join(router.models)} on {table.name} ({len(ev.rows)} rows)"
    show_report(ev.report, title)
    if predictions:
        write_predictions(predictions, ev.rows, ev.scores)
        _progress(f"wrote {predictions}")
    write_outputs(ev.report, ev.rows, ev.scores, ev.band, title, json_out, plot, html_out, router.turns)


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
    from hybridllm.evaluate.report import write_predictions
    from hybridllm.model.crossval import cross_validate
    from hybridllm.model.fit import TrainOptions
    from hybridllm.model.head import HeadConfig
    from hybridllm.tables.format import read_table

    from ._report import show_report, write_outputs

    names, costs = _model_args(small, large, models, cost, models_file)
    opts = TrainOptions(
        small=small if names is None else None,
        large=large if names is None else None,
        models=names,
        costs=costs,
        labels=labels.value,
        encoder=encoder,
        seed=seed,
        head=HeadConfig(extra=_features(features), seed=seed, select=select.value, knn=knn),
    )
    res = cross_validate(read_table(table), opts, folds=folds, salt=salt, progress=_progress)
    rep = res.report
    if rep["skipped"]:
        _progress(f"skipped {rep['skipped']} rows without quality for every model")
    shown = " → ".join(names or [str(small), str(large)])
    title = f"{shown}: {folds}-fold cross-validation on {table.name} ({len(res.rows)} rows)"
    show_report(rep, title)
    if "fold_apgr_mean" in rep:
        fold_apgr = ", ".join(_fmt(p["apgr"]) for p in rep["per_fold"])
        out.print(
            f"Q_small {rep['Q_small']:.4f}   Q_large {rep['Q_large']:.4f}   per-fold APGR {fold_apgr} "
            f"(mean {_fmt(rep['fold_apgr_mean'])} ± {_fmt(rep['fold_apgr_std'])} sd)",
            highlight=False,
        )
    else:
        out.print("per-fold AIQ " + ", ".join(f"{p['aiq']:.4f}" for p in rep["per_fold"]), highlight=False)
    if predictions:
        write_predictions(predictions, res.rows, res.scores)
        _progress(f"wrote {predictions}")
    write_outputs(rep, res.rows, res.scores, res.band, title, json_out, plot, None)


@app.command()
def calibrate(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact")],
    table: Annotated[Path, typer.Argument(help="calibration table with both models' quality")],
    max_quality_drop: Annotated[float | None, typer.Option(help="target max quality drop, percent")] = None,
    cost_advantage: Annotated[
        float | None, typer.Option(help="target share of queries away from the reference model, percent")
    ] = None,
    budget: Annotated[float | None, typer.Option(help="target average cost, percent of always-best")] = None,
    save: Annotated[bool, typer.Option(help="store this table's calibration and the point as the default")] = False,
) -> None:
    """Find the threshold that meets a quality or cost target on a table."""
    from hybridllm.model.artifact import save_config
    from hybridllm.model.recalibrate import recalibrate
    from hybridllm.model.router import Router
    from hybridllm.tables.format import read_table

    if sum(x is not None for x in (max_quality_drop, cost_advantage, budget)) != 1:
        _fail("give exactly one of --max-quality-drop, --cost-advantage or --budget")
    router = Router(router_dir)
    point, cfg, n = recalibrate(router, read_table(table), max_quality_drop, cost_advantage, budget)
    out.print(
        json.dumps(
            {
                "n": n,
                "threshold": round(float(point["threshold"]), 6),
                "cost_advantage": round(float(point["cost_advantage"]), 2),
                "cost": round(float(point["cost"]), 2),
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
    cost_advantage: Annotated[
        float | None, typer.Option(help="share of queries away from the reference model, percent")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="raw score threshold in 0..1")] = None,
    budget: Annotated[
        float | None, typer.Option(help="average cost, percent of always-best (needs the models' costs)")
    ] = None,
) -> None:
    """Decide which model should answer one prompt; prints JSON."""
    from hybridllm.model.router import Router

    router = Router(router_dir)
    d = router.route(
        prompt, max_quality_drop=max_quality_drop, cost_advantage=cost_advantage, threshold=threshold, budget=budget
    )
    out.print_json(json.dumps(d.to_dict()))
