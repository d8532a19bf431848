"""Is the shipped router more than a task detector? Baselines on the default pair's test split.

    python benchmarks/default_pair_baselines.py      # after data/default-pair/build.sh; seconds

The default pair's table mixes two tasks with very different headroom (GSM8K: the large model is
2.3x as accurate; MMLU-Pro: both near chance), so a rule that knows each question's task already
routes well. This prints the shipped router's held-out APGR and cost advantage at <= 1 % quality
drop next to: random, oracle, "task rule" (every MMLU-Pro question before any GSM8K one, random
order within a task: mean and 5-95 % range over 200 orders; it is given the task label, which the
router is not), and prompt length (short first / long first). The curve's point at <= 1 % drop is
the best the router could do on this split with hindsight; ``default_point`` is what the shipped
default (plain ``hybrid``: the threshold saved in the artifact) actually does on it.
Writes benchmarks/results/default_pair_baselines.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEST = REPO / "data" / "default-pair" / "split" / "test.jsonl"


def main() -> None:
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.evaluate.metrics import evaluate_scores, expected_quality
    from hybridllm.model.evaluation import evaluate_router
    from hybridllm.model.router import Router, default_router_dir
    from hybridllm.tables.format import prompt_text, read_table

    router = Router(default_router_dir())
    evaluation = evaluate_router(router, read_table(TEST))
    ev, rows = evaluation.report, evaluation.rows
    qs, ql = expected_quality(rows, router.small, router.large)

    def metrics(scores: np.ndarray) -> tuple[float, float]:
        r = evaluate_scores(scores, qs, ql, with_curve=False)["router"]
        return r["apgr"], r["cost_advantage_at_quality_drop"]["1"]

    results = {
        name: {"apgr": ev[key]["apgr"], "ca_at_qd1": ev[key]["cost_advantage_at_quality_drop"]["1"]}
        for name, key in (("shipped router", "router"), ("random", "random"), ("oracle", "oracle"))
    }
    is_mmlu = np.array([0.0 if r["id"].startswith("gsm8k") else 1.0 for r in rows])
    draws = np.array([metrics(is_mmlu + np.random.default_rng(s).random(len(rows)) * 1e-3) for s in range(200)])
    results["task rule (MMLU-Pro first)"] = {
        "apgr": float(draws[:, 0].mean()),
        "apgr_p5_p95": [float(x) for x in np.percentile(draws[:, 0], [5, 95])],
        "ca_at_qd1": float(draws[:, 1].mean()),
        "ca_at_qd1_p5_p95": [float(x) for x in np.percentile(draws[:, 1], [5, 95])],
    }
    length = np.array([len(prompt_text(r["prompt"])) for r in rows], dtype=float)
    for name, s in (("short prompts first", -length), ("long prompts first", length)):
        a, c = metrics(s)
        results[name] = {"apgr": a, "ca_at_qd1": c}

    op = ev["operating_point"]  # the shipped default on this split: the saved threshold, decided per row
    default_point = {
        "knob": op["knob"],
        "threshold": op["threshold"],
        "small_share": op["realised"]["cost_advantage"],
        "quality_drop": op["realised"]["quality_drop"],
    }

    n_mmlu = int(is_mmlu.sum())
    print(f"default pair, test split ({len(rows)} rows: {len(rows) - n_mmlu} GSM8K, {n_mmlu} MMLU-Pro)")
    print(f"{'router':30s} {'APGR':>7s} {'CA@QD<=1%':>10s}")
    for name, r in results.items():
        spread = ""
        if "apgr_p5_p95" in r:
            (a0, a1), (c0, c1) = r["apgr_p5_p95"], r["ca_at_qd1_p5_p95"]
            spread = f"  (5-95 %: {a0:.3f}-{a1:.3f}, {c0:.1f}-{c1:.1f})"
        print(f"{name:30s} {r['apgr']:7.3f} {r['ca_at_qd1']:10.1f}{spread}")
    d = default_point
    print(f"shipped default ({d['knob']}, threshold {d['threshold']:.3f}): {d['small_share']:.1f} % to the small "
          f"model, quality drop {d['quality_drop']:.1f} %")  # fmt: skip
    out = REPO / "benchmarks" / "results" / "default_pair_baselines.json"
    body = {"n": len(rows), "results": results, "default_point": default_point}
    out.write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    main()
