"""Router speed on this machine: one routing decision, batch throughput, and head-mode training time.

    python benchmarks/router_speed.py                       # both encoders, training on 10,000 rows
    python benchmarks/router_speed.py --encoders static     # just the default encoder

Prompts are real GSM8K test questions (median ~60 tokens). Latency is the full Router.route()
call (tokenise, embed, head, threshold) for one prompt; throughput is Router.score() on batches of 64.
Training time is `train_router` in head mode on the first N MMLU-Pro rows with an empty cache
directory (embedding, and for the static encoder its one-time distillation, included).
Writes benchmarks/results/router_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PAIR = ("Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1")


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


FLEET_LABELS = ("static, 7 models", "static, 11 models")


def _eleven(mmlu: list[dict], costs: dict[str, float]) -> tuple[list[dict], dict[str, float]]:
    """MMLU-Pro's 7 models and 4 synthetic ones (each a copy of a real model's outcomes with a fifth
    of them flipped, seeded, at a cost between its neighbours'): an 11-model fleet to time, since the
    shared data has no real one; a decision's cost depends on the fleet's size, not on who answers."""
    rng = np.random.default_rng(0)
    names = sorted(costs, key=costs.get)
    extra = {f"synthetic-{i}": names[i] for i in range(4)}
    rows = []
    for r in mmlu:
        q = dict(r["quality"])
        for fake, real in extra.items():
            q[fake] = [float(1.0 - v) if rng.uniform() < 0.2 else float(v) for v in r["quality"][real]]
        rows.append({**r, "quality": q})
    more = {fake: (costs[names[i]] + costs[names[i + 1]]) / 2 for i, fake in enumerate(extra)}
    return rows, {**costs, **more}


def fleet_speed(mmlu: list[dict], prompts: list[str], n_single: int, n_models: int = 7) -> dict:
    """One decision of a router over ``n_models`` models (7: the MMLU-Pro ones; 11: with 4 synthetic
    ones, :func:`_eleven`), one output per model cheaper than the reference, with the budget knob,
    routed the slowest way: predicted quality minus λ·cost over scores calibrated per model (maps
    fitted on 2,000 held-out rows). Trained briefly (3 epochs) on 9,000 rows: inference cost depends
    on the head's shape and on how many prompts its memory member keeps (about 7,200 here, as in
    nmodel_quality.py), not on training."""
    from nmodel_quality import COSTS as costs  # active parameters (billions), the same costs as there

    from hybridllm.model.fit import TrainOptions, fit_router
    from hybridllm.model.fleet_rows import quality_matrix
    from hybridllm.model.head import HeadConfig
    from hybridllm.model.router import Router
    from hybridllm.model.select import fit_policy

    rows, costs = _eleven(mmlu, costs) if n_models == 11 else (mmlu, costs)
    with tempfile.TemporaryDirectory() as tmp:
        # no logistic member: it only adds K columns to the folded first layer at inference, and fitting
        # one per model (seven C values each) would be most of this benchmark's time with 10 scored models
        head = HeadConfig(members=5, epochs=3, extra=["log_tokens"], linear=False)
        fitted = fit_router(rows[:9000], TrainOptions(models=list(costs), costs=costs, head=head))
        held = rows[9000:11000]
        fleet = Router.from_fitted(fitted).fleet
        q = quality_matrix(held, fleet.models)
        p_held = Router.from_fitted(fitted).head_scores([r["prompt"] for r in held])
        y = (q[:, : fleet.ref] >= q[:, fleet.ref : fleet.ref + 1]).astype(float)
        fitted.config["policy"] = fit_policy("value", "calibrated", p_held, y, q, fleet).to_dict()
        fitted.save(Path(tmp) / "r")
        router = Router(Path(tmp) / "r")
        for p in prompts[:20]:
            router.route(p, budget=50)
        lat = []
        for p in prompts[:n_single]:
            t = time.perf_counter()
            router.route(p, budget=50)
            lat.append(time.perf_counter() - t)
        batch = prompts[:1024]
        t = time.perf_counter()
        for i in range(0, len(batch), 64):
            router.score(batch[i : i + 64], batch_size=64)
        rate = len(batch) / (time.perf_counter() - t)
    return {
        "encoder": FLEET_LABELS[n_models == 11],
        "scored_models": len(router.config["candidates"]),
        "policy": f"{router.policy.rule}/{router.policy.kind}",
        "memory_prompts": 0 if router.head.knn_x is None else len(router.head.knn_x),
        "single_p50_ms": round(pct(lat, 50), 3),
        "single_p99_ms": round(pct(lat, 99), 3),
        "batch64_prompts_per_s": round(rate, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoders", default="static,minilm")
    ap.add_argument("--train-rows", type=int, default=10000)
    ap.add_argument("--train-encoders", default="static", help="encoders to time training for (cold cache)")
    ap.add_argument("--single", type=int, default=500)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "router_speed.json"))
    ap.add_argument(
        "--only-fleet",
        action="store_true",
        help="only the 7- and 11-model router rows (static encoder), merged into the existing JSON",
    )
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    prompts = [json.loads(line)["prompt"] for line in (SHARED / "gsm8k" / "test.jsonl").open()]
    mmlu = [json.loads(line) for line in (SHARED / "mmlu_pro.jsonl").open()]
    results = []
    if args.only_fleet:
        args.encoders = ""
        old = json.loads(Path(args.out).read_text())["results"] if Path(args.out).exists() else []
        results = [r for r in old if r["encoder"] not in FLEET_LABELS]
    for spec in [e for e in args.encoders.split(",") if e]:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["HYBRIDLLM_CACHE"] = (
                tmp
                if spec in args.train_encoders.split(",")
                else os.environ.get("HYBRIDLLM_BENCH_CACHE", str(Path.home() / ".cache" / "hybridllm"))
            )
            from hybridllm.features.featurize import make_encoder
            from hybridllm.model.fit import DEFAULT_EXTRA, TrainOptions, train_router
            from hybridllm.model.head import HeadConfig
            from hybridllm.model.router import Router

            entry: dict = {"encoder": spec}
            if spec in args.train_encoders.split(","):
                rows = mmlu[: args.train_rows]
                t0 = time.perf_counter()
                opts = TrainOptions(
                    small=PAIR[0], large=PAIR[1], encoder=spec, head=HeadConfig(extra=list(DEFAULT_EXTRA))
                )
                train_router(rows, opts, Path(tmp) / "router", show_progress=False)
                entry["train_rows"] = len(rows)
                entry["train_seconds_cold_cache"] = round(time.perf_counter() - t0, 1)
                router_dir = Path(tmp) / "router"
            else:
                rows = mmlu[:400]
                opts = TrainOptions(
                    small=PAIR[0],
                    large=PAIR[1],
                    encoder=spec,
                    head=HeadConfig(members=5, epochs=3, extra=list(DEFAULT_EXTRA)),
                )
                train_router(rows, opts, Path(tmp) / "router", show_progress=False)
                router_dir = Path(tmp) / "router"
            router = Router(router_dir)
            entry["memory_prompts"] = 0 if router.head.knn_x is None else len(router.head.knn_x)
            enc = make_encoder(spec)
            ntok = enc.token_lengths(prompts[:1000])
            entry["prompt_tokens_median"] = float(np.median(ntok))
            for p in prompts[:20]:
                router.route(p)
            lat = []
            for p in prompts[: args.single]:
                t = time.perf_counter()
                router.route(p)
                lat.append(time.perf_counter() - t)
            entry["single_p50_ms"] = round(pct(lat, 50), 3)
            entry["single_p99_ms"] = round(pct(lat, 99), 3)
            batch = prompts[:1024]
            router.score(batch[:64])
            t = time.perf_counter()
            for i in range(0, len(batch), 64):
                router.score(batch[i : i + 64], batch_size=64)
            entry["batch64_prompts_per_s"] = round(len(batch) / (time.perf_counter() - t), 1)
            results.append(entry)
            print(json.dumps(entry))
    for n_models in (7, 11):
        results.append(fleet_speed(mmlu, prompts, args.single, n_models))
        print(json.dumps(results[-1]))
    payload = {
        "benchmark": "router_speed",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "targets": {"single_p50_ms": 10, "batch64_prompts_per_s": 200, "train_seconds_10k": 300},
        "results": results,
        "median_single_ms_all": statistics.median(r["single_p50_ms"] for r in results),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\n{'encoder':16s} {'memory':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'batch64/s':>10s} {'train 10k s':>12s}")
    for r in results:
        print(
            f"{r['encoder']:16s} {r.get('memory_prompts', 0):7d} {r['single_p50_ms']:8.2f} {r['single_p99_ms']:8.2f} "
            f"{r['batch64_prompts_per_s']:10.1f} {r.get('train_seconds_cold_cache', '-')!s:>12s}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
