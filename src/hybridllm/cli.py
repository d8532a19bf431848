"""The ``hybridllm`` command line. Every failure is one line on stderr and a
non-zero exit code; every success exits 0."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import HybridLLMError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Route LLM queries between a small and a large model (Hybrid LLM, ICLR 2024).",
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class Labels(str, Enum):
    det = "det"
    prob = "prob"
    trans = "trans"


class Mode(str, Enum):
    head = "head"
    finetune = "finetune"


class CLIError(HybridLLMError):
    """A user-facing failure with a one-line reason."""


def _fail(msg: str) -> None:
    raise CLIError(msg)


def _progress(msg: str) -> None:
    err.print(f"[dim]·[/dim] {msg}", highlight=False, soft_wrap=True)  # commands in it stay copyable


class Engine(str, Enum):
    local = "local"
    ray = "ray"


# the engine options every pipeline stage takes (collect, score, train, evaluate)
EngineOpt = Annotated[
    Engine, typer.Option(help="local: in this process; ray: Ray Data over a cluster", rich_help_panel="Engine")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: start a local one",
        rich_help_panel="Engine",
    ),
]
WorkersOpt = Annotated[int, typer.Option(help="Ray: actors / concurrent tasks per stage", rich_help_panel="Engine")]
ShardRowsOpt = Annotated[
    int, typer.Option(help="Ray: rows per shard (unit of work and of resume)", rich_help_panel="Engine")
]
WorkDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Ray: shard directory (shared storage on a cluster); default beside the output or in the cache",
        rich_help_panel="Engine",
    ),
]


def _ray_options(engine: Engine, address: str | None, workers: int, shard_rows: int, work_dir: Path | None) -> Any:
    if engine is Engine.local:
        if address is not None or work_dir is not None:
            _fail("--ray-address / --work-dir need --engine ray")
        return None
    from .engine import RayOptions

    if workers < 1 or shard_rows < 1:
        _fail("--workers and --shard-rows must be >= 1")
    return RayOptions(address=address, workers=workers, shard_rows=shard_rows, work_dir=work_dir)


def _load_router(router_dir: Path | None) -> Any:
    from .router import Router, default_router_dir

    if router_dir is None:
        try:
            router_dir = default_router_dir()
        except FileNotFoundError as exc:
            _fail(str(exc))
    return Router(router_dir)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summary_table(report: dict, title: str) -> Table:
    t = Table(title=title)
    t.add_column("router")
    t.add_column("APGR", justify="right")
    for ca in ("10", "20", "40", "60"):
        t.add_column(f"QD@CA{ca}%", justify="right")
    for qd in ("0", "0.5", "1", "2", "5"):
        t.add_column(f"CA@QD≤{qd}%", justify="right")
    for name in ("router", "random", "oracle"):
        r = report[name]
        t.add_row(
            name,
            _fmt(r["apgr"]),
            *[_fmt(r["quality_drop_at_cost_advantage"][k], 2) for k in ("10", "20", "40", "60")],
            *[_fmt(r["cost_advantage_at_quality_drop"][k], 1) for k in ("0", "0.5", "1", "2", "5")],
        )
    return t


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
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 1024,
    work_dir: WorkDirOpt = None,
) -> None:
    """Train a router on a routing table and save a calibrated artifact: between --small and
    --large, or among --models. With --engine ray the embedding pass (head mode) runs on Ray."""
    from .head import HeadConfig
    from .table import read_table
    from .train import DEFAULT_EXTRA, TrainOptions, train_router

    rows = read_table(table)
    vrows = read_table(validation) if validation else None
    head = HeadConfig(extra=list(DEFAULT_EXTRA), members=members, seed=seed)
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
        from .engine import featurize_ray

        def featurizer(texts):
            x, st = featurize_ray(texts, encoder, max_length, head.extra, ray_opts)
            _progress(f"ray embedding pass: {st.items} texts in {st.seconds:.1f} s ({st.resumed} shards resumed)")
            return x

    res = train_router(rows, opts, output, validation=vrows, progress=_progress, featurizer=featurizer)
    out.print(
        summary_table(res.config["validation_metrics"], f"validation ({res.config['data']['validation_rows']} rows)")
    )
    dop = res.config["operating_points"]["max_quality_drop"]["1"]
    out.print(
        f"default operating point (max 1% quality drop on validation): threshold {dop['threshold']:.4f}, "
        f"cost advantage {dop['cost_advantage']:.1f}%"
    )
    out.print(f"saved router to {output}")


def _train_fleet(rows, vrows, models, cost, models_file, labels, encoder, max_length, seed, head, output) -> None:
    from .fleet import FleetOptions, fit_fleet

    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        _fail(f"--models needs at least two distinct names, got {models!r}")
    costs: dict[str, float] | None = None
    if models_file is not None:
        from .registry import Registry

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
    opts = FleetOptions(names, costs, labels=labels, encoder=encoder, max_length=max_length, seed=seed, head=head)
    fitted = fit_fleet(rows, opts, validation=vrows, progress=_progress, show_progress=True)
    fitted.save(output)
    cfg = fitted.config
    fl = cfg["fleet"]
    t = Table(title=f"validation ({cfg['data']['validation_rows']} rows): operating points")
    t.add_column("max quality drop")
    t.add_column("threshold", justify="right")
    t.add_column("cost, % of always-best", justify="right")
    for m in fl["models"]:
        t.add_column(f"% {m}", justify="right")
    from .policy import resolve

    for qd in (0, 1, 2, 5, 10):
        thr, _ = resolve(cfg["calibration"], cfg["default_operating_point"], max_quality_drop=qd)
        p = next(x for x in cfg["calibration"] if x["threshold"] == thr)
        t.add_row(f"{qd}%", f"{thr:.4f}", f"{p['cost']:.1f}", *[f"{s:.1f}" for s in p["shares"]])
    out.print(t)
    costs_txt = ", ".join(f"{m} {c:g}" for m, c in zip(fl["models"], fl["costs"], strict=True))
    out.print(f"models by cost: {costs_txt}; reference (best on training rows): {fl['reference']}")
    out.print(f"saved router to {output}")


@app.command()
def evaluate(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact")],
    table: Annotated[Path, typer.Argument(help="table with both models' quality")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    predictions: Annotated[Path | None, typer.Option(help="write JSONL {id, score} per row")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of quality drop vs cost advantage")] = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 1024,
    work_dir: WorkDirOpt = None,
) -> None:
    """Evaluate a router on a table: router vs random vs oracle."""
    from .evaluate import evaluate_router, plot_curves, write_predictions
    from .metrics import expected_quality
    from .router import Router
    from .table import read_table

    router = Router(router_dir)
    rows = read_table(table)
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    scorer = None
    if ray_opts is not None:
        from .engine import router_scores_ray

        def scorer(prompts):
            return router_scores_ray(router_dir, prompts, ray_opts)[0]

    report, used, scores, skipped = evaluate_router(router, rows, scorer=scorer)
    if skipped:
        _progress(f"skipped {skipped} rows without quality for both {router.small} and {router.large}")
    out.print(summary_table(report, f"{router.small} → {router.large} on {table.name} ({report['n']} rows)"))
    out.print(f"Q_small {report['Q_small']:.4f}   Q_large {report['Q_large']:.4f}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    if predictions:
        write_predictions(predictions, used, scores)
    if plot:
        qs, ql = expected_quality(used, router.small, router.large)
        plot_curves(plot, scores, qs, ql, f"{router.small} → {router.large} ({report['n']} queries)")


@app.command()
def crossval(
    table: Annotated[Path, typer.Argument(help="routing table with both models' quality")],
    small: Annotated[str, typer.Option(help="name of the small model in the table's quality")],
    large: Annotated[str, typer.Option(help="name of the large model in the table's quality")],
    folds: Annotated[int, typer.Option(help="number of folds (by hashed id)")] = 5,
    labels: Annotated[
        Labels, typer.Option(help="label type: det, prob or trans (docs/method.md, Labels)")
    ] = Labels.trans,
    encoder: Annotated[str, typer.Option(help="as in train")] = "static",
    seed: Annotated[int, typer.Option(help="fold f trains with seed + f")] = 0,
    salt: Annotated[str, typer.Option(help="hash salt of the folds")] = "crossval",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    predictions: Annotated[Path | None, typer.Option(help="write JSONL {id, score} of out-of-fold scores")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG of quality drop vs cost advantage")] = None,
) -> None:
    """Cross-validate the training recipe: every row scored by a router trained on the other
    folds. For tables too small to spare a test split."""
    from .crossval import cross_validate
    from .evaluate import plot_curves, write_predictions
    from .head import HeadConfig
    from .metrics import expected_quality
    from .table import read_table
    from .train import DEFAULT_EXTRA, TrainOptions

    opts = TrainOptions(
        small=small,
        large=large,
        labels=labels.value,
        encoder=encoder,
        seed=seed,
        head=HeadConfig(extra=list(DEFAULT_EXTRA), seed=seed),
    )
    res = cross_validate(read_table(table), opts, folds=folds, salt=salt, progress=_progress)
    rep = res.report
    if rep["skipped"]:
        _progress(f"skipped {rep['skipped']} rows without quality for both {small} and {large}")
    out.print(summary_table(rep, f"{small} → {large}: {folds}-fold cross-validation on {table.name} ({rep['n']} rows)"))
    fold_apgr = ", ".join(_fmt(p["apgr"]) for p in rep["per_fold"])
    out.print(
        f"Q_small {rep['Q_small']:.4f}   Q_large {rep['Q_large']:.4f}   per-fold APGR {fold_apgr} "
        f"(mean {_fmt(rep['fold_apgr_mean'])} ± {_fmt(rep['fold_apgr_std'])} sd)",
        highlight=False,
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rep, indent=1) + "\n")
    if predictions:
        write_predictions(predictions, res.rows, res.scores)
    if plot:
        qs, ql = expected_quality(res.rows, small, large)
        plot_curves(plot, res.scores, qs, ql, f"{small} → {large} ({rep['n']} queries, {folds}-fold out-of-fold)")


@app.command()
def calibrate(
    router_dir: Annotated[Path, typer.Argument(metavar="DIR", help="router artifact")],
    table: Annotated[Path, typer.Argument(help="calibration table with both models' quality")],
    max_quality_drop: Annotated[float | None, typer.Option(help="target max quality drop, percent")] = None,
    cost_advantage: Annotated[float | None, typer.Option(help="target share of small-model queries, percent")] = None,
    save: Annotated[bool, typer.Option(help="store this table's calibration and the point as the default")] = False,
) -> None:
    """Find the threshold that meets a quality or cost target on a table."""
    from .artifact import save_config
    from .calibrate import (
        calibration_table,
        operating_points,
        threshold_for_cost_advantage,
        threshold_for_quality_drop,
    )
    from .metrics import expected_quality
    from .router import Router
    from .table import read_table, select_pair

    if (max_quality_drop is None) == (cost_advantage is None):
        _fail("give exactly one of --max-quality-drop or --cost-advantage")
    router = Router(router_dir)
    pair = select_pair(read_table(table), router.small, router.large)
    scores = router.score([r["prompt"] for r in pair.rows], show_progress=len(pair.rows) > 256)
    qs, ql = expected_quality(pair.rows, router.small, router.large)
    tab = calibration_table(scores, qs, ql)
    if max_quality_drop is not None:
        if max_quality_drop < 0:
            _fail(f"--max-quality-drop must be >= 0, got {max_quality_drop}")
        point = threshold_for_quality_drop(tab, max_quality_drop)
        default = {"kind": "max_quality_drop", "value": max_quality_drop}
    else:
        assert cost_advantage is not None
        if not 0 <= cost_advantage <= 100:
            _fail(f"--cost-advantage must be within 0..100, got {cost_advantage}")
        point = threshold_for_cost_advantage(tab, cost_advantage)
        default = {"kind": "cost_advantage", "value": cost_advantage}
    out.print(
        json.dumps(
            {
                "n": len(pair.rows),
                "threshold": point["threshold"],
                "cost_advantage": point["cost_advantage"],
                "quality_drop": point["quality_drop"],
            }
        )
    )
    if save:
        cfg = dict(router.config)
        cfg["calibration"] = tab
        cfg["operating_points"] = operating_points(tab)
        cfg["default_operating_point"] = default
        cfg["calibration_source"] = {"table": str(table), "rows": len(pair.rows)}
        save_config(router_dir, cfg)
        _progress(f"saved calibration ({len(pair.rows)} rows) and default point {default} to {router_dir}")


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
    from .router import Router

    router = Router(router_dir)
    d = router.route(
        prompt, max_quality_drop=max_quality_drop, cost_advantage=cost_advantage, threshold=threshold, budget=budget
    )
    out.print_json(json.dumps(d.to_dict()))


@app.command()
def stats(
    table: Annotated[Path, typer.Argument(help="routing table, or a collect journal (TABLE.journal.jsonl)")],
    small: Annotated[str | None, typer.Option(help="small model: adds the pair's oracle and random figures")] = None,
    large: Annotated[str | None, typer.Option(help="large model (with --small)")] = None,
    by: Annotated[str | None, typer.Option(help="break down by a dotted field (meta.category) or id-prefix")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
) -> None:
    """What a table holds: each model's quality, how often the small one is good enough, and what
    a perfect router could save (worth knowing before training one)."""
    from .collect import is_journal, read_journal
    from .stats import journal_stats, table_stats
    from .table import read_table

    if bool(small) != bool(large):
        _fail("--small and --large go together")
    if table.is_file() and is_journal(table):
        _journal_report(table, journal_stats(read_journal(table)[1]), json_out)
        return
    report = table_stats(read_table(table), small, large, by)
    t = Table(title=f"{table.name}: {report['n']} rows")
    for col in ("model", "rows", "samples", "quality", "per-query quality", "completion tokens"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for m, s in report["models"].items():
        t.add_row(
            m, str(s["rows"]), str(s["samples"]), _fmt(s["quality"]), _fmt(s["query_quality"]),
            _fmt(s["completion_tokens"], 1),
        )  # fmt: skip
    out.print(t)
    if not report["models"]:
        out.print("no quality values yet: run `hybridllm score` on it")
    p = report.get("pair")
    if p:
        o, r = p["oracle"], p["random"]
        out.print(
            f"{p['small']} → {p['large']} on {p['n']} rows ({p['skipped']} skipped): "
            f"Q_small {p['Q_small']:.4f}, Q_large {p['Q_large']:.4f}; small good enough "
            f"{p['small_good_enough_prob'] * 100:.1f} % (prob), {p['small_good_enough_det'] * 100:.1f} % (det), "
            f"strictly better {p['small_strictly_better'] * 100:.1f} %\n"
            f"cost advantage at quality drop ≤ 0 / 1 %: oracle {o['cost_advantage_at_quality_drop']['0']:.1f} / "
            f"{o['cost_advantage_at_quality_drop']['1']:.1f}, random {r['cost_advantage_at_quality_drop']['0']:.1f} / "
            f"{r['cost_advantage_at_quality_drop']['1']:.1f}",
            highlight=False,
        )
    if report.get("groups"):
        g = Table(title=f"by {by}")
        g.add_column(str(by))
        g.add_column("rows", justify="right")
        models = [p["small"], p["large"]] if p else list(report["models"])
        for m in models:
            g.add_column(m, justify="right")
        if p:
            g.add_column("oracle CA@QD≤0", justify="right")
        for name, e in report["groups"].items():
            cells = [_fmt(e["models"].get(m, {}).get("query_quality")) for m in models]
            if p:
                cells.append(_fmt(e.get("pair", {}).get("oracle_ca_at_qd0"), 1))
            g.add_row(name, str(e["n"]), *cells)
        out.print(g)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")


def _journal_report(path: Path, report: dict[str, dict[str, Any]], json_out: Path | None) -> None:
    """A collection still in its journal: how far each model got and how fast it decoded."""
    t = Table(title=f"{path.name}: collection in progress (journal)")
    for col in ("model", "samples", "completion tokens", "decode seconds", "tokens/s"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for m, s in report.items():
        t.add_row(m, str(s["samples"]), str(s["completion_tokens"]), f"{s['seconds']:.1f}", _fmt(s["tokens_per_s"], 1))
    out.print(t)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"journal": str(path), "models": report}, indent=1) + "\n")


@app.command()
def split(
    table: Annotated[Path, typer.Argument(help="routing table to split")],
    output_dir: Annotated[Path, typer.Option(help="directory for the parts (NAME.jsonl each)")],
    into: Annotated[str, typer.Option(help="NAME=FRACTION,... summing to 1")] = "train=0.6,val=0.2,test=0.2",
    salt: Annotated[str, typer.Option(help="hash salt; change it for a different deterministic split")] = "split",
) -> None:
    """Split a table deterministically by hashed id (stable under reordering and appends)."""
    from .table import read_table, split_rows, write_table

    names, fracs = [], []
    for part in into.split(","):
        name, sep, frac = part.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name or value <= 0:
            _fail(f"--into: expected NAME=FRACTION with FRACTION > 0, got {part!r}")
        names.append(name.strip())
        fracs.append(value)
    if abs(sum(fracs) - 1) > 1e-6:
        _fail(f"--into: fractions must sum to 1, got {sum(fracs):g}")
    rows = read_table(table)
    for name, part in zip(names, split_rows(rows, fracs, salt), strict=True):
        write_table(part, output_dir / f"{name}.jsonl")
        out.print(f"{output_dir / (name + '.jsonl')}: {len(part)} rows")


@app.command()
def collect(
    prompts: Annotated[Path, typer.Argument(help="table of prompts (.jsonl/.parquet; id + prompt per row)")],
    model: Annotated[list[str], typer.Option(help="NAME=MODEL@BASE_URL, once per model")],
    output: Annotated[Path, typer.Option(help="routing table to write (resumable)")],
    samples: Annotated[int, typer.Option(help="sampled responses per model and prompt")] = 3,
    temperature: Annotated[float, typer.Option()] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.95,
    max_tokens: Annotated[int, typer.Option()] = 512,
    seed: Annotated[int, typer.Option(help="base seed; each sample's seed derives from it")] = 0,
    concurrency: Annotated[int, typer.Option(help="parallel requests per backend")] = 8,
    timeout: Annotated[float, typer.Option(help="per-request timeout, seconds")] = 120.0,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VAR: model NAME's API key is in $VAR (sent to that model's endpoint only); repeat per "
            "model. A bare VAR only when one model is HTTP"
        ),
    ] = None,
    endpoint: Annotated[str, typer.Option(help="chat or completion")] = "chat",
    limit: Annotated[int | None, typer.Option(help="only the first N prompts")] = None,
    template: Annotated[
        str | None, typer.Option(help="wrap string prompts, e.g. 'Solve step by step; end with #### N.\\n\\n{prompt}'")
    ] = None,
    system: Annotated[
        str | None,
        typer.Option(help="system turn sent before every prompt (replaces the chat template's default one)"),
    ] = None,
    batch: Annotated[
        int, typer.Option(help="local models: samples decoded together (about 2x throughput at 6 on 2 cores)")
    ] = 1,
    local_threads: Annotated[
        int | None,
        typer.Option(
            help="local models: CPU threads each (default: all cores, models take turns); "
            "fewer let several models decode side by side"
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace a finished table at --output made with other settings")
    ] = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 64,
    work_dir: WorkDirOpt = None,
) -> None:
    """Sample responses from each model for every prompt; safe to kill and rerun (it resumes; a
    finished identical run is a no-op)."""
    import asyncio
    import time

    from tqdm.auto import tqdm

    from .backends import SamplingParams, make_backend
    from .collect import collect_async, format_prompt
    from .table import read_table

    if samples < 1:
        _fail(f"--samples must be >= 1, got {samples}")
    if batch < 1:
        _fail(f"--batch must be >= 1, got {batch}")
    if local_threads is not None and local_threads < 1:
        _fail(f"--local-threads must be >= 1, got {local_threads}")
    if endpoint not in ("chat", "completion"):
        _fail(f"--endpoint must be chat or completion, got {endpoint!r}")
    from .specs import key_envs, parse_spec

    backends, specs = {}, {}
    for item in model:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            _fail(f"--model: expected NAME=SPEC, got {item!r}")
        if not spec:
            _fail(f"--model {name}: empty SPEC (MODEL@BASE_URL, a local model name, or a .gguf path)")
        specs[name] = spec
    envs = key_envs(api_key_env or None, [n for n, sp in specs.items() if parse_spec(sp).is_http])
    for name, spec in specs.items():
        backends[name] = make_backend(
            spec,
            api_key_env=envs.get(name),
            local_threads=local_threads,
            concurrency=concurrency,
            timeout_s=timeout,
            endpoint=endpoint,
        )
    rows = read_table(prompts)[:limit]
    if template is not None and "{prompt}" not in template:
        _fail("--template must contain {prompt}")
    sent = [format_prompt(r, template, system) for r in rows]
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    if ray_opts is not None:
        from .engine import collect_ray

        per_task = max(1, -(-concurrency // ray_opts.workers))  # global limit = --concurrency
        _, rst = collect_ray(
            rows,
            specs,
            output,
            samples,
            params,
            seed,
            ray_opts,
            template=template,
            system=system,
            batch=batch,
            key_envs=envs,
            overwrite=overwrite,
            backend_kw={
                "concurrency": per_task,
                "timeout_s": timeout,
                "endpoint": endpoint,
            },
        )
        out.print(
            f"wrote {output}: {len(rows)} rows × {len(backends)} models × {samples} samples on Ray "
            f"({rst.shards - rst.resumed} shards now, {rst.resumed} resumed; "
            f"{rst.tokens / max(rst.seconds, 1e-9):.1f} tok/s)"
        )
        return
    total = len(rows) * len(backends) * samples
    disable = os.environ.get("HYBRIDLLM_NO_PROGRESS") == "1"
    bar = tqdm(total=total, desc="collect", unit="sample", disable=disable)
    t0 = time.perf_counter()
    tokens = [0]

    def on_start(stats) -> None:
        if stats.resumed:
            _progress(f"resuming from {output.name}.journal.jsonl ({stats.resumed} of {total} samples done)")
            bar.update(stats.resumed)

    def on_sample(rec: dict) -> None:
        tokens[0] += rec.get("completion_tokens") or 0
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens[0] / max(time.perf_counter() - t0, 1e-9):.1f}")

    _, stats = asyncio.run(
        collect_async(
            sent,
            backends,
            output,
            samples,
            params,
            seed,
            on_sample,
            keep=rows,
            batch=batch,
            on_start=on_start,
            overwrite=overwrite,
        )
    )
    bar.close()
    out.print(
        f"wrote {output}: {len(rows)} rows × {len(backends)} models × {samples} samples "
        f"({stats.requested} requested now, {stats.resumed} resumed)"
    )


@app.command()
def score(
    table: Annotated[Path, typer.Argument(help="table with responses")],
    metric: Annotated[
        str, typer.Option(help="exact-match, choice, rouge-l, embedding-similarity, bartscore, reward-model or judge")
    ],
    output: Annotated[Path, typer.Option(help="table to write with quality filled in")],
    judge: Annotated[str | None, typer.Option(help="judge backend SPEC for --metric judge")] = None,
    model_path: Annotated[
        str | None,
        typer.Option(help="local checkpoint for bartscore / reward-model (encoder for embedding-similarity)"),
    ] = None,
    api_key_env: Annotated[str | None, typer.Option(help="environment variable with the judge's API key")] = None,
    rubric: Annotated[
        Path | None,
        typer.Option(help="judge prompt file with {prompt}, {reference}, {response} (default: a 1-10 rubric)"),
    ] = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 256,
    work_dir: WorkDirOpt = None,
) -> None:
    """Turn responses into per-sample quality with a metric."""
    from .backends import make_backend
    from .score import check_rubric, score_rows
    from .table import read_table, write_table

    rubric_text = None
    if rubric is not None:
        if metric != "judge":
            _fail("--rubric is for --metric judge")
        try:
            rubric_text = check_rubric(rubric.read_text(encoding="utf-8"))
        except ValueError as exc:
            _fail(f"{rubric}: {exc}")
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    if ray_opts is not None:
        from .engine import score_ray

        rows, rst = score_ray(
            read_table(table),
            metric,
            ray_opts,
            judge=judge,
            model_path=model_path,
            judge_kw={"api_key_env": api_key_env},
            rubric=rubric_text,
        )
        _progress(f"scored on Ray: {rst.shards - rst.resumed} shards now, {rst.resumed} resumed")
    else:
        judge_backend = make_backend(judge, api_key_env=api_key_env) if judge else None
        rows = score_rows(read_table(table), metric, judge=judge_backend, model_path=model_path, rubric=rubric_text)
    write_table(rows, output)
    out.print(f"wrote {output}: {len(rows)} rows scored with {metric}")


@app.command()
def serve(
    router_dir: Annotated[
        Path | None, typer.Option("--router", help="router artifact (default: $HYBRIDLLM_ROUTER or the shipped one)")
    ] = None,
    small: Annotated[
        str | None, typer.Option(help="small upstream: MODEL@BASE_URL, a local model name or .gguf")
    ] = None,
    large: Annotated[
        str | None, typer.Option(help="large upstream: MODEL@BASE_URL, a local model name or .gguf")
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="routers over N models: NAME=SPEC, once per model")] = None,
    models_file: Annotated[
        Path | None, typer.Option(help="models.toml: each model's SPEC, key variable and price")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with any of the settings below (see docs/serve.md)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)", envvar="HYBRIDLLM_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8000)", envvar="HYBRIDLLM_PORT")] = None,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VAR: the upstream NAME (small, large or its model name) gets the key in $VAR; "
            "repeat per upstream. A bare VAR only when one upstream is HTTP"
        ),
    ] = None,
    serve_api_key_env: Annotated[
        str | None, typer.Option(help="env var with comma-separated keys clients must send (Bearer)")
    ] = None,
    allow_unauthenticated: Annotated[
        bool | None, typer.Option(help="allow a non-loopback --host with no client key")
    ] = None,
    public_metrics: Annotated[
        bool | None, typer.Option(help="serve /metrics and /ready without the client key")
    ] = None,
    fallback: Annotated[
        bool | None, typer.Option(help="retry a routed request on the other model when an upstream fails")
    ] = None,
    route_on: Annotated[
        str | None, typer.Option(help="what the router reads: 'all' user turns or the 'last' one")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="also log the HTTP client's per-request lines")] = False,
) -> None:
    """Serve an OpenAI-compatible endpoint that routes each request to the small or the large model."""
    from .serve import ServeConfig, create_app
    from .serve.runner import run

    cfg = ServeConfig.load(
        config,
        router=router_dir,
        small=small,
        large=large,
        model=model or None,
        models_file=models_file,
        host=host,
        port=port,
        api_key_env=api_key_env or None,
        serve_api_key_env=serve_api_key_env,
        allow_unauthenticated=allow_unauthenticated,
        public_metrics=public_metrics,
        fallback=fallback,
        route_on=route_on,
    )
    options = cfg.options()  # refuses an open non-loopback bind before anything loads
    router = _load_router(cfg.router)
    if cfg.route_on is not None:
        router.turns = cfg.route_on
    ups = cfg.upstreams(router, lambda spec, name: _progress(f"loading local model {spec} for {name}"))
    options.prices = cfg.prices([u.name for u in ups])
    app_ = create_app(router, *ups, options=options)

    def banner(bound: int) -> None:
        base = f"http://{cfg.host}:{bound}"
        _progress(f"routing {' | '.join(router.models)} on {base}/v1")
        _progress(f"upstreams: {cfg.describe_upstreams(ups)}")
        share = "hybrid-ca-<pct>, hybrid-t-<x>, small, large" if router.fleet is None else "hybrid-budget-<pct>"
        _progress(f"models: hybrid (= {cfg.default_point(router)}), hybrid-qd-<pct>, {share}, each model's name")
        _progress(
            f"try: curl -s {base}/v1/chat/completions -H 'content-type: application/json' "
            """-d '{"model": "hybrid", "messages": [{"role": "user", "content": "What is 2+3?"}]}' -i"""
        )

    run(app_, cfg, on_bound=banner, verbose=verbose)


@app.command()
def chat(
    question: Annotated[str | None, typer.Argument(help="the question; omit for an interactive session")] = None,
    router_dir: Annotated[
        Path | None, typer.Option("--router", help="router artifact (default: $HYBRIDLLM_ROUTER or the shipped one)")
    ] = None,
    small: Annotated[str | None, typer.Option(help="small model: local name, .gguf path or MODEL@BASE_URL")] = None,
    large: Annotated[str | None, typer.Option(help="large model: local name, .gguf path or MODEL@BASE_URL")] = None,
    max_quality_drop: Annotated[float | None, typer.Option(help="max quality drop, percent")] = None,
    cost_advantage: Annotated[float | None, typer.Option(help="share of small-model queries, percent")] = None,
    threshold: Annotated[float | None, typer.Option(help="raw score threshold in 0..1")] = None,
    max_tokens: Annotated[int, typer.Option()] = 512,
    temperature: Annotated[float, typer.Option()] = 0.7,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(help="small=VAR / large=VAR: that model's API key is in $VAR (bare VAR: the one HTTP model)"),
    ] = None,
) -> None:
    """Ask through the router: shows which model answered, its score and the threshold."""
    import asyncio

    from .backends import SamplingParams, make_backend
    from .specs import key_envs, parse_spec

    router = _load_router(router_dir)
    specs = {"small": small or router.small, "large": large or router.large}
    http = [k for k, v in specs.items() if parse_spec(v).is_http]
    envs = key_envs(api_key_env or None, http, {router.small: "small", router.large: "large"})
    backends = {k: make_backend(v, api_key_env=envs.get(k)) for k, v in specs.items()}
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens)

    async def answer(q: str) -> None:
        d = router.route(q, max_quality_drop=max_quality_drop, cost_advantage=cost_advantage, threshold=threshold)
        which = "small" if d.use_small else "large"
        err.print(
            f"[bold]{d.model}[/bold] answers (score {d.score:.3f} vs threshold {d.threshold:.3f}, {d.knob})",
            highlight=False,
        )
        async with backends[which] as b:
            s = await b.generate(q, params, on_text=lambda piece: print(piece, end="", flush=True))
        print(flush=True)
        tokens = s.completion_tokens or 0
        err.print(f"[dim]{tokens or '?'} tokens in {s.latency_s:.1f} s[/dim]", highlight=False)

    if question is not None:
        asyncio.run(answer(question))
        return
    err.print("interactive: one question per line, empty line or Ctrl-D to quit")
    while True:
        try:
            q = input("> ").strip()
        except EOFError:
            break
        if not q:
            break
        asyncio.run(answer(q))


def main() -> None:
    """Entry point: run the app, turning known errors into one line and exit code 1."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except (HybridLLMError, ValueError, OSError, RuntimeError) as exc:  # ours, bad values, files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # usage errors (typer's vendored click) arrive here in non-standalone mode
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        message = exc.format_message() if hasattr(exc, "format_message") else ""
        if message:
            print(f"error: {message}".replace("\n", " "), file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
