"""Does retraining on served traffic make the router better, and does the gate keep it from worse?

For each pair or fleet, a table is split by hashed id into a held-out slice (never served, never trained on:
where every router is scored), a small starting slice (the router a deployment starts with is
trained on it) and the stream. The stream is served through the real proxy (``hybridllm serve``'s
app on uvicorn, 127.0.0.1) in front of OpenAI-protocol upstreams that answer from the table, with
shadow checks at ``--rate`` scored by a stand-in judge that rates an answer from the table's score
of that sample, and the outcomes log on. At 1,000, 2,000 and 5,000 shadow pairs the log so far is
handed to :func:`hybridllm.model.retrain.retrain` with the current champion: a challenger is
trained on the pairs, the gate compares the two on the log's most recent pairs, and a challenger
that passes becomes the champion of the next step.

Reported on the held-out slice: APGR (a pair) or AIQ (a fleet) of the starting router, of each
step's challenger and of the champion after each step, and of a router trained on the whole stream's
table rows (the ceiling), with paired bootstrap 95 % intervals of each minus the starting router;
how many promotions the gate made and whether any made the held-out figure worse.

Scenarios: ``mmlu-llama`` (Llama 3.1 8B → 70B on the MMLU-Pro table), ``default-pair`` (the shipped
pair's table) and ``mmlu-3`` (the three MMLU-Pro models of benchmarks/drift.py, costs 1 : 4 : 10),
served with ``shadow_sides="all"``: each drawn request asks both models that did not answer, so
every shadow pair is a complete row (docs/retrain.md#fleets).

    python benchmarks/retrain_loop.py            # writes benchmarks/results/retrain_loop.json
    python benchmarks/retrain_loop.py --quick    # 200 / 500 / 1,000 pairs, one pair
    python benchmarks/retrain_loop.py --quick --only mmlu-3 --out /tmp/rl_fleet_quick.json
    python benchmarks/retrain_loop.py --only mmlu-3   # reruns one scenario, keeps the file's others

Each scenario records the commit it ran at and how long it took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from hybridllm import TrainOptions, train_router
from hybridllm.backends import make_backend
from hybridllm.evaluate.bootstrap import interval95
from hybridllm.evaluate.fleet import area, curve_points
from hybridllm.evaluate.metrics import apgr, quality_curve
from hybridllm.model.fleet_rows import quality_matrix
from hybridllm.model.retrain import RetrainOptions, retrain
from hybridllm.model.router import Router
from hybridllm.serve import ServeOptions, create_app
from hybridllm.stages.outcomes import OutcomesLog, read_outcomes
from hybridllm.tables.format import read_table, split_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift import TableLLM, free_port  # the table-backed upstream and judge

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: name -> (table, models in cost order, their costs: None for a pair)
SCENARIOS: dict[str, tuple[Path, list[str], list[float] | None]] = {
    "mmlu-llama": (SHARED / "mmlu_pro.jsonl", ["Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"], None),
    "default-pair": (REPO / "data" / "default-pair" / "table.jsonl", ["qwen2.5-0.5b", "qwen2.5-1.5b"], None),
    "mmlu-3": (
        SHARED / "mmlu_pro.jsonl",
        ["Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1", "Meta-Llama-3_1-70B-Instruct"],
        [1.0, 4.0, 10.0],
    ),
}


def pair_apgr(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> float:
    v = apgr(quality_curve(scores, qs, ql), float(qs.mean()), float(ql.mean()))
    return float("nan") if v is None else float(v)


def figure(scores: np.ndarray, quality: np.ndarray, fleet: Any) -> float:
    """APGR (a pair) or AIQ (a fleet: the area under the quality-cost curve over the cost range) of
    a router's ``scores`` on rows of ``quality`` [n, M]."""
    if len(fleet.models) == 2:
        return pair_apgr(np.asarray(scores).reshape(-1), quality[:, 0], quality[:, fleet.ref])
    cx, cy = curve_points(np.asarray(scores).reshape(len(quality), -1), quality, fleet)
    return float(area(cx, cy, fleet.costs[0] / fleet.costs[fleet.ref] * 100, 100.0))


def serve_until(router_dir: Path, llm: TableLLM, models: list[str], prompts: list[str], pairs_wanted: int,
                log: Path, rate: float, seed: int) -> dict[str, Any]:  # fmt: skip
    """Serve prompts (drawn at random from ``prompts``) through the proxy until the outcomes log has
    ``pairs_wanted`` shadow pairs (a fleet's with every model asked: ``shadow_sides="all"``); returns
    the request count, the shadow calls /metrics counted and the time taken."""
    ups = [make_backend(f"{m}@http://127.0.0.1:{llm.port}/v1", name=m, concurrency=None) for m in models]
    judge = make_backend(f"judge@http://127.0.0.1:{llm.port}/v1", name="judge", concurrency=None)
    opts = ServeOptions(shadow_rate=rate, outcomes=log, log_prompts=True, batch_window_s=0.0,
                        shadow_per_minute=1_000_000, shadow_concurrency=16,
                        shadow_sides="all" if len(models) > 2 else None)  # fmt: skip
    app = create_app(Router(router_dir), *ups, options=opts, judge=judge)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    rng = random.Random(seed)
    sent, retried, shadow_calls, t0 = 0, 0, 0.0, time.time()

    async def drive() -> None:
        nonlocal sent, retried, shadow_calls
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            sem = asyncio.Semaphore(32)

            async def one(text: str) -> None:
                async with sem:
                    await send(text)

            async def send(text: str) -> None:
                nonlocal retried
                body = {"model": "hybrid", "messages": [{"role": "user", "content": text}]}
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                except httpx.TransportError:  # a kept-alive connection the server closed as it was reused
                    retried += 1
                    r = await client.post("/v1/chat/completions", json=body)
                r.raise_for_status()

            while count_pairs(log) < pairs_wanted:
                await asyncio.gather(*(one(rng.choice(prompts)) for _ in range(200)))
                sent += 200
                await asyncio.sleep(0.05)  # the shadow calls of the last batch
            text = (await client.get("/metrics")).text
            shadow_calls = sum(
                float(ln.split()[-1]) for ln in text.splitlines()
                if ln.startswith("hybridllm_shadow_calls_total{") and 'outcome="scored"' in ln
            )  # fmt: skip

    asyncio.run(drive())
    server.should_exit = True
    time.sleep(0.5)
    return {"requests": sent, "shadow_calls": int(shadow_calls), "retried_connections": retried,
            "seconds": round(time.time() - t0, 1)}  # fmt: skip


def count_pairs(log: Path) -> int:
    if not log.exists():
        return 0
    with log.open("rb") as fh:
        return sum(1 for line in fh if b'"type": "shadow"' in line)


def first_pairs(log: Path, n: int, out: Path) -> Path:
    """The log as it stood at its ``n``-th shadow pair (its request records included)."""
    records, ids = read_outcomes(log), set()
    for rec in records:
        if rec["type"] == "shadow" and len(ids) < n:
            ids.add(rec["id"])
    w = OutcomesLog(out)
    for rec in records:
        if rec["id"] in ids:
            w.append(rec)
    w.close()
    return out


def scenario(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    path, models, costs = SCENARIOS[name]
    rows = [r for r in read_table(path) if all(m in r["quality"] for m in models)]
    held, rest = split_rows(rows, [0.2, 0.8], "retrain-loop")
    held = held[: args.held_out]
    random.Random(args.seed).shuffle(rest)
    start, stream = rest[: args.start], rest[args.start :]
    if costs is None:
        opts = TrainOptions(small=models[0], large=models[1], seed=args.seed)
    else:
        opts = TrainOptions(models=models, costs=dict(zip(models, costs, strict=True)), seed=args.seed)
    print(f"[{name}] {len(held)} held out, {len(start)} to start, {len(stream)} in the stream", flush=True)
    train_router(start, opts, work / "start", show_progress=False)
    train_router(rest, opts, work / "ceiling", show_progress=False)
    llm_rows = [*stream, *start, *held]
    prompts = [r["prompt"] for r in stream]
    steps = args.steps
    log = work / "outcomes.jsonl"
    with TableLLM(llm_rows, models, seed=args.seed) as llm:
        served = serve_until(work / "start", llm, models, prompts, steps[-1], log, args.rate, args.seed)
    served["shadow_pairs"] = count_pairs(log)
    print(f"[{name}] served {served['requests']} requests ({served['shadow_calls']} shadow calls) in "
          f"{served['seconds']} s", flush=True)  # fmt: skip

    fleet = Router(work / "start").fleet
    metric = "apgr" if len(models) == 2 else "aiq"
    quality = quality_matrix(held, list(fleet.models))
    held_prompts = [r["prompt"] for r in held]
    scores = {
        "start": Router(work / "start").score(held_prompts),
        "ceiling": Router(work / "ceiling").score(held_prompts),
    }
    champion, champ_key, promotions, worse, step_out = work / "start", "start", 0, 0, []
    for n in steps:
        t0 = time.time()
        part = first_pairs(log, n, work / f"outcomes-{n}.jsonl")
        res = retrain(
            part, champion, work / f"challenger-{n}", options=RetrainOptions(n_boot=args.n_boot, seed=args.seed)
        )
        scores[f"challenger@{n}"] = Router(res.challenger).score(held_prompts)
        before = figure(scores[champ_key], quality, fleet)
        if res.gate.promote:
            promotions += 1
            champion, champ_key = res.challenger, f"challenger@{n}"
        after = figure(scores[champ_key], quality, fleet)
        worse += int(after < before)
        took = round(time.time() - t0, 1)
        step_out.append({"pairs": n, "gate": res.gate.to_dict(), "rows": res.rows, "skipped": res.skipped,
                         "seconds": took,
                         "champion_before": round(before, 4), "champion_after": round(after, 4)})  # fmt: skip
        print(f"[{name}] {n} pairs: challenger {res.gate.challenger:.4f} vs champion {res.gate.champion:.4f} "
              f"({metric}) on the log's recent pairs, promote={res.gate.promote}; held-out champion {before:.4f} -> "
              f"{after:.4f}", flush=True)  # fmt: skip

    rng = np.random.default_rng(args.seed)
    boots = [rng.integers(0, len(held), len(held)) for _ in range(args.n_boot)]
    base = np.asarray(scores["start"]).reshape(len(held), -1)
    held_out = {}
    for key, s in scores.items():
        s = np.asarray(s).reshape(len(held), -1)
        diffs = [figure(s[i], quality[i], fleet) - figure(base[i], quality[i], fleet) for i in boots]
        held_out[key] = {
            metric: round(figure(s, quality, fleet), 4),
            "minus_start_ci95": interval95([d for d in diffs if np.isfinite(d)]),
        }
    out = {"name": name, "table": str(path.relative_to(path.parents[1])), "metric": metric, "models": models,
           "costs": list(fleet.costs), "held_out_rows": len(held), "start_rows": len(start),
           "stream_rows": len(stream), "served": served, "steps": step_out, "held_out": held_out,
           "promotions": promotions, "promotions_worse": worse}  # fmt: skip
    if len(models) == 2:
        out["small"], out["large"] = models
    else:
        out["shadow_sides"] = "all"
    return out


def commit() -> str:
    """The commit the measured code is at (``+dirty`` when the tree has changes)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "src") else "")


def kept_scenarios(path: Path, head: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """With ``--only``, the file's other scenarios stay when they were run with the same settings
    (steps, rate, seed): one scenario can be rerun without rerunning the rest."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    same = all(old.get(k) == head[k] for k in ("quick", "shadow_rate", "steps", "seed"))
    return [sc for sc in old.get("scenarios", []) if same and sc["name"] not in names]


def write(path: Path, head: dict[str, Any], results: list[dict[str, Any]]) -> None:
    total = sum(sc.get("seconds", 0.0) for sc in results)
    path.write_text(json.dumps({**head, "seconds": round(total, 1), "scenarios": results}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 / 500 / 1,000 pairs (the MMLU-Pro pair)")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--start", type=int, default=150, help="table rows the starting router is trained on")
    ap.add_argument("--held-out", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=sorted(SCENARIOS), default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/retrain_loop.json"))
    args = ap.parse_args()
    args.steps = [200, 500, 1000] if args.quick else [1000, 2000, 5000]
    names = [args.only] if args.only else (["mmlu-llama"] if args.quick else list(SCENARIOS))
    work = Path(tempfile.mkdtemp(prefix="retrain-loop-"))
    head = {"benchmark": "retrain_loop", "quick": args.quick, "shadow_rate": args.rate, "steps": args.steps,
            "seed": args.seed, "machine": platform.platform()}  # fmt: skip
    results = kept_scenarios(Path(args.out), head, names) if args.only else []
    at = commit()  # the code this process imported, not the tree at each scenario's end
    try:
        for n in names:
            t1 = time.time()
            sc = scenario(n, args, work / n)
            sc.update(seconds=round(time.time() - t1, 1), commit=at, date=time.strftime("%Y-%m-%d"))
            results = [r for r in results if r["name"] != n] + [sc]
            results.sort(key=lambda r: list(SCENARIOS).index(r["name"]))
            write(Path(args.out), head, results)  # each scenario lands as it ends
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = json.loads(Path(args.out).read_text())
    for sc in results:
        metric = sc.get("metric", "apgr")  # files written before fleets name no metric: a pair
        models = sc.get("models") or [sc["small"], sc["large"]]
        print(f"\n{sc['name']} ({' -> '.join(models)}), held-out {metric.upper()}:")
        for key, v in sc["held_out"].items():
            print(f"  {key:<18} {v[metric]:.4f}  minus start {v['minus_start_ci95']}")
        print(f"  promotions {sc['promotions']}, of which made the held-out {metric.upper()} worse: "
              f"{sc['promotions_worse']}")  # fmt: skip
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
