"""In-process engine vs Ray engine on the same jobs, with 1 and 2 workers, in one run.

    python benchmarks/engine_scaling.py            # ~3 minutes on 2 cores

Jobs:
- collect: 1,000 GSM8K prompts x 2 samples = 2,000 requests to an OpenAI-protocol server (a separate
  process on 127.0.0.1) that answers each after a fixed 50 ms. A worker keeps 8 requests in flight
  (in-process: one event loop with --concurrency 8 x workers; Ray: that many tasks, 8 each).
- embedding pass of `train` (head mode): 10,000 MMLU-Pro prompts through the default static encoder
  plus the log-token feature (in-process: `featurize`, no embedding cache; Ray: an actor pool).

Each Ray run writes to a fresh shard directory (no resume) on an already started local instance
(`ray.init(num_cpus=2)`; start-up not counted, actor start-up counted). Scaling = 2 workers / 1.
Then an estimate (labelled as one) for 100,000 prompts x 10 samples on 16 nodes, from the measured
per-worker rates. Writes benchmarks/results/engine_scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PER_WORKER = 8  # requests in flight per worker


def _serve(delay: float, q: mp.Queue) -> None:
    sys.path.insert(0, str(REPO))
    from tests.helpers.fake_openai import FakeOpenAI

    f = FakeOpenAI()
    f.delay = delay
    with f:
        q.put(f.url)
        while True:
            time.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--texts", type=int, default=10000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "engine_scaling.json"))
    args = ap.parse_args()
    os.environ["HYBRIDLLM_NO_PROGRESS"] = "1"
    import ray

    from hybridllm.backends import SamplingParams, make_backend
    from hybridllm.engine.jobs import RayOptions, collect_ray, featurize_ray
    from hybridllm.features.featurize import featurize, make_encoder
    from hybridllm.model.fit import DEFAULT_EXTRA
    from hybridllm.stages.collect import collect_async

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    server = ctx.Process(target=_serve, args=(args.latency, q), daemon=True)
    server.start()
    url = q.get(timeout=60)
    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "test.jsonl").open()][: args.prompts]
    texts = [json.loads(x)["prompt"] for x in (SHARED / "mmlu_pro.jsonl").open()][: args.texts]
    params = SamplingParams(temperature=0.7, max_tokens=16)
    n_req = len(rows) * args.samples
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: list[dict] = []

    def record(job: str, engine: str, workers: int, seconds: float, items: int, unit: str) -> None:
        r = {
            "job": job,
            "engine": engine,
            "workers": workers,
            "seconds": round(seconds, 2),
            "items": items,
            "per_s": round(items / seconds, 1),
            "unit": unit,
        }
        results.append(r)
        print(f"{job:9s} {engine:10s} workers={workers}  {seconds:7.2f} s  {r['per_s']:8.1f} {unit}/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for w in (1, 2):
            b = {"m": make_backend(f"fake@{url}", concurrency=PER_WORKER * w)}
            t0 = time.perf_counter()
            asyncio.run(collect_async(rows, b, t / f"local{w}.jsonl", args.samples, params, seed=0))
            record("collect", "in-process", w, time.perf_counter() - t0, n_req, "req")
        for w in (1, 2):
            opts = RayOptions(workers=w, shard_rows=50, work_dir=t / f"ray{w}", show_progress=False)
            t0 = time.perf_counter()
            out, _ = collect_ray(
                rows,
                {"m": f"fake@{url}"},
                t / f"ray{w}.jsonl",
                args.samples,
                params,
                0,
                opts,
                backend_kw={"concurrency": PER_WORKER},
            )
            record("collect", "ray", w, time.perf_counter() - t0, n_req, "req")
        assert len(out) == len(rows)
        enc = make_encoder("static")
        featurize(enc, texts[:100], DEFAULT_EXTRA)  # warm the tokenizer and table
        t0 = time.perf_counter()
        x_local = featurize(enc, texts, DEFAULT_EXTRA)
        record("embedding", "in-process", 1, time.perf_counter() - t0, len(texts), "text")
        for w in (1, 2):
            opts = RayOptions(workers=w, shard_rows=500, work_dir=t / f"emb{w}", show_progress=False)
            t0 = time.perf_counter()
            x, _ = featurize_ray(texts, "static", 256, DEFAULT_EXTRA, opts)
            record("embedding", "ray", w, time.perf_counter() - t0, len(texts), "text")
            assert abs(x - x_local).max() < 1e-5
    server.kill()
    ray.shutdown()

    def rate(job: str, engine: str, w: int) -> float:
        return next(r["per_s"] for r in results if r["job"] == job and r["engine"] == engine and r["workers"] == w)

    scaling = {
        "collect_in_process": round(rate("collect", "in-process", 2) / rate("collect", "in-process", 1), 2),
        "collect_ray": round(rate("collect", "ray", 2) / rate("collect", "ray", 1), 2),
        "embedding_ray": round(rate("embedding", "ray", 2) / rate("embedding", "ray", 1), 2),
    }
    # estimate: 16 nodes x 16 CPUs, one worker per CPU, linear in workers as measured here; the LLM
    # endpoints must sustain the request rate (at 50 ms each and 8 in flight per worker)
    per_worker_req = rate("collect", "ray", 2) / 2
    per_worker_emb = rate("embedding", "ray", 2) / 2
    workers = 16 * 16
    req = 100_000 * 10 * 2  # two models
    estimate = {
        "assumptions": "16 nodes x 16 CPUs, 1 worker per CPU, linear scaling, 50 ms per request, 8 in flight per "
        "worker, endpoints keep up; 2 models x 10 samples x 100,000 prompts",
        "requests": req,
        "collect_minutes": round(req / (per_worker_req * workers) / 60, 1),
        "embedding_pass_seconds": round(100_000 / (per_worker_emb * workers), 1),
    }
    print("scaling (2 workers / 1):", scaling)
    print("ESTIMATE, not measured:", estimate)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "machine": f"{os.cpu_count()} cores",
                "requests": n_req,
                "latency_s": args.latency,
                "per_worker_in_flight": PER_WORKER,
                "results": results,
                "scaling": scaling,
                "estimate_16_nodes": estimate,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
