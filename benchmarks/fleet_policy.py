"""Routing by expected quality per cost, chosen on validation, against tuned peers: MMLU-Pro.

    python benchmarks/fleet_policy.py            # 3- and 7-model fleets and the 4 shared pairs, 5 seeds
    python benchmarks/fleet_policy.py --seeds 3  # fewer seeds
    python benchmarks/fleet_policy.py --quick    # 1 seed, the 3-model fleet and one pair, a small head

Each seed is a 60/20/20 split of the table by hashed id (salt ``fleet-policy-<seed>``): the router
(``hybridllm train``'s defaults: the head, the memory member, and the rule, scores and memory weight
chosen on validation AIQ, APGR for a pair) trains on 60 %, chooses on 20 %, and everything is
measured on the last 20 %. Costs are active parameters per token (benchmarks/nmodel_quality.py), for
the pairs too. Peers on the same static-encoder embeddings and splits, every hyper-parameter chosen
on the same validation rows by the same measure, and each routed the way it does best on
validation: kNN regressors of every model's quality (k 10..800 × uniform / distance weights, cosine)
routed by predicted quality minus λ·cost or by the threshold on predicted goodness, ridge regression
(α 0.01..1000) likewise; for pairs also logistic regression (C 0.01..10) and an MLP (α 1e-4..1) on
the "good enough" label. The best peer of a case is the one with the highest mean test figure over
the seeds (the strictest choice: made with hindsight). Interval: paired bootstrap over test rows
(each seed's rows resampled, the difference averaged over the seeds), 500 resamples. Results are
written after every case, so an interrupted run keeps what it measured.
Writes benchmarks/results/fleet_policy.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
OUT = REPO / "benchmarks" / "results" / "fleet_policy.json"


def cases() -> list[tuple[str, list[str]]]:
    from nmodel_quality import COSTS, THREE
    from routing_quality import PAIRS

    return [("3 models", THREE), ("7 models", sorted(COSTS, key=COSTS.get))] + [
        (f"{s} → {lg}", [s, lg]) for s, lg in PAIRS
    ]


def _value(qhat: np.ndarray, fleet: Any) -> np.ndarray:
    """Decision scores of predicted qualities [n, M] under quality minus λ·cost."""
    from hybridllm.routing.value import Policy, lambda_scale

    k = fleet.ref
    gap = qhat[:, :k] - qhat[:, k : k + 1]
    return Policy("value", "raw", (), lambda_scale(gap, fleet)).decision_scores(gap + 1.0, fleet)


def peers(x_tr, x_va, x_te, q_tr, y_tr, q_va, fleet, dim: int, pair: bool, seed: int) -> dict[str, np.ndarray]:
    """Every peer family's test decision scores, its hyper-parameters and routing chosen on validation."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPClassifier

    from hybridllm.model.select import routing_metric

    metric = routing_metric(fleet, q_va)
    m = fleet.ref + 1
    out: dict[str, np.ndarray] = {}

    def keep(family: str, tried: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        best = max(tried, key=lambda t: metric(t[1]))
        out[f"{family} ({best[0]})"] = best[2]

    tried = []
    for k in (10, 25, 50, 100, 200, 400, 800):
        for w in ("uniform", "distance"):
            r = KNeighborsRegressor(n_neighbors=k, weights=w, metric="cosine").fit(
                x_tr[:, :dim], np.c_[q_tr[:, :m], y_tr]
            )
            pv, pt = r.predict(x_va[:, :dim]), r.predict(x_te[:, :dim])
            tried.append((f"k={k}, {w}, quality − λ·cost", _value(pv[:, :m], fleet), _value(pt[:, :m], fleet)))
            tried.append((f"k={k}, {w}, threshold", pv[:, m:], pt[:, m:]))
    keep("kNN", tried)
    tried = []
    for a in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0):
        r = Ridge(alpha=a).fit(x_tr, np.c_[q_tr[:, :m], y_tr])
        pv, pt = r.predict(x_va), r.predict(x_te)
        tried.append((f"α={a:g}, quality − λ·cost", _value(pv[:, :m], fleet), _value(pt[:, :m], fleet)))
        tried.append((f"α={a:g}, threshold", pv[:, m:], pt[:, m:]))
    keep("ridge", tried)
    if pair:
        yb = (y_tr[:, 0] >= 0.5).astype(int)
        tried = []
        for c in (0.01, 0.1, 1.0, 10.0):
            r = LogisticRegression(C=c, max_iter=2000).fit(x_tr, yb)
            tried.append((f"C={c:g}", r.predict_proba(x_va)[:, 1:], r.predict_proba(x_te)[:, 1:]))
        keep("logistic", tried)
        tried = []
        for alpha in (1e-4, 1e-2, 1.0):
            r = MLPClassifier(
                hidden_layer_sizes=(256,), alpha=alpha, early_stopping=True, random_state=seed, max_iter=300
            ).fit(x_tr, yb)
            tried.append((f"α={alpha:g}", r.predict_proba(x_va)[:, 1:], r.predict_proba(x_te)[:, 1:]))
        keep("MLP", tried)
    return out


def figures(s: np.ndarray, q: np.ndarray, fleet: Any) -> dict[str, float]:
    """AIQ (APGR for a pair) and the cost (% of always-reference) at ≤ 1 % quality drop."""
    from hybridllm.evaluate.fleet import cost_at_drop, curve_points
    from hybridllm.model.select import routing_metric

    cx, cy = curve_points(s.reshape(len(q), -1), q, fleet)
    return {
        "score": routing_metric(fleet, q)(s),
        "cost_at_1pct_drop": cost_at_drop(cx, cy, float(q[:, fleet.ref].mean())),
    }


def run_case(rows, models, seed: int, quick: bool, emb) -> dict[str, Any]:
    from nmodel_quality import COSTS

    from hybridllm.features.featurize import featurize
    from hybridllm.features.text import routing_text
    from hybridllm.model.fit import TrainOptions, fit_router
    from hybridllm.model.fleet_rows import quality_matrix, usable_rows
    from hybridllm.model.head import HeadConfig, embedding_width
    from hybridllm.routing.policy import Fleet
    from hybridllm.routing.value import Policy
    from hybridllm.stages.labels import label_matrix
    from hybridllm.tables.format import split_rows

    t0 = time.perf_counter()
    kept, _ = usable_rows(rows, models)
    train, val, test = split_rows(kept, [0.6, 0.2, 0.2], salt=f"fleet-policy-{seed}")
    head = HeadConfig(extra=["log_tokens"], seed=seed, **({"members": 2, "epochs": 8} if quick else {}))
    opts = TrainOptions(models=list(models), costs={m: COSTS[m] for m in models}, seed=seed, head=head)
    fitted = fit_router(train, opts, validation=val)
    fleet = Fleet.from_dict(fitted.config["fleet"])
    encoder, cache = emb
    extra = fitted.config["head"]["extra"]

    def feats(rs):
        return featurize(encoder, [routing_text(r["prompt"]) for r in rs], extra, cache)

    x_tr, x_va, x_te = feats(train), feats(val), feats(test)
    policy = Policy.from_dict(fitted.config["policy"])
    router = policy.decision_scores(fitted.weights.predict(x_te), fleet).reshape(len(test), -1)
    q_tr, q_va, q_te = (quality_matrix(p, fleet.models) for p in (train, val, test))
    cands = [fleet.models[i] for i in fleet.candidates]
    y_tr, _ = label_matrix(train, cands, fleet.reference, fitted.config["labels"])
    dim = embedding_width(x_tr.shape[1], list(extra))
    pair = len(models) == 2
    scores = {"router": router, **peers(x_tr, x_va, x_te, q_tr, y_tr, q_va, fleet, dim, pair, seed)}
    choice = fitted.config["policy"].get("choice", {})
    return {
        "seed": seed,
        "n": [len(train), len(val), len(test)],
        "fleet": fleet.to_dict(),
        "choice": {"chosen": choice.get("chosen"), "runner_up": choice.get("runner_up")},
        "methods": {k: figures(v, q_te, fleet) for k, v in scores.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "_scores": scores,
        "_q": q_te,
    }


def paired_interval(units: list[dict], peer: str, n_boot: int = 500, seed: int = 0) -> list[float]:
    """95 % interval of (router − ``peer``) averaged over the seeds, test rows resampled per seed."""
    from hybridllm.model.select import routing_metric
    from hybridllm.routing.policy import Fleet

    rng = np.random.default_rng(seed)
    diffs = np.zeros(n_boot)
    for u in units:
        fleet, q = Fleet.from_dict(u["fleet"]), u["_q"]
        a, b = u["_scores"]["router"], u["_scores"][_family_key(u, peer)]
        for i in range(n_boot):
            idx = rng.integers(0, len(q), len(q))
            metric = routing_metric(fleet, q[idx])
            diffs[i] += (metric(a[idx]) - metric(b[idx])) / len(units)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def _family(name: str) -> str:
    return name.split(" (")[0]


def _family_key(unit: dict, family: str) -> str:
    return next(k for k in unit["_scores"] if _family(k) == family)


def summarise(units: list[dict], pair: bool) -> dict[str, Any]:
    fams = sorted({_family(k) for k in units[0]["methods"]} - {"router"})
    mean = {f: float(np.mean([u["methods"][_family_key(u, f)]["score"] for u in units])) for f in ["router", *fams]}
    cost = {
        f: float(np.mean([u["methods"][_family_key(u, f)]["cost_at_1pct_drop"] for u in units]))
        for f in ["router", *fams]
    }
    best = max(fams, key=lambda f: mean[f])
    per_seed = [u["methods"]["router"]["score"] - u["methods"][_family_key(u, best)]["score"] for u in units]
    return {
        "measure": "APGR" if pair else "AIQ",
        "seeds": len(units),
        "mean": mean,
        "cost_at_1pct_drop": cost,
        "best_peer": best,
        "router_minus_best_peer": mean["router"] - mean[best],
        "router_minus_best_peer_per_seed": per_seed,
        "ci95": paired_interval(units, best),
        "not_below_any_peer": all(mean["router"] >= mean[f] for f in fams),
        "above_every_peer": all(mean["router"] > mean[f] for f in fams),
        "chosen": [u["choice"]["chosen"] for u in units],
        "runner_up": [u["choice"]["runner_up"] for u in units],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 seed, the 3-model fleet and one pair, a small head")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--units",
        default=str(REPO / ".cache" / "fleet_policy"),
        help="where each finished (case, seed) is kept, so a stopped run resumes where it was (delete to start over)",
    )
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from nmodel_quality import MMLU

    from hybridllm.features.cache import EmbeddingCache
    from hybridllm.features.featurize import make_encoder
    from hybridllm.tables.format import read_table

    todo = cases()
    seeds = args.seeds
    if args.quick:
        todo, seeds = [todo[0], todo[2]], 1
    rows = read_table(MMLU)
    emb = (make_encoder("static"), EmbeddingCache())
    t0 = time.perf_counter()
    units: dict[str, list[dict]] = {name: [] for name, _ in todo}
    out: dict[str, Any] = {}
    for seed in range(seeds):  # seed-major: an interrupted run has every case on its first seeds
        for name, models in todo:
            run = functools.partial(run_case, rows, models, seed, args.quick, emb)
            u = cached_unit(Path(args.units), name, seed, args.quick, run)
            units[name].append(u)
            m = u["methods"]
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v['score']:.4f}" for k, v in m.items()), flush=True)
            out = {
                "benchmark": "fleet_policy",
                "command": "python benchmarks/fleet_policy.py" + (" --quick" if args.quick else f" --seeds {seeds}"),
                "data": "shared/data/mmlu_pro.jsonl",
                "encoder": "static",
                "split": "60/20/20 by hashed id, salt fleet-policy-<seed>",
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "seconds": round(time.perf_counter() - t0, 1),
                "cases": [
                    {
                        "name": n,
                        "models": ms,
                        **summarise(units[n], len(ms) == 2),
                        "per_seed": [{k: v for k, v in x.items() if not k.startswith("_")} for x in units[n]],
                    }
                    for n, ms in todo
                    if units[n]
                ],
            }
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print_table(out)
    print(f"\nwrote {args.out} ({out['seconds']} s)")


def cached_unit(root: Path, name: str, seed: int, quick: bool, run: Any) -> dict:
    """``run()``'s unit for (case, seed), kept under ``root`` (JSON + the test scores as .npz) once
    finished: a rerun after a stop loads the finished units instead of training them again."""
    slug = "".join(c if c.isalnum() else "-" for c in name) + f"-seed{seed}" + ("-quick" if quick else "")
    meta, arrays = root / f"{slug}.json", root / f"{slug}.npz"
    if meta.is_file() and arrays.is_file():
        u = json.loads(meta.read_text())
        with np.load(arrays) as z:
            u["_q"] = z["_q"]
            u["_scores"] = {k: z[f"s{i}"] for i, k in enumerate(u.pop("_score_names"))}
        return u
    u = run()
    root.mkdir(parents=True, exist_ok=True)
    names = list(u["_scores"])
    np.savez(arrays, _q=u["_q"], **{f"s{i}": np.asarray(u["_scores"][k]) for i, k in enumerate(names)})
    kept = {k: v for k, v in u.items() if not k.startswith("_")}
    meta.write_text(json.dumps({**kept, "_score_names": names}))
    return u


def print_table(out: dict[str, Any]) -> None:
    print(f"\n{'case':62s} {'measure':>7s} {'router':>7s} {'best peer':>28s} {'diff':>8s} {'95% CI':>20s} seeds")
    for c in out["cases"]:
        lo, hi = c["ci95"]
        best = f"{c['best_peer']} {c['mean'][c['best_peer']]:.4f}"
        print(
            f"{c['name']:62s} {c['measure']:>7s} {c['mean']['router']:7.4f} {best:>28s} "
            f"{c['router_minus_best_peer']:+8.4f} [{lo:+.4f}, {hi:+.4f}] {c['seeds']}"
        )


if __name__ == "__main__":
    main()
