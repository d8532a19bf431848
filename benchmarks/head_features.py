"""Does reading the prompt's first words alone (`--features log_tokens,head_embed`) make the router
harder to steer with appended text, and at what cost in routing quality?

    python benchmarks/head_features.py            # default pair and MMLU-Pro pair, ~8 min

For each pair, two routers trained alike except for the features (default `log_tokens`, and
`log_tokens,head_embed`): held-out APGR on the whole test split, and the suffix flip rates of
`benchmarks/reroute_robustness.py` (200 held-out prompts, 50 random-search tries) at the default
operating point and at 30 % of prompts to the small model. Writes benchmarks/results/head_features.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_harness import scratch_dir
from reroute_robustness import DEFAULT_TEST, LARGE, MMLU, SMALL, run_router, word_pool

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm import Router, TrainOptions, read_table, split_rows, train_router
    from hybridllm.model.head import HeadConfig

    words = word_pool()
    mmlu = read_table(MMLU)
    m_train, m_val, m_test = split_rows(mmlu, [0.6, 0.2, 0.2])
    pairs = [
        ("default pair", "qwen2.5-0.5b", "qwen2.5-1.5b", read_table(REPO / "data/default-pair/split/train.jsonl"),
         None, read_table(DEFAULT_TEST)),
        ("MMLU-Pro", SMALL, LARGE, m_train, m_val, m_test),
    ]  # fmt: skip
    tmp = Path(scratch_dir())
    out: dict = {}
    for label, small, large, train, val, test in pairs:
        out[label] = {}
        for name, extra in (("log_tokens", ["log_tokens"]), ("log_tokens,head_embed", ["log_tokens", "head_embed"])):
            t0 = time.perf_counter()
            d = tmp / f"{label}-{name}".replace(" ", "_")
            opts = TrainOptions(small=small, large=large, head=HeadConfig(extra=extra))
            train_router(train, opts, d, validation=val, show_progress=False)
            entry = {"apgr": run_router(Router(d), test, True, words, 0, None)["apgr"]}
            for key, point in (("default point", None), ("30% to small", {"cost_advantage": 30})):
                r = run_router(Router(d), test[:200], True, words, 50, point)
                entry[key] = {"max_flip": r["max_flip"], "families": r["families"]}
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            out[label][name] = entry
            print(f"{label}, features {name}: held-out APGR {entry['apgr']:.4f}", flush=True)
    (REPO / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks/results/head_features.json").write_text(json.dumps(out, indent=1) + "\n")
    for label, by in out.items():
        for key in ("default point", "30% to small"):
            print(f"\n{label}, {key}: flip rates to large / to small")
            names = list(by)
            print(f"{'suffix family':32s}" + "".join(f"{n:>28s}" for n in names))
            for fam in by[names[0]][key]["families"]:
                cells = [by[n][key]["families"][fam] for n in names]
                print(f"{fam:32s}" + "".join(f"{c['to_large']:>18.1%} / {c['to_small']:>6.1%}" for c in cells))
            print(f"{'worst':32s}" + "".join(f"{by[n][key]['max_flip']:>28.1%}" for n in names))
        print(f"{'held-out APGR':32s}" + "".join(f"{by[n]['apgr']:>28.4f}" for n in by))


if __name__ == "__main__":
    main()
