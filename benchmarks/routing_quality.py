"""Routing quality on MMLU-Pro: hybridllm's default router vs the usual peers, same split, same run.

For each (small, large) pair: a deterministic 60/20/20 split by hashed id; the router trains on 60%,
selects checkpoints and calibrates on 20%, and everything is reported on the last 20%.
Peers (RouterBench / LLMRouter baselines) use the same frozen MiniLM embeddings and the same labels,
with hyper-parameters chosen on the same validation part: k-nearest-neighbours, logistic regression,
an MLP; plus the rule-based prompt-length router (longer prompt → large model), random and oracle.

    python benchmarks/routing_quality.py            # all pairs, writes benchmarks/results/routing_quality.json
    python benchmarks/routing_quality.py --pairs 1  # first pair only
    python benchmarks/routing_quality.py --labels trans --splits 5   # the default over 5 different splits
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from hybridllm.evaluate.metrics import evaluate_scores, expected_quality
from hybridllm.features.cache import EmbeddingCache, embed_texts
from hybridllm.features.featurize import make_encoder
from hybridllm.model.fit import DEFAULT_EXTRA, TrainOptions, train_router
from hybridllm.model.head import HeadConfig
from hybridllm.model.router import Router
from hybridllm.stages.labels import label_matrix
from hybridllm.tables.format import read_table, select_pair, split_rows

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mmlu_pro.jsonl"
PAIRS = [
    ("Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"),
    ("Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1"),
    ("Qwen1.5-7B-Chat", "Qwen1.5-72B-Chat"),
    ("Phi-3-mini-4k-instruct", "Meta-Llama-3_1-70B-Instruct"),
]


def val_apgr(scores: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> float:
    return evaluate_scores(scores, qs, ql, with_curve=False)["router"]["apgr"]


def fit_peers(xtr, ytr, xva, qsv, qlv, seed: int) -> dict[str, object]:
    """Each peer with its hyper-parameter picked by validation APGR (a fair, tuned baseline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPClassifier

    yb = (ytr >= 0.5).astype(int)
    peers: dict[str, object] = {}
    best = None
    for k in (10, 25, 50, 100, 200, 400, 800):
        for weights in ("uniform", "distance"):
            m = KNeighborsRegressor(n_neighbors=min(k, len(xtr)), weights=weights, metric="cosine").fit(xtr, ytr)
            a = val_apgr(m.predict(xva), qsv, qlv)
            if best is None or a > best[0]:
                best = (a, m, f"k={k}, {weights}")
    peers[f"kNN ({best[2]})"] = best[1]
    best = None
    for c in (0.01, 0.1, 1.0, 10.0):
        m = LogisticRegression(C=c, max_iter=2000).fit(xtr, yb)
        a = val_apgr(m.predict_proba(xva)[:, 1], qsv, qlv)
        if best is None or a > best[0]:
            best = (a, m, c)
    peers[f"logistic (C={best[2]:g})"] = best[1]
    best = None
    for alpha in (1e-4, 1e-2, 1.0):
        m = MLPClassifier(
            hidden_layer_sizes=(256,), alpha=alpha, early_stopping=True, random_state=seed, max_iter=300
        ).fit(xtr, yb)
        a = val_apgr(m.predict_proba(xva)[:, 1], qsv, qlv)
        if best is None or a > best[0]:
            best = (a, m, alpha)
    peers[f"MLP (alpha={best[2]:g})"] = best[1]
    return peers


def peer_scores(model, x):
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)[:, 1]
    return model.predict(x)


def bootstrap_diff(a: np.ndarray, b: np.ndarray, qs: np.ndarray, ql: np.ndarray, n: int = 1000, seed: int = 0):
    """95% interval of APGR(a) - APGR(b) over test rows resampled with replacement (paired)."""
    from hybridllm.evaluate.metrics import apgr, quality_curve

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(qs), len(qs))
        q_s, q_l = qs[i].mean(), ql[i].mean()
        da = apgr(quality_curve(a[i], qs[i], ql[i]), q_s, q_l)
        db = apgr(quality_curve(b[i], qs[i], ql[i]), q_s, q_l)
        diffs.append(da - db)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def run_pair(rows, emb, by_id, encoder, cache, small, large, salt: str, args, quiet: bool = False) -> dict:
    """One pair on one split: peers and the router trained, every method scored on the test part."""
    pair = select_pair(rows, small, large)
    tr, va, te = split_rows(pair.rows, [0.6, 0.2, 0.2], salt=salt)
    qsv, qlv = expected_quality(va, small, large)
    qst, qlt = expected_quality(te, small, large)
    xtr, xva, xte = (emb[[by_id[r["id"]] for r in part]] for part in (tr, va, te))
    ytr = label_matrix(tr, [small], large, "det")[0][:, 0]
    entry = {
        "small": small,
        "large": large,
        "salt": salt,
        "n_train": len(tr),
        "n_val": len(va),
        "n_test": len(te),
        "Q_small": float(qst.mean()),
        "Q_large": float(qlt.mean()),
        "methods": {},
    }
    rep = evaluate_scores(qst, qst, qlt, with_curve=False)  # for random/oracle
    entry["methods"]["random"] = rep["random"]
    entry["methods"]["oracle"] = rep["oracle"]
    lengths = encoder.token_lengths([r["prompt"] for r in te]).astype(float)
    entry["methods"]["prompt length"] = evaluate_scores(-lengths, qst, qlt, with_curve=False)["router"]
    test_scores = {"prompt length": -lengths}
    for name, model in fit_peers(xtr, ytr, xva, qsv, qlv, args.seed).items():
        test_scores[name] = peer_scores(model, xte)
        entry["methods"][name] = evaluate_scores(test_scores[name], qst, qlt, with_curve=False)["router"]
    for labels in args.labels.split(","):
        t1 = time.perf_counter()
        opts = TrainOptions(
            small=small,
            large=large,
            labels=labels,
            max_length=args.max_length,
            seed=args.seed,
            encoder=None if args.encoder == "minilm" else args.encoder,
            head=HeadConfig(extra=list(DEFAULT_EXTRA)),
        )
        out = REPO / "runs" / "bench" / f"{encoder.name}__{small}__{large}__{labels}"
        res = train_router(tr, opts, out, validation=va, cache=cache, show_progress=False)
        router = Router(out, encoder=encoder)
        scores = router.score([r["prompt"] for r in te])
        name = f"hybridllm head/{labels}" + (" (default)" if labels == "trans" else "")
        entry["methods"][name] = evaluate_scores(scores, qst, qlt, with_curve=False)["router"]
        entry["methods"][name]["t_star"] = res.config["t_star"][small]
        entry["methods"][name]["train_seconds"] = round(time.perf_counter() - t1, 1)
        if labels == "trans":
            best_peer = max(test_scores, key=lambda k: entry["methods"][k]["apgr"])
            entry["default_vs_best_peer"] = {
                "peer": best_peer,
                "apgr_diff": entry["methods"][name]["apgr"] - entry["methods"][best_peer]["apgr"],
                "bootstrap_95ci": bootstrap_diff(scores, test_scores[best_peer], qst, qlt),
            }
    if not quiet:
        print_pair(entry)
        if "default_vs_best_peer" in entry:
            d = entry["default_vs_best_peer"]
            print(
                f"default - best peer ({d['peer']}): {d['apgr_diff']:+.4f} APGR, "
                f"paired bootstrap 95% CI [{d['bootstrap_95ci'][0]:+.4f}, {d['bootstrap_95ci'][1]:+.4f}]"
            )
    return entry


def split_summary(entry: dict) -> dict:
    """What the repeated-split summary keeps of one pair on one split: each method's test APGR."""
    return {
        "small": entry["small"],
        "large": entry["large"],
        "apgr": {k: v["apgr"] for k, v in entry["methods"].items() if k not in ("random", "oracle")},
        "default_vs_best_peer": entry.get("default_vs_best_peer"),
    }


def summarise_splits(splits: list[dict]) -> list[dict]:
    """Per pair over the splits: the default's APGR minus the split's best peer (chosen on that
    split's test part, the strictest comparison) and minus each peer family's, mean and range, and
    a t interval of the mean difference."""
    default = "hybridllm head/trans (default)"
    out = []
    for i, first in enumerate(splits[0]["pairs"]):
        per = [s["pairs"][i] for s in splits]
        if default not in first["apgr"]:
            continue
        best = np.array(
            [p["apgr"][default] - max(v for k, v in p["apgr"].items() if not k.startswith("hybridllm")) for p in per]
        )
        fam = {}
        for fam_name in ("kNN", "logistic", "MLP", "prompt length"):
            d = np.array(
                [p["apgr"][default] - next(v for k, v in p["apgr"].items() if k.startswith(fam_name)) for p in per]
            )
            fam[fam_name] = {"mean": float(d.mean()), "min": float(d.min()), "max": float(d.max())}
        out.append(
            {
                "small": first["small"],
                "large": first["large"],
                "default_apgr": [p["apgr"][default] for p in per],
                "minus_best_peer": split_stats(best),
                "minus_peer_family": fam,
            }
        )
    return out


def split_stats(d: np.ndarray) -> dict:
    """A difference measured on each of several splits: the values, their mean, a 95 % t interval
    of the mean, and how many are not below zero."""
    from scipy.stats import t

    half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    mean = float(d.mean())
    return {
        "per_split": d.tolist(),
        "mean": mean,
        "t95": [mean - half, mean + half],
        "splits_not_below": int((d >= 0).sum()),
    }


def print_splits(summary: list[dict], n: int) -> None:
    print(f"\nover {n} splits (60/20/20 by hashed id, one salt per split): default - best peer of each split")
    print(f"{'pair':58s} {'mean':>8s} {'95% t interval':>20s} {'not below':>10s} {'vs kNN':>8s} {'vs logistic':>11s}")
    for e in summary:
        d, f = e["minus_best_peer"], e["minus_peer_family"]
        print(
            f"{e['small'] + ' → ' + e['large']:58s} {d['mean']:+8.4f} [{d['t95'][0]:+.4f}, {d['t95'][1]:+.4f}] "
            f"{d['splits_not_below']:>6d}/{n:<3d} {f['kNN']['mean']:+8.4f} {f['logistic']['mean']:+11.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--labels", default="det,prob,trans")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=1, help="repeat over this many hashed-id splits (different salts)")
    ap.add_argument("--encoder", default="static", help="encoder spec: static (default), minilm, or a path")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "routing_quality.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = read_table(DATA)
    encoder = make_encoder(None if args.encoder == "minilm" else args.encoder, max_length=args.max_length)
    cache = EmbeddingCache()
    texts = [r["prompt"] for r in rows]
    emb = embed_texts(encoder, texts, cache, desc=f"{encoder.name} embeddings (cached)")
    by_id = {r["id"]: i for i, r in enumerate(rows)}
    results, splits = [], []
    for split in range(args.splits):
        salt = "benchmark" if split == 0 else f"benchmark-{split}"
        entries = [
            run_pair(rows, emb, by_id, encoder, cache, small, large, salt, args, quiet=split > 0)
            for small, large in PAIRS[: args.pairs]
        ]
        if split == 0:
            results = entries
        splits.append({"salt": salt, "pairs": [split_summary(e) for e in entries]})
    summary = summarise_splits(splits) if args.splits > 1 else None
    if summary:
        print_splits(summary, args.splits)
    payload = {
        "benchmark": "routing_quality",
        "data": str(DATA.relative_to(REPO.parent)),
        "split": "60/20/20 by sha256(benchmark:id)",
        "encoder": {
            "name": encoder.name,
            "spec": args.encoder,
            "backend": encoder.backend,
            "max_length": args.max_length,
        },
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "pairs": results,
        "splits": {"n": args.splits, "per_split": splits, "summary": summary} if args.splits > 1 else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {out} ({payload['seconds']} s)")
    default = "hybridllm head/trans (default)"
    ok = all(
        e["methods"][default]["apgr"]
        > max(
            v["apgr"] for k, v in e["methods"].items() if k not in ("oracle", default) and not k.startswith("hybridllm")
        )
        for e in results
    )
    print("default beats every peer's APGR on every pair:", ok)
    sys.exit(0)


def print_pair(entry: dict) -> None:
    print(
        f"\n{entry['small']} → {entry['large']}  (test n={entry['n_test']}, "
        f"Q_small {entry['Q_small']:.3f}, Q_large {entry['Q_large']:.3f})"
    )
    print(f"{'method':34s} {'APGR':>6s} {'QD@CA20':>8s} {'QD@CA40':>8s} {'CA@QD1':>7s} {'CA@QD5':>7s}")
    for name, m in entry["methods"].items():
        print(
            f"{name:34s} {m['apgr']:6.3f} {m['quality_drop_at_cost_advantage']['20']:8.2f} "
            f"{m['quality_drop_at_cost_advantage']['40']:8.2f} {m['cost_advantage_at_quality_drop']['1']:7.1f} "
            f"{m['cost_advantage_at_quality_drop']['5']:7.1f}"
        )


if __name__ == "__main__":
    main()
