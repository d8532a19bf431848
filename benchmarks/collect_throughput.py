"""Collection throughput of the local backend vs llama.cpp's own speed, same model and settings.

    python benchmarks/collect_throughput.py --model qwen2.5-0.5b --prompts 8 --max-tokens 64

"Direct" drives llama-cpp-python's ``create_chat_completion`` in a plain loop (what llama.cpp itself
achieves through its Python binding); "hybridllm collect" runs the same prompts, seeds and sampling
settings through ``collect_async`` with the journal on disk. Ratio = collect tokens/s ÷ direct
tokens/s (1.0 = no overhead). Writes benchmarks/results/collect_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "collect_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.backends import LocalBackend, SamplingParams
    from hybridllm.collect import collect_async, sample_seed

    rows = [json.loads(line) for line in (SHARED / "gsm8k" / "test.jsonl").open()][: args.prompts]
    backend = LocalBackend(args.model, n_threads=args.threads)
    llm = backend.load()
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens)
    llm.create_chat_completion(messages=[{"role": "user", "content": "warm up"}], max_tokens=4)

    t0 = time.perf_counter()
    direct_tokens = 0
    for r in rows:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": r["prompt"]}],
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=sample_seed(0, r["id"], "m", 0),
        )
        direct_tokens += out["usage"]["completion_tokens"]
    direct_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, stats = asyncio.run(collect_async(rows, {"m": backend}, Path(tmp) / "t.jsonl", 1, params, seed=0))
        collect_s = time.perf_counter() - t0
    result = {
        "model": args.model,
        "prompts": len(rows),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "direct_tokens": direct_tokens,
        "direct_seconds": round(direct_s, 2),
        "direct_tokens_per_s": round(direct_tokens / direct_s, 2),
        "collect_tokens": stats.completion_tokens,
        "collect_seconds": round(collect_s, 2),
        "collect_tokens_per_s": round(stats.completion_tokens / collect_s, 2),
    }
    result["ratio"] = round(result["collect_tokens_per_s"] / result["direct_tokens_per_s"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'path':18s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s}")
    print(f"{'llama.cpp direct':18s} {direct_tokens:7d} {direct_s:8.2f} {result['direct_tokens_per_s']:7.2f}")
    print(
        f"{'hybridllm collect':18s} {stats.completion_tokens:7d} {collect_s:8.2f} {result['collect_tokens_per_s']:7.2f}"
    )
    print(f"ratio {result['ratio']}")


if __name__ == "__main__":
    main()
