"""Do probabilistic or transformed labels beat deterministic ones on our own multi-sample tables?

The method trains the router on one of three labels (docs/method.md, Labels): ``det`` compares one
sample of each model, ``prob`` the share of all sample pairs where the small model is at least as
good, ``trans`` the same comparison relaxed by a margin t* that spreads the labels out. They differ
only where a table has several samples per model and query; these are the project's tables that do:

- ``data/default-pair/table.jsonl``: 1,000 prompts (200 GSM8K, 800 MMLU-Pro) x qwen2.5-0.5b /
  qwen2.5-1.5b x 3 samples, scored 0/1 (exact match of the final number, chosen letter);
- ``data/gsm8k-qwen/scored.jsonl``: its 200 GSM8K prompts, with the same 0/1 scores and with a
  continuous score of the same responses: ROUGE-L (``hybridllm score --metric rouge-l``) against
  the worked solution GSM8K ships with each question (``meta.solution``).

The quality gap between the two models is what the method says matters; with one pair of models that
has several samples, the gap varies across the parts of the table: MMLU-Pro (a gap of about 0.03),
the whole table (0.07), GSM8K (0.24).

Every label kind is cross-validated with the same folds (salted by seed) and the same router recipe
(``hybridllm crossval``'s defaults), over several seeds; APGR and the cost advantage at <= 1 % and
<= 5 % quality drop are computed on the pooled out-of-fold scores against the mean quality over the
samples (the same truth for every label kind) and averaged over seeds. Intervals: paired percentile
bootstrap over prompts (the same resampled prompts for every label kind and seed), of the
seed-averaged difference prob - det and trans - det.

    python benchmarks/labels.py                 # writes benchmarks/results/labels.json (~15 min)
    python benchmarks/labels.py --seeds 2 --boot 200 --out /tmp/labels.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.evaluate.bootstrap import interval95
from hybridllm.evaluate.metrics import expected_quality, quality_curve, summarize
from hybridllm.features.cache import EmbeddingCache
from hybridllm.model.crossval import cross_validate
from hybridllm.model.fit import TrainOptions
from hybridllm.stages.labels import LABEL_TYPES, label_matrix
from hybridllm.stages.score import score_rows
from hybridllm.tables.format import read_table

REPO = Path(__file__).resolve().parents[1]
SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"
MEASURES = ("apgr", "ca_qd1", "ca_qd5")


def tables() -> list[dict[str, Any]]:
    """The configurations: (name, rows to train and score on, the rows whose quality is the truth)."""
    pair = read_table(REPO / "data/default-pair/table.jsonl")
    gsm = read_table(REPO / "data/gsm8k-qwen/scored.jsonl")
    mmlu = [r for r in pair if not r["id"].startswith("gsm8k")]
    # continuous: ROUGE-L of every response against the worked solution (the final number alone
    # gives ROUGE-L ~ 0 for any verbose answer)
    worked = [dict(r, reference=r["meta"]["solution"]) for r in gsm]
    rouge = score_rows(worked, "rouge-l", models=[SMALL, LARGE])
    return [
        {"name": "MMLU-Pro part, 0/1", "table": "data/default-pair (MMLU-Pro rows)", "score": "choice", "rows": mmlu},
        {
            "name": "whole default pair, 0/1",
            "table": "data/default-pair",
            "score": "exact-match / choice",
            "rows": pair,
        },
        {"name": "GSM8K, 0/1", "table": "data/gsm8k-qwen", "score": "exact-match", "rows": gsm},
        {"name": "GSM8K, ROUGE-L", "table": "data/gsm8k-qwen", "score": "rouge-l vs worked solution", "rows": rouge},
        # the routers trained on ROUGE-L labels, judged by what the user wants: the right number
        {
            "name": "GSM8K, ROUGE-L labels, judged by exact match",
            "table": "data/gsm8k-qwen",
            "score": "labels rouge-l, truth exact-match",
            "rows": rouge,
            "truth": gsm,
            "same_as": "GSM8K, ROUGE-L",
        },
    ]


def label_stats(rows: list[dict], kind: str) -> dict[str, Any]:
    y, stars = label_matrix(rows, [SMALL], LARGE, kind)
    det, _ = label_matrix(rows, [SMALL], LARGE, "det")
    return {
        "mean": float(y.mean()),
        "std": float(y.std()),
        "t_star": stars[0],
        "share_differing_from_det": float(np.mean(np.abs(y[:, 0] - det[:, 0]) > 1e-12)),
    }


def measures(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> tuple[float, float, float]:
    s = summarize(quality_curve(scores, qs, ql), float(qs.mean()), float(ql.mean()))
    return (
        float("nan") if s.apgr is None else s.apgr,
        s.cost_advantage_at_quality_drop["1"],
        s.cost_advantage_at_quality_drop["5"],
    )


def compare(scores: dict[str, list[np.ndarray]], qs: np.ndarray, ql: np.ndarray, n_boot: int) -> dict[str, Any]:
    """Seed-averaged measures per label kind and paired bootstrap intervals of the differences."""
    point = {k: np.mean([measures(s, qs, ql) for s in v], axis=0) for k, v in scores.items()}
    rng = np.random.default_rng(12345)
    n = len(qs)
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in scores if k != "det"}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a, b = qs[idx], ql[idx]
        if abs(a.mean() - b.mean()) < 1e-12:
            continue  # APGR undefined on this resample
        m = {k: np.mean([measures(s[idx], a, b) for s in v], axis=0) for k, v in scores.items()}
        for k in diffs:
            diffs[k].append(m[k] - m["det"])
    out: dict[str, Any] = {"kinds": {k: dict(zip(MEASURES, map(float, v), strict=True)) for k, v in point.items()}}
    for k, ds in diffs.items():
        arr = np.array(ds)
        out[f"{k}_minus_det"] = {
            m: {
                "diff": float(point[k][i] - point["det"][i]),
                "ci95": interval95(arr[:, i]),
                "share_of_resamples_above_0": float(np.mean(arr[:, i] > 0)),
            }
            for i, m in enumerate(MEASURES)
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/labels.json"))
    args = ap.parse_args()
    t0 = time.time()
    cache = EmbeddingCache()
    results, scores_of = [], {}
    for cfg in tables():
        rows = cfg["rows"]
        if "same_as" in cfg:
            scores, used = scores_of[cfg["same_as"]]
        else:
            scores = {k: [] for k in LABEL_TYPES}
            used = None
            for seed in range(args.seeds):
                for kind in LABEL_TYPES:
                    opts = TrainOptions(small=SMALL, large=LARGE, labels=kind, seed=seed)
                    cv = cross_validate(rows, opts, folds=args.folds, salt=f"labels-{seed}", cache=cache)
                    ids = [r["id"] for r in cv.rows]
                    assert used is None or ids == used, "every kind must score the same rows"
                    used = ids
                    scores[kind].append(np.asarray(cv.scores, dtype=np.float64))
                print(f"  {cfg['name']}: seed {seed} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            scores_of[cfg["name"]] = (scores, used)
        truth = {r["id"]: r for r in cfg.get("truth", rows)}
        qs, ql = expected_quality([truth[i] for i in used], SMALL, LARGE)
        res = compare(scores, qs, ql, args.boot)
        res.update(
            {
                "name": cfg["name"],
                "table": cfg["table"],
                "score": cfg["score"],
                "n": len(used),
                "Q_small": float(qs.mean()),
                "Q_large": float(ql.mean()),
                "gap": float(ql.mean() - qs.mean()),
                "labels": {k: label_stats(rows, k) for k in LABEL_TYPES},
            }
        )
        results.append(res)
        print_one(res)
    out = {
        "benchmark": "labels",
        "command": "python benchmarks/labels.py" + (f" --seeds {args.seeds}" if args.seeds != 5 else ""),
        "models": [SMALL, LARGE],
        "seeds": args.seeds,
        "folds": args.folds,
        "bootstrap": f"paired percentile bootstrap over prompts, {args.boot} resamples, seed-averaged differences",
        "recipe": "hybridllm crossval defaults: static MiniLM features + head, seed s and fold salt labels-s",
        "configs": results,
        "seconds": round(time.time() - t0, 1),
        "python": platform.python_version(),
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({out['seconds'] / 60:.1f} min)")


def print_one(r: dict[str, Any]) -> None:
    print(f"\n{r['name']} (n {r['n']}, Q_small {r['Q_small']:.3f}, Q_large {r['Q_large']:.3f}, gap {r['gap']:+.3f})")
    print(f"  {'labels':8} {'mean':>6} {'t*':>6} {'≠det':>6} {'APGR':>7} {'CA@1%':>7} {'CA@5%':>7}")
    for k, m in r["kinds"].items():
        lab = r["labels"][k]
        t = "" if lab["t_star"] is None else f"{lab['t_star']:.3f}"
        print(
            f"  {k:8} {lab['mean']:6.3f} {t:>6} {lab['share_differing_from_det']:6.1%} {m['apgr']:7.3f} "
            f"{m['ca_qd1']:7.1f} {m['ca_qd5']:7.1f}"
        )
    for k in ("prob", "trans"):
        d = r[f"{k}_minus_det"]
        cells = "  ".join(f"{m} {d[m]['diff']:+.3f} [{d[m]['ci95'][0]:+.3f}, {d[m]['ci95'][1]:+.3f}]" for m in MEASURES)
        print(f"  {k} - det: {cells}")


if __name__ == "__main__":
    main()
