"""What the head's validation choices should maximise: validation log-likelihood (the default) or
validation APGR (the metric we report), and what the memory member adds, on the default pair's whole
table by cross-validation.

    python benchmarks/head_selection.py            # 3 recipes x 3 seeds x 5 folds, ~6 min

Each run is `hybridllm crossval` (5 folds by hashed id, every row scored by a router that did not
see it) with `HeadConfig(select=..., knn=...)`: "apgr" and "loss" without the memory member, and
"loss+memory", today's default; the seed changes the members' initialisation and the filler
augmentation. The MMLU-Pro side of the same comparison is in `benchmarks/routing_quality.py`
and `benchmarks/nmodel_quality.py` (README, "Routing quality"). Writes
benchmarks/results/head_selection.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "data" / "default-pair" / "table.jsonl"
SEEDS = (0, 10, 20)
#: name -> (HeadConfig.select, HeadConfig.knn)
RECIPES = {"apgr": ("apgr", False), "loss": ("loss", False), "loss+memory": ("loss", True)}


def main() -> None:
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm import TrainOptions, read_table
    from hybridllm.features.cache import EmbeddingCache
    from hybridllm.model.crossval import cross_validate
    from hybridllm.model.head import HeadConfig

    rows = read_table(TABLE)
    cache = EmbeddingCache()
    out: dict = {"table": str(TABLE.relative_to(REPO)), "folds": 5, "runs": []}
    t0 = time.perf_counter()
    print(f"{'recipe':12s} {'seed':>4s} {'out-of-fold APGR':>17s} {'95% CI':>18s} {'fold mean':>10s}")
    for recipe, (select, knn) in RECIPES.items():
        for seed in SEEDS:
            head = HeadConfig(extra=["log_tokens"], select=select, knn=knn)
            opts = TrainOptions(small="qwen2.5-0.5b", large="qwen2.5-1.5b", head=head, seed=seed)
            rep = cross_validate(rows, opts, cache=cache).report
            ci = rep["ci95"]["apgr"]
            run = {"recipe": recipe, "seed": seed, "apgr": rep["router"]["apgr"], "ci95": ci}
            run["fold_apgr_mean"] = rep["fold_apgr_mean"]
            out["runs"].append(run)
            print(
                f"{recipe:12s} {seed:4d} {run['apgr']:17.4f} {f'[{ci[0]:.3f}, {ci[1]:.3f}]':>18s} "
                f"{run['fold_apgr_mean']:10.4f}",
                flush=True,
            )
    for recipe in RECIPES:
        a = [r["apgr"] for r in out["runs"] if r["recipe"] == recipe]
        out[f"mean_{recipe}"] = float(np.mean(a))
        print(f"{recipe}: mean out-of-fold APGR over seeds {np.mean(a):.4f} (spread {min(a):.4f}-{max(a):.4f})")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = REPO / "benchmarks" / "results" / "head_selection.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
