"""Wall time of routed traffic vs all-at-large on the default local pair, on held-out prompts.

    python benchmarks/default_pair_walltime.py --n 40      # after data/default-pair/build.sh

For N prompts of the default pair's test split (the first N by hashed id), with the shipped router at
its default operating point: every prompt is answered once by the large model (qwen2.5-1.5b) and,
when the router picks the small one, once by qwen2.5-0.5b, one request at a time on the local CPU
with the collection's prompt templates and sampling settings. Routed wall time = router decisions +
the chosen model's generation; all-at-large = the large model's generations. Each answer is scored
with its task's metric (exact-match for GSM8K, choice for MMLU-Pro), so the quality of routed and
all-at-large answers on the same prompts is reported next to the time saved.
Writes benchmarks/results/default_pair_walltime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {  # as in data/gsm8k-qwen/collect.sh and data/default-pair/collect.sh
    "gsm8k": 'Solve the following math problem step by step. At the end, write the final answer as "#### <number>".'
    "\n\n{prompt}",
    "mmlu": "{prompt}\n\nReply with only the letter of the correct option.",
}
MAX_TOKENS = {"gsm8k": 384, "mmlu": 8}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--test", default=str(REPO / "data" / "default-pair" / "split" / "test.jsonl"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "default_pair_walltime.json"))
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.backends import LocalBackend, SamplingParams
    from hybridllm.collect import sample_seed
    from hybridllm.router import Router, default_router_dir
    from hybridllm.score import choice, exact_match
    from hybridllm.table import hash_fraction, read_table

    router = Router(default_router_dir())
    rows = sorted(read_table(args.test), key=lambda r: hash_fraction(r["id"], "walltime"))[: args.n]
    models = {router.small: LocalBackend(router.small), router.large: LocalBackend(router.large)}
    for b in models.values():
        b.load()
    per = []
    for r in rows:
        task = "gsm8k" if r["id"].startswith("gsm8k") else "mmlu"
        metric = exact_match if task == "gsm8k" else choice
        prompt = TEMPLATES[task].replace("{prompt}", r["prompt"])
        t0 = time.perf_counter()
        d = router.route(r["prompt"])
        route_s = time.perf_counter() - t0
        runs = {}
        for m in {router.large, d.model}:
            p = SamplingParams(
                temperature=0.7, top_p=0.95, max_tokens=MAX_TOKENS[task], seed=sample_seed(0, r["id"], m, 0)
            )
            s = models[m].generate_sync(prompt, p)
            runs[m] = {"seconds": s.latency_s, "tokens": s.completion_tokens, "quality": metric(s.text, r)}
        per.append({"id": r["id"], "task": task, "routed_to": d.model, "route_s": route_s, "runs": runs})
        print(
            f"{r['id']:20s} -> {d.model:13s} score {d.score:.3f}  "
            + "  ".join(f"{m}: {v['seconds']:.1f}s q={v['quality']:.0f}" for m, v in runs.items()),
            flush=True,
        )
    large_s = sum(x["runs"][router.large]["seconds"] for x in per)
    routed_s = sum(x["route_s"] + x["runs"][x["routed_to"]]["seconds"] for x in per)
    q_large = sum(x["runs"][router.large]["quality"] for x in per) / len(per)
    q_routed = sum(x["runs"][x["routed_to"]]["quality"] for x in per) / len(per)
    small_share = sum(x["routed_to"] == router.small for x in per) / len(per)
    summary = {
        "n": len(per),
        "small_share": round(small_share, 3),
        "all_large_seconds": round(large_s, 1),
        "routed_seconds": round(routed_s, 1),
        "saving": round(1 - routed_s / large_s, 3),
        "quality_all_large": round(q_large, 3),
        "quality_routed": round(q_routed, 3),
    }
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "prompts": per}, indent=1) + "\n")


if __name__ == "__main__":
    main()
