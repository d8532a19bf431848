"""The Ray engine: the same batch stage functions, fanned out over a Ray cluster with Ray Data.

Work is cut into shards of consecutive rows. Each shard is one Ray Data item; a worker runs the
pipeline's pure stage function on it (``sample_rows``, ``score_rows``, ``featurize``,
``Router.score``) and writes the result as one Parquet file, atomically (temp name + rename), into
a shard directory on storage every node can reach. The shard files are the durable store: a rerun
of a killed job reads the job file, skips every shard already written and sends only the rest, so
nothing is lost and nothing is done twice; the driver then joins the shards in order, which gives
exactly the table the in-process engine writes.

Stateful work (a local GGUF model, an encoder, a scoring model) runs in a fixed pool of actors, so
each worker loads its model once. HTTP backends run as plain tasks; the pool size times the
per-task concurrency is the global limit on requests in flight.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.backends import SamplingParams, make_backend
from hybridllm.errors import install_command
from hybridllm.features.featurize import featurize, make_encoder
from hybridllm.model.artifact import load_config
from hybridllm.model.router import load_router
from hybridllm.progress import progress_bar
from hybridllm.stages.collect import format_prompt, sample_rows
from hybridllm.stages.journal import collect_settings, finished_collection, mark_finished
from hybridllm.stages.score import score_rows
from hybridllm.tables.format import Row, read_table, write_table

from .shards import EngineError, ShardStore, absolute_if_path, default_work_dir, digest, rows_table, vectors_table


@dataclass
class RayOptions:
    """``address``: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); ``None`` starts
    a local instance. ``workers``: actors (or concurrent tasks) per stage. ``shard_rows``: rows per
    shard, the unit of work and of resume. ``work_dir``: where shards go (shared storage on a
    cluster). ``cpus_per_worker``: CPUs Ray reserves per worker (a local model uses them all)."""

    address: str | None = None
    workers: int = 2
    shard_rows: int = 64
    work_dir: Path | None = None
    cpus_per_worker: float = 1.0
    num_cpus: int | None = None  # only when starting a local instance
    show_progress: bool = True
    extra_init: dict[str, Any] = field(default_factory=dict)


def init_ray(options: RayOptions) -> Any:
    try:
        import ray
    except ImportError:
        raise EngineError(f"the Ray engine needs Ray Data: {install_command('ray')}") from None
    if not ray.is_initialized():
        kw: dict[str, Any] = {"address": options.address, "include_dashboard": False, "log_to_driver": False}
        if options.address is None and options.num_cpus is not None:
            kw["num_cpus"] = options.num_cpus
        # workers import hybridllm from the same environment; on a cluster, ship it with a runtime_env
        ray.init(**kw, **options.extra_init)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar reports rows and throughput, like the local engine
    ctx.print_on_execution_start = False
    return ray


# --------------------------------------------------------------------------------------------------
# workers: each takes a Ray Data batch of shard items ({"shard", "path", "payload"}) and returns a
# small summary per shard; the shard's result goes to its Parquet file.


class _ShardWorker:
    """The loop every worker shares: process each shard item of the batch, write its result
    atomically, report (shard, items, seconds, tokens). Subclasses implement ``process``."""

    def process(self, payload: Any) -> tuple[Any, int, int]:  # (pyarrow table, items, tokens)
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list] = {"shard": [], "n": [], "seconds": [], "tokens": []}
        for shard, path, payload in zip(batch["shard"], batch["path"], batch["payload"], strict=True):
            t0 = time.perf_counter()
            table, n, tokens = self.process(json.loads(payload))
            ShardStore.write(path, table)
            for k, v in zip(out, (shard, n, time.perf_counter() - t0, tokens), strict=True):
                out[k].append(v)
        return out


class CollectWorker(_ShardWorker):
    """Runs ``sample_rows`` on each shard with its own backends (a local model loads once here)."""

    def __init__(
        self,
        specs: dict[str, str],
        samples: int,
        params: dict,
        seed: int,
        batch: int,
        template: str | None,
        backend_kw: dict,
        system: str | None = None,
        key_envs: dict[str, str] | None = None,
    ) -> None:
        envs = key_envs or {}
        self.backends = {
            name: make_backend(spec, api_key_env=envs.get(name), **backend_kw) for name, spec in specs.items()
        }
        self.samples, self.seed, self.batch = samples, seed, batch
        self.template, self.system = template, system
        self.params = SamplingParams(**params)

    def process(self, keep: list[Row]) -> tuple[Any, int, int]:
        import asyncio

        sent = [format_prompt(r, self.template, self.system) for r in keep]
        rows, recs = asyncio.run(
            sample_rows(sent, self.backends, self.samples, self.params, self.seed, keep=keep, batch=self.batch)
        )
        return rows_table(rows), len(recs), sum(r["completion_tokens"] or 0 for r in recs)


class ScoreWorker(_ShardWorker):
    """Runs ``score_rows`` on each shard; a scoring model (BART, reward model, encoder) stays loaded
    in the actor between shards."""

    def __init__(
        self, metric: str, judge: str | None, model_path: str | None, judge_kw: dict, rubric: str | None = None
    ) -> None:
        self.metric, self.model_path, self.rubric = metric, model_path, rubric
        self.judge = make_backend(judge, **judge_kw) if judge else None

    def process(self, rows: list[Row]) -> tuple[Any, int, int]:
        rows = score_rows(rows, self.metric, judge=self.judge, model_path=self.model_path, rubric=self.rubric)
        return rows_table(rows), sum(len(v) for r in rows for v in r.get("responses", {}).values()), 0


class EmbedWorker(_ShardWorker):
    """The head-mode embedding pass (``featurize``) with an encoder loaded once per actor."""

    def __init__(self, encoder: str | None, max_length: int, extra: list[str]) -> None:
        self.encoder = make_encoder(encoder, max_length=max_length)
        self.extra = extra

    def process(self, texts: list[str]) -> tuple[Any, int, int]:
        return vectors_table(featurize(self.encoder, texts, self.extra)), len(texts), 0


class RouterWorker(_ShardWorker):
    """Router scores for evaluate, the artifact loaded once per actor."""

    def __init__(self, router_dir: str) -> None:
        self.router = load_router(router_dir)

    def process(self, prompts: list[Any]) -> tuple[Any, int, int]:
        # one row per prompt: one column per scored model (a pair: one)
        scores = np.asarray(self.router.score(prompts), dtype=np.float32).reshape(len(prompts), -1)
        return vectors_table(scores), len(prompts), 0


# --------------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    shards: int = 0
    resumed: int = 0
    items: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def _root_cause(exc: BaseException) -> str:
    """The last ``SomeError: message`` line of a Ray worker's traceback (the real failure), else the
    exception's last line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", ln)]
    return (causes or lines or [type(exc).__name__])[-1][:300]


def run_shards(
    items: Sequence[Any],
    worker: type,
    ctor_kwargs: dict[str, Any],
    store: ShardStore,
    options: RayOptions,
    desc: str,
    actors: bool = True,
    unit: str = "row",
    count: Callable[[Sequence[Any]], int] = len,
) -> RunStats:
    """Send every shard not yet in ``store`` through ``worker`` on Ray Data; return when all are
    written. ``actors``: a fixed pool of ``options.workers`` actors; otherwise plain tasks, at most
    ``options.workers`` at a time."""
    init_ray(options)
    import ray.data

    shards = [list(items[i : i + options.shard_rows]) for i in range(0, len(items), options.shard_rows)]
    done = store.done()
    todo = [i for i in range(len(shards)) if i not in done]
    stats = RunStats(shards=len(shards), resumed=len(shards) - len(todo))
    if not todo:
        return stats
    ds = ray.data.from_items(
        [{"shard": i, "path": str(store.path(i)), "payload": json.dumps(shards[i], ensure_ascii=False)} for i in todo],
        override_num_blocks=len(todo),
    )
    kw: dict[str, Any] = {"batch_size": 1, "num_cpus": options.cpus_per_worker}
    size = min(options.workers, len(todo))  # Ray warns about a pool larger than its input
    if actors:
        pool = ray.data.ActorPoolStrategy(size=size)
        out = ds.map_batches(worker, fn_constructor_kwargs=ctor_kwargs, compute=pool, **kw)
    else:
        inst: dict[str, Any] = {}

        def task(batch: dict[str, Any]) -> dict[str, Any]:
            if "w" not in inst:  # one instance per task process, kept for the next shard it gets
                inst["w"] = worker(**ctor_kwargs)
            return inst["w"](batch)

        out = ds.map_batches(task, compute=ray.data.TaskPoolStrategy(size=size), **kw)
    total = sum(count(shards[i]) for i in todo)
    t0 = time.perf_counter()
    finished = stats.resumed
    with progress_bar(total, f"{desc} [ray]", unit, enabled=options.show_progress) as bar:
        try:
            for rec in out.iter_rows():
                n = count(shards[int(rec["shard"])])
                stats.items += n
                stats.tokens += int(rec["tokens"])
                finished += 1
                bar.update(n)
                bar.set_postfix(shards=f"{finished}/{len(shards)}")
        except Exception as exc:
            if not type(exc).__module__.startswith("ray"):
                raise
            raise EngineError(f"{desc} failed on a Ray worker: {_root_cause(exc)}") from None
    stats.seconds = time.perf_counter() - t0
    missing = [i for i in range(len(shards)) if not store.path(i).exists()]
    if missing:
        raise EngineError(f"{store.dir}: shards {missing[:5]} missing after the run")
    return stats


# --------------------------------------------------------------------------------------------------
# the four pipeline stages on Ray


def collect_ray(
    rows: Sequence[Row],
    specs: dict[str, str],
    output: Path,
    samples: int,
    params: Any,
    seed: int,
    options: RayOptions,
    template: str | None = None,
    batch: int = 1,
    backend_kw: dict[str, Any] | None = None,
    system: str | None = None,
    key_envs: dict[str, str] | None = None,
    overwrite: bool = False,
) -> tuple[list[Row], RunStats]:
    """``collect`` with shards of prompts as the unit of work; local models in actors, HTTP
    backends in tasks (``backend_kw['concurrency']`` requests each)."""
    backend_kw = dict(backend_kw or {})
    specs = {name: absolute_if_path(spec) or spec for name, spec in specs.items()}
    envs = key_envs or {}
    probe = {name: make_backend(spec, api_key_env=envs.get(name), **backend_kw) for name, spec in specs.items()}
    sent = [format_prompt(r, template, system) for r in rows]
    table_settings = collect_settings(sent, probe, samples, params, seed)
    work = options.work_dir or output.with_name(output.name + ".shards")
    if finished_collection(output, table_settings, overwrite, work=work):
        return read_table(output), RunStats()
    settings = {"stage": "collect", **table_settings, "batch": batch, "shard_rows": options.shard_rows}
    store = ShardStore(work, settings)
    local = any(b.in_process for b in probe.values())
    if local:  # each actor's llama.cpp gets the CPUs Ray reserved for it, not every core of the node
        backend_kw["local_threads"] = max(1, int(options.cpus_per_worker))
    stats = run_shards(
        list(rows),
        CollectWorker,
        {
            "specs": specs,
            "samples": samples,
            "params": {k: v for k, v in params.__dict__.items() if k != "seed"},
            "seed": seed,
            "batch": batch,
            "template": template,
            "system": system,
            "backend_kw": backend_kw,
            "key_envs": envs,
        },
        store,
        options,
        "collect",
        actors=local,
        unit="prompt",
    )
    out = store.rows(stats.shards)
    write_table(out, output)
    mark_finished(output, table_settings)
    return out, stats


def score_ray(
    rows: Sequence[Row],
    metric: str,
    options: RayOptions,
    judge: str | None = None,
    model_path: str | None = None,
    judge_kw: dict[str, Any] | None = None,
    rubric: str | None = None,
) -> tuple[list[Row], RunStats]:
    model_path = absolute_if_path(model_path)
    settings = {
        "stage": "score",
        "metric": metric,
        "judge": judge,
        "rubric": rubric,
        "model_path": model_path,
        "rows": digest(list(rows)),
        "shard_rows": options.shard_rows,
    }
    store = ShardStore(options.work_dir or default_work_dir("score", settings), settings)
    stateful = metric in ("bartscore", "reward-model", "embedding-similarity")
    stats = run_shards(
        list(rows),
        ScoreWorker,
        {"metric": metric, "judge": judge, "model_path": model_path, "judge_kw": judge_kw or {}, "rubric": rubric},
        store,
        options,
        f"score {metric}",
        actors=stateful,
    )
    return store.rows(stats.shards), stats


def featurize_ray(
    texts: Sequence[str], encoder: str | None, max_length: int, extra: Sequence[str], options: RayOptions
) -> tuple[np.ndarray, RunStats]:
    """The head-mode embedding pass: rows of ``featurize(encoder, texts, extra)``, in order."""
    encoder = absolute_if_path(encoder)
    fp = make_encoder(encoder, max_length=max_length).fingerprint
    settings = {
        "stage": "featurize",
        "encoder": fp,
        "extra": list(extra),
        "texts": digest(list(texts)),
        "shard_rows": options.shard_rows,
    }
    store = ShardStore(options.work_dir or default_work_dir("featurize", settings), settings)
    stats = run_shards(
        list(texts),
        EmbedWorker,
        {"encoder": encoder, "max_length": max_length, "extra": list(extra)},
        store,
        options,
        "embedding",
        unit="text",
    )
    return store.vectors(stats.shards), stats


def router_scores_ray(
    router_dir: str | Path, prompts: Sequence[Any], options: RayOptions
) -> tuple[np.ndarray, RunStats]:
    router_dir = Path(router_dir).expanduser().resolve()  # workers run elsewhere
    cfg = load_config(router_dir)
    settings = {
        "stage": "route",
        "router": digest(cfg),
        "prompts": digest(list(prompts)),
        "shard_rows": options.shard_rows,
    }
    store = ShardStore(options.work_dir or default_work_dir("route", settings), settings)
    stats = run_shards(
        list(prompts), RouterWorker, {"router_dir": str(router_dir)}, store, options, "routing", unit="prompt"
    )
    scores = store.vectors(stats.shards)
    return (scores[:, 0] if scores.shape[1] == 1 else scores), stats  # the shape Router.score gives
