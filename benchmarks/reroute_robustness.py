"""Can a short suffix steer the router? Flip rates of routing decisions under appended text.

    python benchmarks/reroute_robustness.py                # default pair + an MMLU-Pro pair; ~3 min
    python benchmarks/reroute_robustness.py --quick        # default pair only

For held-out prompts of the default pair (the shipped router) and of an MMLU-Pro pair
(Mistral-7B -> Mixtral-8x7B, a router trained here on the 60 % train part, cached under runs/), each
suffix family is appended to every prompt and the decision at the router's default operating point
is compared with the decision on the clean prompt. Two flip rates per family:
  to large = share of small-routed prompts the suffix moves to the large model (cost inflation);
  to small = share of large-routed prompts it moves to the small model (quality loss).
"random search" is per prompt: 50 random suffixes of 5-15 words, a flip if any of them flips it.
"earlier turn" puts a long unrelated user turn before the prompt (a chat whose last question the
router must still see).

"before": a router trained without filler augmentation, routing the raw text (all user turns
joined); "after": as hybridllm trains and routes by default (filler augmentation; repeated words and
punctuation collapsed; a chat routed on its last user turn). For the default pair "before" is the
router given with --before (the one shipped before this change), "after" the shipped one.
Held-out APGR of both is printed beside the flip rates. Writes
benchmarks/results/reroute_robustness.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from hybridllm.evaluate.steering import steer_check, word_pool

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEST = REPO / "data" / "default-pair" / "split" / "test.jsonl"
MMLU = REPO.parent / "shared" / "data" / "mmlu_pro.jsonl"
SMALL, LARGE = "Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1"


def run_router(router, rows, hardened: bool, words: list[str], tries: int, point: dict | None) -> dict:
    """Flip rates at ``point`` (None: the router's default operating point; {"cost_advantage": 30}:
    the threshold that sends 30 % of these clean prompts to the small model)."""
    from hybridllm.model.evaluation import evaluate_router

    router.harden = hardened
    router.turns = "last" if hardened else "all"
    report, used, clean, _ = evaluate_router(router, rows)
    if point is None:
        thr, _ = router.threshold()
    else:  # the same share to small for every router: comparable flip rates
        thr = float(np.quantile(clean, 1 - point["cost_advantage"] / 100))
    got = steer_check(router, [r["prompt"] for r in used], thr, tries, words)
    return {"apgr": report["router"]["apgr"], "n": got.n, "to_small_share": got.to_small_share,
            "families": got.families, "max_flip": got.max_flip}  # fmt: skip


def mmlu_split() -> tuple[list, list, list]:
    """MMLU-Pro's 60 / 20 / 20 train / validation / test split (by hashed id)."""
    from hybridllm import read_table, split_rows

    train, val, test = split_rows(read_table(MMLU), [0.6, 0.2, 0.2])
    return train, val, test


def train_mmlu_router(out: Path, train: list, val: list, augment: int = 1) -> Path:
    """The head-mode router for Mistral-7B -> Mixtral-8x7B on the train part (validation: ``val``)."""
    from hybridllm import TrainOptions, train_router

    train_router(train, TrainOptions(small=SMALL, large=LARGE, augment=augment), out, validation=val,
                 show_progress=False)  # fmt: skip
    return out


def mmlu_routers(runs: Path, split: tuple[list, list, list] | None = None):
    """The MMLU-Pro routers, cached under ``runs``: as trained by default (with filler augmentation)
    and without it (``augment=0``, the "before"); and the test part."""
    train, val, test = split or mmlu_split()
    out = {}
    for name, augment in (("reroute-mmlu-router", 1), ("reroute-mmlu-router-plain", 0)):
        out[name] = runs / name
        if not (out[name] / "config.json").exists():
            train_mmlu_router(out[name], train, val, augment)
    return out["reroute-mmlu-router"], out["reroute-mmlu-router-plain"], test


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="default pair only")
    ap.add_argument("--n", type=int, default=200, help="held-out prompts per pair")
    ap.add_argument("--tries", type=int, default=50)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "reroute_robustness.json")
    ap.add_argument("--before", type=Path, help="default pair: the router to report as 'before' (e.g. an older one)")
    ap.add_argument("--after", type=Path, help="default pair: the router to report as 'after' (default: shipped)")
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.model.router import Router, default_router_dir
    from hybridllm.tables.format import read_table

    words = word_pool()
    after = args.after or default_router_dir()
    pairs = [("default pair (qwen2.5-0.5b -> 1.5b)", args.before or after, after, read_table(DEFAULT_TEST))]
    if not args.quick:
        d, d_plain, test = mmlu_routers(REPO / "runs")
        pairs.append((f"MMLU-Pro ({SMALL} -> {LARGE})", d_plain, d, test))
    result = {"pairs": []}
    for label, before_dir, after_dir, rows in pairs:
        rows = rows[: args.n]
        t0 = time.perf_counter()
        entry = {"pair": label, "before_router": str(before_dir), "after_router": str(after_dir)}
        for key, point in (("default point", None), ("30% to small", {"cost_advantage": 30})):
            b = run_router(Router(before_dir), rows, False, words, args.tries, point)
            a = run_router(Router(after_dir), rows, True, words, args.tries, point)
            entry[key] = {"before": b, "after": a}
            print(
                f"\n{label}: {b['n']} held-out prompts, {key} "
                f"(to small: before {b['to_small_share']:.0%}, after {a['to_small_share']:.0%})"
            )
            head = ("suffix family", "before: to large", "to small", "after: to large", "to small")
            print(f"{head[0]:32s} {head[1]:>17s} {head[2]:>9s} {head[3]:>16s} {head[4]:>9s}")
            for fam in b["families"]:
                fb, fa = b["families"][fam], a["families"][fam]
                print(
                    f"{fam:32s} {fb['to_large']:17.1%} {fb['to_small']:9.1%} {fa['to_large']:16.1%} "
                    f"{fa['to_small']:9.1%}"
                )
            print(
                f"{'held-out APGR':32s} {b['apgr']:17.3f} {'':9s} {a['apgr']:16.3f}\n"
                f"{'worst flip rate':32s} {b['max_flip']:17.1%} {'':9s} {a['max_flip']:16.1%}"
            )
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        result["pairs"].append(entry)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
