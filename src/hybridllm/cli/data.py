"""Commands for tables: collect, score, stats, split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import (
    Endpoint,
    Engine,
    EngineOpt,
    Interrupted,
    Metric,
    RayAddressOpt,
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


@app.command()
def collect(
    prompts: Annotated[Path, typer.Argument(help="table of prompts (.jsonl/.parquet; id + prompt per row)")],
    model: Annotated[list[str], typer.Option(help="NAME=SPEC once per model (or just NAME with --models-file)")],
    output: Annotated[Path, typer.Option(help="routing table to write (resumable)")],
    models_file: Annotated[
        Path | None, typer.Option(help="models.toml: SPEC and key variable of each --model NAME")
    ] = None,
    samples: Annotated[int, typer.Option(help="sampled responses per model and prompt")] = 3,
    temperature: Annotated[float, typer.Option(help="sampling temperature; > 0 for several distinct samples")] = 0.7,
    top_p: Annotated[float, typer.Option(help="nucleus sampling: keep the smallest token set with this mass")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="most tokens per response")] = 512,
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
    endpoint: Annotated[
        Endpoint, typer.Option(help="chat (messages) or completion (raw prompt, for base models)")
    ] = Endpoint.chat,
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
    from hybridllm.backends import SamplingParams, make_backend
    from hybridllm.stages.collect import format_prompt
    from hybridllm.tables.format import read_table

    if samples < 1:
        _fail(f"--samples must be >= 1, got {samples}")
    if batch < 1:
        _fail(f"--batch must be >= 1, got {batch}")
    if local_threads is not None and local_threads < 1:
        _fail(f"--local-threads must be >= 1, got {local_threads}")
    specs, envs = _model_specs(model, models_file, api_key_env)
    kw: dict[str, Any] = {"concurrency": concurrency, "timeout_s": timeout, "endpoint": endpoint.value}
    backends = {
        name: make_backend(spec, api_key_env=envs.get(name), local_threads=local_threads, **kw)
        for name, spec in specs.items()
    }
    rows = read_table(prompts)[:limit]
    if template is not None and "{prompt}" not in template:
        _fail("--template must contain {prompt}")
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    if ray_opts is not None:
        from hybridllm.engine.jobs import collect_ray

        per_task = max(1, -(-concurrency // ray_opts.workers))  # global limit = --concurrency
        _, rst = collect_ray(
            rows, specs, output, samples, params, seed, ray_opts, template=template, system=system, batch=batch,
            key_envs=envs, overwrite=overwrite, backend_kw={**kw, "concurrency": per_task},
        )  # fmt: skip
        rate = f"{rst.tokens / max(rst.seconds, 1e-9):.1f} tok/s"
        shards = f"{rst.shards - rst.resumed} shards now, {rst.resumed} resumed"
        done = f"{len(rows)} rows × {len(backends)} models × {samples} samples"
        out.print(f"wrote {output}: {done} on Ray ({shards}; {rate})")
        return
    sent = [format_prompt(r, template, system) for r in rows]
    stats = _collect_here(sent, rows, backends, output, samples, params, seed, batch, overwrite)
    out.print(
        f"wrote {output}: {len(rows)} rows × {len(backends)} models × {samples} samples "
        f"({stats.requested} requested now, {stats.resumed} resumed)"
    )


def _model_specs(
    model: list[str], models_file: Path | None, api_key_env: list[str] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """(model name → SPEC, model name → its key variable) from --model items and the models file."""
    from hybridllm.tables.registry import Registry
    from hybridllm.tables.specs import key_envs, parse_spec

    registry = Registry.load(models_file) if models_file is not None else None
    specs = {}
    for item in model:
        name, sep, spec = item.partition("=")
        if not sep and registry is not None and name in registry.models and registry.models[name].spec:
            spec, sep = registry.models[name].spec or "", "="
        if not sep or not name:
            _fail(f"--model: expected NAME=SPEC (or a NAME with a spec in --models-file), got {item!r}")
        if not spec:
            _fail(f"--model {name}: empty SPEC (MODEL@BASE_URL, a local model name, or a .gguf path)")
        specs[name] = spec
    http = [n for n, sp in specs.items() if parse_spec(sp).is_http]
    # each model's own key variable from the file; flags win
    defaults = {n: e.api_key_env for n, e in registry.models.items()} if registry is not None else None
    return specs, key_envs(api_key_env or None, http, defaults=defaults)


def _collect_here(sent, rows, backends, output, samples, params, seed, batch, overwrite) -> Any:
    """The local engine's collection, with a progress bar of samples and tokens per second."""
    import asyncio
    import time

    from hybridllm.progress import progress_bar
    from hybridllm.stages.collect import collect_async

    total = len(rows) * len(backends) * samples
    bar = progress_bar(total, "collect", "sample")
    t0 = time.perf_counter()
    tokens = [0]

    def on_start(stats) -> None:
        if stats.resumed:
            _progress(f"resuming from {output.name}.journal.jsonl ({stats.resumed} of {total} samples done)")
            bar.update(stats.resumed)

    def on_sample(rec: dict) -> None:
        tokens[0] += rec.get("completion_tokens") or 0
        bar.update(1)
        bar.set_postfix({"tok/s": f"{tokens[0] / max(time.perf_counter() - t0, 1e-9):.1f}"})

    kw = {"keep": rows, "batch": batch, "on_start": on_start, "overwrite": overwrite}
    try:
        _, stats = asyncio.run(collect_async(sent, backends, output, samples, params, seed, on_sample, **kw))
    except KeyboardInterrupt:  # asyncio.run cancelled the run: every finished sample is in the journal
        bar.close()
        from hybridllm.stages.journal import stopped_at

        raise Interrupted(stopped_at(output, len(rows), total)) from None
    bar.close()
    return stats


@app.command()
def score(
    table: Annotated[Path, typer.Argument(help="table with responses")],
    metric: Annotated[
        Metric,
        typer.Option(
            help="exact-match (final number), choice (option letter), rouge-l, embedding-similarity or bartscore "
            "(against the reference), reward-model or judge (a grader)"
        ),
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
        typer.Option(
            help="judge rubric file: {response} and optional {prompt}, {reference} (filled with delimited data "
            "blocks; the verdict format is added for you; default: a 1-10 rubric)"
        ),
    ] = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    shard_rows: ShardRowsOpt = 256,
    work_dir: WorkDirOpt = None,
) -> None:
    """Turn responses into per-sample quality with a metric."""
    from hybridllm.backends import make_backend
    from hybridllm.stages.score import check_rubric, score_rows, unscored
    from hybridllm.tables.format import read_table, write_table

    metric_name = metric.value
    rubric_text = None
    if rubric is not None:
        if metric_name != "judge":
            _fail("--rubric is for --metric judge")
        try:
            rubric_text = check_rubric(rubric.read_text(encoding="utf-8"))
        except ValueError as exc:
            _fail(f"{rubric}: {exc}")
    ray_opts = _ray_options(engine, ray_address, workers, shard_rows, work_dir)
    if ray_opts is not None:
        from hybridllm.engine.jobs import score_ray

        rows, rst = score_ray(
            read_table(table),
            metric_name,
            ray_opts,
            judge=judge,
            model_path=model_path,
            judge_kw={"api_key_env": api_key_env},
            rubric=rubric_text,
        )
        _progress(f"scored on Ray: {rst.shards - rst.resumed} shards now, {rst.resumed} resumed")
    else:
        judge_backend = make_backend(judge, api_key_env=api_key_env) if judge else None
        rows = score_rows(
            read_table(table), metric_name, judge=judge_backend, model_path=model_path, rubric=rubric_text
        )
    write_table(rows, output)
    out.print(f"wrote {output}: {len(rows)} rows scored with {metric_name}")
    failed = unscored(rows) if metric_name == "judge" else 0
    if failed:  # each one was logged with its row and the judge's reply
        _progress(f"warning: {failed} row/model slots got no judge verdict (judge errors); their quality is left out")


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
    from hybridllm.evaluate.stats import journal_stats, table_stats
    from hybridllm.stages.journal import is_journal, read_journal
    from hybridllm.tables.format import read_table

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
    from hybridllm.tables.format import read_table, split_rows, write_table

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
    table_rows = read_table(table)
    for name, rows in zip(names, split_rows(table_rows, fracs, salt), strict=True):
        write_table(rows, output_dir / f"{name}.jsonl")
        out.print(f"{output_dir / (name + '.jsonl')}: {len(rows)} rows")


outcomes_app = typer.Typer(help="Served traffic as training data: the outcomes log of `serve --outcomes`.")
app.add_typer(outcomes_app, name="outcomes")


@outcomes_app.command("export")
def outcomes_export(
    log: Annotated[Path, typer.Argument(help="the outcomes log a server wrote (serve --outcomes PATH)")],
    output: Annotated[Path, typer.Option(help="routing table to write (.jsonl)")],
    models: Annotated[str | None, typer.Option(help="keep only these models' qualities: a,b,c")] = None,
) -> None:
    """Write a routing table from the shadow pairs and feedback of a served run, for `train` and
    `crossval` (rows only where the server logged prompts)."""
    from hybridllm.stages.outcomes import outcomes_table, read_outcomes
    from hybridllm.tables.format import TableError, write_table

    try:
        rows, left = outcomes_table(read_outcomes(log), models.split(",") if models else None)
    except TableError as exc:
        _fail(str(exc))
    out_by = ", ".join(f"{n} {why}" for why, n in left.items() if n) or "none"
    if not rows:
        _fail(f"{log}: no request with a prompt a table can hold (left out: {out_by}; no_prompt: serve with "
              "--log-prompts to keep prompts)")  # fmt: skip
    write_table(rows, output)
    both = sum(1 for r in rows if len(r["quality"]) >= 2)
    _progress(f"wrote {len(rows)} rows to {output} ({both} with two models' qualities from shadow pairs; "
              f"left out: {out_by})")  # fmt: skip
