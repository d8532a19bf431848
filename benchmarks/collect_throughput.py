"""Collection throughput of the local backend vs llama.cpp's own speed, same model and settings.

    python benchmarks/collect_throughput.py --model qwen2.5-0.5b --prompts 8 --max-tokens 64

"Direct" drives llama-cpp-python's ``create_chat_completion`` in a plain loop (what llama.cpp itself
achieves through its Python binding); "hybridllm collect" runs the same prompts, seeds and sampling
settings through ``collect_async`` with the journal on disk, one sample at a time (``--batch 1``)
and all of them decoded together (``--batch N``). Ratio = collect tokens/s ÷ direct tokens/s.

A third row, "direct, cache reset", is the plain loop with ``llm.reset()`` before each call, as
``collect --batch 1`` does so that a sample depends on (prompt, settings, seed) alone: without it
llama.cpp reuses the previous prompt's KV cells for the shared chat-template prefix, which is
faster but makes a sample depend on what ran before it. Writes benchmarks/results/collect_throughput.json.
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
    from hybridllm.stages.collect import collect_async, sample_seed

    rows = [json.loads(line) for line in (SHARED / "gsm8k" / "test.jsonl").open()][: args.prompts]
    backend = LocalBackend(args.model, n_threads=args.threads)
    llm = backend.load()
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens)
    llm.create_chat_completion(messages=[{"role": "user", "content": "warm up"}], max_tokens=4)

    def direct(reset: bool) -> tuple[int, float]:
        t0 = time.perf_counter()
        tokens = 0
        for r in rows:
            if reset:
                llm.reset()
            out = llm.create_chat_completion(
                messages=[{"role": "user", "content": r["prompt"]}],
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=sample_seed(0, r["id"], "m", 0),
            )
            tokens += out["usage"]["completion_tokens"]
        return tokens, time.perf_counter() - t0

    def collect(batch: int) -> tuple[int, float]:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _, stats = asyncio.run(
                collect_async(rows, {"m": backend}, Path(tmp) / "t.jsonl", 1, params, seed=0, batch=batch)
            )
            return stats.completion_tokens, time.perf_counter() - t0

    runs = {
        "llama.cpp direct": direct(reset=False),
        "direct, cache reset": direct(reset=True),
        "collect --batch 1": collect(1),
        f"collect --batch {len(rows)}": collect(len(rows)),
    }
    base = runs["llama.cpp direct"][0] / runs["llama.cpp direct"][1]
    table = [
        {
            "path": k,
            "tokens": t,
            "seconds": round(s, 2),
            "tokens_per_s": round(t / s, 2),
            "ratio": round(t / s / base, 3),
        }
        for k, (t, s) in runs.items()
    ]
    result = {
        "model": args.model,
        "prompts": len(rows),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "runs": table,
        "ratio": table[2]["ratio"],
        "ratio_batched": table[3]["ratio"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'path':20s} {'tokens':>7s} {'seconds':>8s} {'tok/s':>7s} {'ratio':>6s}")
    for row in table:
        print(
            f"{row['path']:20s} {row['tokens']:7d} {row['seconds']:8.2f} {row['tokens_per_s']:7.2f} {row['ratio']:6.3f}"
        )


if __name__ == "__main__":
    main()
