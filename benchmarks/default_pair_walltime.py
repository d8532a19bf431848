"""Wall time of routed traffic vs all-at-large on the default local pair, on held-out prompts.

    python benchmarks/default_pair_walltime.py --n 40      # after data/default-pair/build.sh

For N prompts of the default pair's test split (the first N by hashed id), every prompt is answered
once by each local model (qwen2.5-0.5b, qwen2.5-1.5b), one request at a time on the CPU, with the
collection's prompt formats and sampling settings, and scored with its task's metric (exact-match
for GSM8K, choice for MMLU-Pro). The shipped router scores every prompt (timed). Then, for each
operating point (the artifact's default, and other knobs), routed wall time = router decisions + the
chosen model's generations, against all-at-large = the large model's generations, with the quality
of both on the same prompts. Measuring both models once per prompt makes every operating point a
measurement on the same generations, not a separate run.
Writes benchmarks/results/default_pair_walltime.json.

    python benchmarks/default_pair_walltime.py --from-journals data/gsm8k-qwen/journal.jsonl \
        data/default-pair/mmlu_journal.jsonl              # every test prompt, no generation

The second form prices the whole test split with the timings the collection itself recorded (each
sample's share of its batch's wall time, mean over a prompt's samples; batched, so faster per
sample than one request at a time) and the table's qualities, instead of generating anew: a larger
sample of prompts, and seconds instead of a quarter of an hour. Writes ..._journals.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FORMATS = {  # (template, system turn) as in data/gsm8k-qwen/collect.sh and data/default-pair/collect.sh
    "gsm8k": (
        'Solve the following math problem step by step. At the end, write the final answer as "#### <number>".'
        "\n\n{prompt}",
        None,
    ),
    "mmlu": (None, "Reply with only the letter of the correct option."),
}
MAX_TOKENS = {"gsm8k": 384, "mmlu": 8}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--test", default=str(REPO / "data" / "default-pair" / "split" / "test.jsonl"))
    ap.add_argument("--from-journals", nargs="+", type=Path, metavar="JOURNAL")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.model.router import Router, default_router_dir

    router = Router(default_router_dir())
    if args.from_journals:
        per = from_journals(router, Path(args.test), args.from_journals)
        name = "default_pair_walltime_journals.json"
    else:
        per = generate(router, Path(args.test), args.n)
        name = "default_pair_walltime.json"
    summary = summarize(router, per)
    print(json.dumps(summary, indent=1))
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "prompts": per}, indent=1) + "\n")
    large_s, q_large = summary["all_large_seconds"], summary["quality_all_large"]
    print(
        f"{'operating point':22s} {'small share':>11s} {'routed s':>9s} {'all-large s':>11s} {'saving':>7s} "
        f"{'quality routed':>14s} {'all-large':>9s}"
    )
    for name, o in summary["operating_points"].items():
        print(
            f"{name:22s} {o['small_share']:11.3f} {o['routed_seconds']:9.1f} {large_s:11.1f} {o['saving']:7.3f} "
            f"{o['quality_routed']:14.3f} {q_large:9.3f}"
        )


def generate(router: Any, test: Path, n: int) -> list[dict[str, Any]]:
    """Answers the first ``n`` test prompts (by hashed id) once with each model, one at a time."""
    from hybridllm.backends import LocalBackend, SamplingParams
    from hybridllm.stages.collect import format_prompt, sample_seed
    from hybridllm.stages.score import choice, exact_match
    from hybridllm.tables.format import hash_fraction, read_table

    rows = sorted(read_table(test), key=lambda r: hash_fraction(r["id"], "walltime"))[:n]
    models = {router.small: LocalBackend(router.small), router.large: LocalBackend(router.large)}
    for b in models.values():
        b.load()
    per = []
    for r in rows:
        task = "gsm8k" if r["id"].startswith("gsm8k") else "mmlu"
        metric = exact_match if task == "gsm8k" else choice
        prompt = format_prompt(r, *FORMATS[task])["prompt"]
        t0 = time.perf_counter()
        score = float(router.score([r["prompt"]])[0])
        route_s = time.perf_counter() - t0
        runs = {}
        for m in (router.small, router.large):
            p = SamplingParams(
                temperature=0.7, top_p=0.95, max_tokens=MAX_TOKENS[task], seed=sample_seed(0, r["id"], m, 0)
            )
            s = models[m].generate_sync(prompt, p)
            runs[m] = {"seconds": s.latency_s, "tokens": s.completion_tokens, "quality": metric(s.text, r)}
        per.append({"id": r["id"], "task": task, "score": score, "route_s": route_s, "runs": runs})
        print(
            f"{r['id']:20s} score {score:.3f}  "
            + "  ".join(f"{m}: {v['seconds']:.1f}s q={v['quality']:.0f}" for m, v in runs.items()),
            flush=True,
        )
    return per


def from_journals(router: Any, test: Path, journals: list[Path]) -> list[dict[str, Any]]:
    """Every test prompt, priced with the collection's recorded per-sample seconds and the table's
    mean quality per model; the router's decisions are timed in one batch and shared out."""
    from hybridllm.tables.format import read_table

    seconds: dict[tuple[str, str], list[float]] = {}
    for path in journals:
        with path.open() as fh:
            for line in fh:
                rec = json.loads(line)
                if "_settings" not in rec:
                    seconds.setdefault((rec["id"], rec["model"]), []).append(rec["latency_s"] / rec.get("batch", 1))
    rows = read_table(test)
    t0 = time.perf_counter()
    scores = router.score([r["prompt"] for r in rows])
    route_s = (time.perf_counter() - t0) / len(rows)
    per = []
    for r, score in zip(rows, scores, strict=True):
        runs = {}
        for m in (router.small, router.large):
            if (r["id"], m) not in seconds:
                raise SystemExit(f"{test}: id {r['id']!r}: no {m} samples in the journals given")
            secs, q = seconds[(r["id"], m)], r["quality"][m]
            runs[m] = {"seconds": sum(secs) / len(secs), "quality": sum(q) / len(q)}
        task = "gsm8k" if r["id"].startswith("gsm8k") else "mmlu"
        per.append({"id": r["id"], "task": task, "score": float(score), "route_s": route_s, "runs": runs})
    return per


def summarize(router: Any, per: list[dict[str, Any]]) -> dict[str, Any]:
    """Routed (decisions + chosen model's seconds) vs all-at-large, at several operating points."""
    large_s = sum(x["runs"][router.large]["seconds"] for x in per)
    q_large = sum(x["runs"][router.large]["quality"] for x in per) / len(per)
    points = {
        "default": {},
        "max_quality_drop=5": {"max_quality_drop": 5.0},
        "cost_advantage=50": {"cost_advantage": 50.0},
    }
    summary: dict[str, Any] = {
        "n": len(per),
        "all_large_seconds": round(large_s, 1),
        "quality_all_large": round(q_large, 3),
        "all_small_seconds": round(sum(x["runs"][router.small]["seconds"] for x in per), 1),
        "quality_all_small": round(sum(x["runs"][router.small]["quality"] for x in per) / len(per), 3),
        "operating_points": {},
    }
    for name, knob in points.items():
        thr, label = router.threshold(**knob)
        chosen = [router.small if x["score"] >= thr else router.large for x in per]
        pairs = list(zip(per, chosen, strict=True))
        routed_s = sum(x["route_s"] + x["runs"][m]["seconds"] for x, m in pairs)
        summary["operating_points"][name] = {
            "knob": label,
            "threshold": round(thr, 4),
            "small_share": round(sum(m == router.small for m in chosen) / len(per), 3),
            "routed_seconds": round(routed_s, 1),
            "saving": round(1 - routed_s / large_s, 3),
            "quality_routed": round(sum(x["runs"][m]["quality"] for x, m in pairs) / len(per), 3),
        }
    return summary


if __name__ == "__main__":
    main()
