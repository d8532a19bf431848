"""Routing among N models on real outcomes: MMLU-Pro, 7 open models, 12,032 questions.

    python benchmarks/nmodel_quality.py            # 3-model subset and all 7; ~15 min on 2 cores
    python benchmarks/nmodel_quality.py --replot   # redraw docs/img/nmodel_*.png from the JSON
    python benchmarks/nmodel_quality.py --splits 5 # also four more hashed-id splits: mean differences

60/20/20 split by hashed id. The router (hybridllm's defaults: one multi-output head, filler
augmentation) trains on 60 %, selects checkpoints and calibrates on 20 %, and everything below is
measured on the last 20 %. Costs are active parameters per token in billions (public model cards:
Phi-3-mini 3.8, Mistral-7B 7.2, Qwen1.5-7B 7.7, Llama-3.1-8B 8.0, Mixtral-8x7B 12.9 of its 46.7,
Llama-3.1-70B 70.6, Qwen1.5-72B 72.3): compute per generated token, the cost that matters for a
self-hosted fleet. Peers, on the same embeddings and the same labels, run through the same policy:
kNN (cosine on the prompt embedding; k and uniform or similarity weights) and logistic regression
(C) per model, hyper-parameters chosen on validation AIQ. The best
fixed mix is the upper convex hull of the single models. Paired bootstrap (500 resamples of the test
questions) for router minus hull and router minus best peer. Writes
benchmarks/results/nmodel_quality.json and docs/img/nmodel_{3,7}.png.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
MMLU = REPO.parent / "shared" / "data" / "mmlu_pro.jsonl"
COSTS = {
    "Phi-3-mini-4k-instruct": 3.8,
    "Mistral-7B-Instruct-v0.2": 7.2,
    "Qwen1.5-7B-Chat": 7.7,
    "Meta-Llama-3_1-8B-Instruct": 8.0,
    "Mixtral-8x7B-Instruct-v0.1": 12.9,
    "Meta-Llama-3_1-70B-Instruct": 70.6,
    "Qwen1.5-72B-Chat": 72.3,
}
THREE = ["Phi-3-mini-4k-instruct", "Meta-Llama-3_1-8B-Instruct", "Meta-Llama-3_1-70B-Instruct"]


def peer_scores(x_tr, y_tr, x_va, x_te, q_va, fleet, kind, dim=None):
    """Per-model kNN (k, uniform or similarity weights; on the first ``dim`` columns) or logistic
    scores (C); the hyper-parameters with the best validation AIQ."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsRegressor

    from hybridllm.evaluate.fleet import evaluate_fleet

    grid = (
        [(k, w) for k in (10, 25, 50, 100, 200, 400, 800) for w in ("uniform", "distance")]
        if kind == "knn"
        else (0.01, 0.1, 1.0, 10.0)
    )
    best = None
    for h in grid:
        if kind == "knn":  # all models at once, on the prompt embedding alone (cosine), not the scalar features
            m = KNeighborsRegressor(n_neighbors=h[0], weights=h[1], metric="cosine").fit(x_tr[:, :dim], y_tr)
            va_s, te_s = m.predict(x_va[:, :dim]), m.predict(x_te[:, :dim])
        else:
            va, te = [], []
            for k in range(y_tr.shape[1]):
                z = np.concatenate([x_tr, x_tr])
                lab = np.concatenate([np.ones(len(x_tr)), np.zeros(len(x_tr))])
                w = np.concatenate([y_tr[:, k], 1 - y_tr[:, k]])
                m = LogisticRegression(C=h, max_iter=2000).fit(z, lab, sample_weight=w)
                va.append(m.predict_proba(x_va)[:, 1])
                te.append(m.predict_proba(x_te)[:, 1])
            va_s, te_s = np.stack(va, 1), np.stack(te, 1)
        aiq = evaluate_fleet(va_s, q_va, fleet)["router"]["aiq"]
        if best is None or aiq > best[0]:
            best = (aiq, h, te_s)
    assert best is not None
    name = f"peer: kNN (k={best[1][0]}, {best[1][1]})" if kind == "knn" else f"peer: logistic (C={best[1]:g})"
    return name, best[2]


def bootstrap(scores, peers, q, fleet, best_peer, n_boot=500, seed=0):
    from hybridllm.evaluate.fleet import area, curve_points, singles, upper_hull

    rng = np.random.default_rng(seed)
    lo = fleet.costs[0] / fleet.costs[fleet.ref] * 100
    d_hull, d_peer = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(q), len(q))
        qb = q[idx]
        cx, cy = curve_points(scores[idx], qb, fleet)
        r = area(cx, cy, lo, 100.0)
        hull = upper_hull([(s["cost"], s["quality"]) for s in singles(qb, fleet) if s["cost"] <= 100 + 1e-9])
        h = area(np.array([p[0] for p in hull]), np.array([p[1] for p in hull]), lo, 100.0)
        px, py = curve_points(peers[best_peer][idx], qb, fleet)
        d_hull.append(r - h)
        d_peer.append(r - area(px, py, lo, 100.0))
    return [float(np.percentile(d_hull, 2.5)), float(np.percentile(d_hull, 97.5))], [
        float(np.percentile(d_peer, 2.5)),
        float(np.percentile(d_peer, 97.5)),
    ]


def run(models, rows, name, salt: str = "hybridllm", plot: bool = True):
    from hybridllm.evaluate.fleet import evaluate_fleet, plot_fleet
    from hybridllm.features.cache import EmbeddingCache
    from hybridllm.features.featurize import featurize, make_encoder
    from hybridllm.features.text import routing_text
    from hybridllm.model.fit import TrainOptions, fit_router
    from hybridllm.model.fleet_rows import quality_matrix, usable_rows
    from hybridllm.model.head import embedding_width
    from hybridllm.stages.labels import label_matrix
    from hybridllm.tables.format import split_rows

    t0 = time.perf_counter()
    kept, _ = usable_rows(rows, models)
    train, val, test = split_rows(kept, [0.6, 0.2, 0.2], salt=salt)
    costs = {m: COSTS[m] for m in models}
    fitted = fit_router(train, TrainOptions(models=list(models), costs=costs), validation=val)
    from hybridllm.routing.policy import Fleet

    fleet = Fleet.from_dict(fitted.config["fleet"])
    enc = make_encoder("static")
    cache = EmbeddingCache()
    extra = fitted.config["head"]["extra"]

    def feats(rs):
        return featurize(enc, [routing_text(r["prompt"]) for r in rs], extra, cache)

    x_tr, x_va, x_te = feats(train), feats(val), feats(test)
    scores = fitted.weights.predict(x_te).reshape(len(test), -1)
    q_va, q_te = quality_matrix(val, fleet.models), quality_matrix(test, fleet.models)
    cands = [fleet.models[i] for i in fleet.candidates]
    y_tr, _ = label_matrix(train, cands, fleet.reference, "trans")
    dim = embedding_width(x_tr.shape[1], list(extra))
    peers = dict(peer_scores(x_tr, y_tr, x_va, x_te, q_va, fleet, k, dim) for k in ("knn", "logistic"))
    report = evaluate_fleet(scores, q_te, fleet, peers)
    best_peer = max(peers, key=lambda p: report[p]["aiq"])
    ci_hull, ci_peer = bootstrap(scores, peers, q_te, fleet, best_peer)
    report.update(
        {
            "name": name,
            "n_train": len(train),
            "n_val": len(val),
            "router_minus_hull_ci95": ci_hull,
            "router_minus_best_peer": {"peer": best_peer, "ci95": ci_peer},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    if plot:
        plot_fleet(
            str(REPO / "docs" / "img" / f"nmodel_{len(models)}.png"), report, f"{name}: {len(test)} test questions"
        )
    return report


def summarise_splits(per_split: list[dict]) -> dict:
    """Router AIQ minus the best peer of each split (picked on that split's test part), minus each
    peer family and minus the best fixed mix, over the splits: mean, a 95 % t interval, how many
    splits are not below."""
    from routing_quality import split_stats

    def peer(r: dict, fam: str) -> float:
        return next(v["aiq"] for k, v in r.items() if k.startswith(f"peer: {fam}"))

    router = np.array([r["router"]["aiq"] for r in per_split])
    return {
        "router_aiq": router.tolist(),
        "minus_best_peer": split_stats(
            router - np.array([max(peer(r, "kNN"), peer(r, "logistic")) for r in per_split])
        ),
        "minus_knn": split_stats(router - np.array([peer(r, "kNN") for r in per_split])),
        "minus_logistic": split_stats(router - np.array([peer(r, "logistic") for r in per_split])),
        "minus_hull": split_stats(router - np.array([r["hull"]["aiq"] for r in per_split])),
    }


def main() -> None:
    import argparse

    from hybridllm.evaluate.fleet import plot_fleet
    from hybridllm.tables.format import read_table

    ap = argparse.ArgumentParser()
    ap.add_argument("--replot", action="store_true", help="redraw the PNGs from the JSON of the last run")
    ap.add_argument("--splits", type=int, default=1, help="repeat over this many hashed-id splits (different salts)")
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    if args.replot:
        d = json.loads((REPO / "benchmarks" / "results" / "nmodel_quality.json").read_text())
        for r in d["runs"]:
            path = REPO / "docs" / "img" / f"nmodel_{len(r['singles'])}.png"
            plot_fleet(str(path), r, f"{r['name']}: {r['n']} test questions")
        return

    rows = read_table(MMLU)
    out = {"benchmark": "nmodel_quality", "costs": COSTS, "runs": []}
    fleets = ((THREE, "3 models"), (sorted(COSTS, key=COSTS.get), "7 models"))
    for models, name in fleets:
        r = run(models, rows, name, plot=args.splits == 1)  # the figures stay those of the one-split run
        out["runs"].append({k: v for k, v in r.items()})
        print_run(r, name)
    if args.splits > 1:
        out["splits"] = {}
        for models, name in fleets:
            per = [out["runs"][[n for _, n in fleets].index(name)]]
            per += [run(models, rows, name, salt=f"hybridllm-{i}", plot=False) for i in range(1, args.splits)]
            out["splits"][name] = summarise_splits(per)
        print(f"\nover {args.splits} splits (60/20/20 by hashed id, one salt per split): router AIQ minus")
        print(f"{'fleet':10s} {'':16s} {'mean':>8s} {'95% t interval':>20s} {'not below':>10s}")
        for name, sm in out["splits"].items():
            for key in ("minus_best_peer", "minus_knn", "minus_logistic", "minus_hull"):
                d = sm[key]
                print(
                    f"{name:10s} {key[6:]:16s} {d['mean']:+8.4f} [{d['t95'][0]:+.4f}, {d['t95'][1]:+.4f}] "
                    f"{d['splits_not_below']:>6d}/{args.splits}"
                )
    path = (
        REPO / "benchmarks" / "results" / ("nmodel_quality.json" if args.splits == 1 else "nmodel_quality_splits.json")
    )
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {path}")


def print_run(r: dict, name: str) -> None:
    print(f"\n{name} (test n = {r['n']}; reference {r['fleet']['reference']})")
    print(f"{'method':34s} {'AIQ':>7s} {'cost @ QD<=1%':>14s}")
    methods = ["router", "hull", "random", *[k for k in r if k.startswith("peer:")]]
    for m in methods:
        print(f"{m:34s} {r[m]['aiq']:7.4f} {r[m]['cost_at_1pct_drop']:13.1f}%")
    print(f"{'oracle':34s} {'':7s} {r['oracle']['cost']:13.1f}%  (quality {r['oracle']['quality']:.3f})")
    for s in r["singles"]:
        print(f"  single {s['model']:28s} cost {s['cost']:6.1f}%  quality {s['quality']:.3f}")
    lo, hi = r["router_minus_hull_ci95"]
    p = r["router_minus_best_peer"]
    print(f"router - hull AIQ 95% CI [{lo:+.4f}, {hi:+.4f}]")
    print(f"router - {p['peer']} AIQ 95% CI [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]")


if __name__ == "__main__":
    main()
