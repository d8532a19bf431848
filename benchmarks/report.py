"""Write docs/benchmarks.md, and the figures in the README's headline, from the benchmark results in
benchmarks/results/*.json: every figure in them comes from a JSON file a benchmark wrote, none is
typed by hand.

    python benchmarks/report.py            # rewrite docs/benchmarks.md
    python benchmarks/report.py --check    # exit 1 when either is not what the JSON gives

``tests/test_docs.py`` runs the check, so a rerun benchmark whose page was not regenerated fails CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _md import table
from report_retrain import retrain_loop
from report_sessions import sessions, sessions_overhead

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent
DOC = HERE.parent / "docs" / "benchmarks.md"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- headline:begin", "<!-- headline:end -->"


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def pct(x: float, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f} %"


def routing_quality() -> str:
    d = load("routing_quality")
    out = [
        "## Routing quality on MMLU-Pro, two models",
        "",
        f"`python benchmarks/routing_quality.py` ({d['seconds'] / 60:.0f} min): four pairs of the shared MMLU-Pro "
        f"table, split {d['split']}; every method is tuned on the validation part and scored on the test part. "
        "APGR: area under the quality curve as the share sent to the large model grows (random = 0.5); QD @ CA: "
        "quality drop (%) when that share of queries goes to the small model; CA @ QD: the share that can go to "
        "the small model within that quality drop. With one 0/1 sample per model and query the three label kinds "
        "are the same labels (t* = 0), so the default row stands for all three.",
    ]
    for p in d["pairs"]:
        out += ["", f"**{p['small']} → {p['large']}** (test n = {p['n_test']}; Q_small {p['Q_small']:.3f}, "
                f"Q_large {p['Q_large']:.3f})", ""]  # fmt: skip
        rows = []
        for name, m in p["methods"].items():
            if name.startswith("hybridllm head/") and "(default)" not in name:
                continue  # identical labels on this table (see above)
            bold = "**" if "default" in name else ""
            rows.append([
                f"{bold}{name}{bold}", f"{bold}{m['apgr']:.3f}{bold}",
                f"{m['quality_drop_at_cost_advantage']['20']:.2f}", f"{m['quality_drop_at_cost_advantage']['40']:.2f}",
                f"{m['cost_advantage_at_quality_drop']['1']:.1f}", f"{m['cost_advantage_at_quality_drop']['5']:.1f}",
            ])  # fmt: skip
        out.append(table(["method", "APGR", "QD @ CA 20%", "QD @ CA 40%", "CA @ QD ≤ 1%", "CA @ QD ≤ 5%"], rows))
        v = p.get("default_vs_best_peer")
        if v:
            lo, hi = v["bootstrap_95ci"]
            out += ["", f"Default − best peer ({v['peer']}): {v['apgr_diff']:+.4f} APGR (paired bootstrap 95 % CI "
                    f"{lo:+.3f} … {hi:+.3f})."]  # fmt: skip
    s = load("routing_quality_splits")
    out += [
        "",
        f"**Over {s['splits']['n']} splits** (`python benchmarks/routing_quality.py --labels trans --splits "
        f"{s['splits']['n']} --out benchmarks/results/routing_quality_splits.json`, {s['seconds'] / 60:.0f} min): the "
        "comparison repeated on differently salted 60/20/20 splits, every method retuned on each; the best peer is "
        "picked per split on its test part, which favours the peers.",
        "",
    ]
    rows = []
    for p in s["splits"]["summary"]:
        b, fam = p["minus_best_peer"], p["minus_peer_family"]
        rows.append([
            f"{p['small']} → {p['large']}", f"{b['mean']:+.4f}", f"{b['t95'][0]:+.4f} … {b['t95'][1]:+.4f}",
            f"{b['splits_not_below']} / {s['splits']['n']}", *(f"{fam[k]['mean']:+.4f}" for k in ("kNN", "logistic", "MLP")),
        ])  # fmt: skip
    out.append(table(["pair", "default − best peer, mean", "95 % t interval", "splits not below", "− kNN",
                      "− logistic", "− MLP"], rows))  # fmt: skip
    return "\n".join(out)


def nmodel_quality() -> str:
    d = load("nmodel_quality")
    out = [
        "## Routing among N models",
        "",
        "`python benchmarks/nmodel_quality.py`: routers over three and seven models of the MMLU-Pro table, costs in "
        "parameters (billions), against every single model, the best fixed mix of them (what splitting traffic at "
        "random in the best proportions gives), random routing between the cheapest and the reference model, and "
        "peers run through the same policy. AIQ: average quality over the cost range; cost in % of always using the "
        "reference model.",
    ]
    names = {"router": "**hybridllm router**", "hull": "best fixed mix of models", "random": "random (cheapest | best)"}
    for r in d["runs"]:
        out += ["", f"**{r['name']}** (test n = {r['n']}; reference {r['fleet']['reference']})", ""]
        rows = [[names.get(k, k), f"{r[k]['aiq']:.4f}", f"{r[k]['cost_at_1pct_drop']:.1f} %"]
                for k in ("router", "hull", "random", *[k for k in r if k.startswith("peer:")])]  # fmt: skip
        o = r["oracle"]
        rows.append(["oracle", "", f"{o['cost']:.1f} % (quality {o['quality']:.3f})"])
        out.append(table(["method", "AIQ", "cost at ≤ 1 % quality drop"], rows))
        singles = ", ".join(f"{x['model']} {x['cost']:.1f} % / {x['quality']:.3f}" for x in r["singles"])
        lo, hi = r["router_minus_hull_ci95"]
        p = r["router_minus_best_peer"]
        out += ["", f"Single models (cost / quality): {singles}. Router − best fixed mix: AIQ 95 % CI "
                f"[{lo:+.4f}, {hi:+.4f}]; router − {p['peer']}: [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]."]  # fmt: skip
    s = load("nmodel_quality_splits")
    n = len(next(iter(s["splits"].values()))["router_aiq"])
    rows = []
    for name, sm in s["splits"].items():
        for key in ("minus_best_peer", "minus_knn", "minus_logistic", "minus_hull"):
            x = sm[key]
            rows.append([name, key.removeprefix("minus_").replace("_", " "), f"{x['mean']:+.4f}",
                         f"{x['t95'][0]:+.4f} … {x['t95'][1]:+.4f}", f"{x['splits_not_below']} / {n}"])  # fmt: skip
    out += ["", f"Over {n} splits (`python benchmarks/nmodel_quality.py --splits {n}`), router AIQ minus:", ""]
    out.append(table(["fleet", "minus", "mean", "95 % t interval", "splits not below"], rows, "llrrr"))
    return "\n".join(out)


def fleet_policy() -> str:
    """Routing by expected quality per cost, chosen on validation, against tuned peers (issue 37)."""
    path = RESULTS / "fleet_policy.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    out = [
        "## Quality per cost against tuned peers",
        "",
        f"`{d['command']}`: the router as `hybridllm train` builds it (the rule, cheapest good enough or predicted "
        "quality minus λ·cost; raw or per-model calibrated scores; the memory member's weight: all chosen on "
        "validation AIQ, APGR for a pair) against peers tuned on the same validation rows, on the same static-encoder "
        "embeddings and splits (60/20/20 by hashed id, one salt per seed): kNN regressors (k 10…800 × uniform / "
        "distance), ridge (α 0.01…1000), each routed by quality minus λ·cost or by the threshold, whichever validates "
        "better; for pairs also logistic regression and an MLP. Costs: active parameters. Figures are means over the "
        "seeds on the test rows; the best peer is the one with the highest mean (chosen with hindsight); the interval "
        "is a paired bootstrap over test rows of the router minus that peer, averaged over the seeds.",
        "",
    ]
    rows = []
    for c in d["cases"]:
        m, cost, best = c["mean"], c["cost_at_1pct_drop"], c["best_peer"]
        peers = ", ".join(f"{f} {v:.4f}" for f, v in m.items() if f != "router")
        lo, hi = c["ci95"]
        kinds = sorted({f"{x['rule']}/{x['scores']}, memory {x['memory_mix']:g}" for x in c["chosen"] if x})
        rows.append([c["name"], c["measure"], f"{m['router']:.4f}", peers, f"{c['router_minus_best_peer']:+.4f} vs {best}",
                     f"{lo:+.4f} … {hi:+.4f}", f"{cost['router']:.1f} % / {cost[best]:.1f} %", str(c["seeds"]),
                     "; ".join(kinds)])  # fmt: skip
    out.append(table(["case", "measure", "router", "peers", "router − best peer", "95 % CI",
                      "cost at ≤ 1 % drop (router / best peer)", "seeds", "chosen on validation"], rows,
                     "llrlrrrrl"))  # fmt: skip
    asked = int(d["command"].split("--seeds ")[1]) if "--seeds " in d["command"] else 1
    done = min(c["seeds"] for c in d["cases"])
    if done < asked:
        out += ["", f"The run was stopped after {done} to {max(c['seeds'] for c in d['cases'])} of the {asked} seeds "
                "asked for (the seeds column): the figures are over the seeds it completed."]  # fmt: skip
    met = sum(c["not_below_any_peer"] for c in d["cases"])
    above = sum(c["above_every_peer"] for c in d["cases"])
    out += ["", f"Router not below any peer on {met} of {len(d['cases'])} cases, above every peer on {above} "
            f"({d['seconds']:.0f} s on {d['machine']['cpus']} cores)."]  # fmt: skip
    return "\n".join(out)


def router_speed() -> str:
    d = load("router_speed")
    t = d["targets"]
    rows = []
    for r in d["results"]:
        train = f"{r['train_seconds_cold_cache']:.0f} s" if "train_seconds_cold_cache" in r else "not run"
        rows.append([r["encoder"], f"{r.get('prompt_tokens_median', 54):.0f}", f"{r['single_p50_ms']:.2f} ms",
                     f"{r['single_p99_ms']:.2f} ms", f"{r['batch64_prompts_per_s']:.0f} prompts/s", train])  # fmt: skip
    return "\n".join([
        "## Router speed",
        "",
        f"`python benchmarks/router_speed.py`: one decision (encoder + head) and batches of 64, on {d['machine']['cpus']} "
        f"cores. Targets: p50 under {t['single_p50_ms']} ms, {t['batch64_prompts_per_s']} prompts/s in batches, "
        f"training on 10k rows under {t['train_seconds_10k']} s.",
        "",
        table(["encoder", "median tokens", "decision p50", "p99", "batch 64 throughput", "train 10k rows (cold)"], rows),
    ])  # fmt: skip


def steering() -> str:
    d = load("reroute_robustness")
    point = "30% to small"
    pairs = d["pairs"]
    head = ["suffix family", *[f"{p['pair'].split(' (')[0]} {w}" for p in pairs for w in ("before", "after")]]

    def cell(f: dict[str, float]) -> str:
        return f"{f['to_large']:.0%} / {f['to_small']:.0%}"

    rows = [[fam, *[cell(p[point][w]["families"][fam]) for p in pairs for w in ("before", "after")]]
            for fam in pairs[0][point]["before"]["families"]]  # fmt: skip
    rows.append(
        ["held-out APGR (these prompts)", *[f"{p[point][w]['apgr']:.3f}" for p in pairs for w in ("before", "after")]]
    )
    dd = load("reroute_defences")
    drows = []
    for name, r in dd["results"].items():
        a = r[point]
        drows.append([name, f"{a['apgr']:.3f}", f"{a['max_flip']:.0%}", f"{r.get('full_test_apgr', a['apgr']):.3f}"])
    return "\n".join([
        "## Routing that a prompt cannot steer",
        "",
        "`python benchmarks/reroute_robustness.py`: the share of decisions that flip (to the large model / to the small "
        f"one) when a suffix of each family is appended to held-out prompts, at the operating point \"{point}\", before "
        "and after the defences of docs/method.md (filler augmentation, hardened routing text).",
        "",
        table(head, rows),
        "",
        f"Defences tried (`python benchmarks/reroute_defences.py`, {dd['n']} prompts, {dd['tries']} random tries each): "
        "held-out APGR on these prompts, the worst family's flip rate, and APGR on the whole test split where measured.",
        "",
        table(["defence", "APGR", "worst flip", "test APGR"], drows),
    ])  # fmt: skip


def proxy() -> str:
    d = load("proxy_overhead")
    direct = d["results"]["direct"]
    rows = []
    for name, r in d["results"].items():
        share = d["share_of_direct_requests_per_s"].get(name, 1.0)
        added = d["added_p50_ms_1_client"].get(name)
        rows.append([name, f"{r['requests_per_s']:,.0f}", pct(share), "" if added is None else f"{added:.2f} ms",
                     f"{r['cpu_ms_per_request']:.2f} ms", r["errors"], r["lost"]])  # fmt: skip
    rss = d["rss_mb_over_requests"]
    st = load("stream_relay")
    srows = [[name, r["chunks"], f"{r['p50_ms']:.3f} ms", f"{r['p99_ms']:.3f} ms", f"{r['max_ms']:.3f} ms"]
             for name, r in st["results"].items()]  # fmt: skip
    pp = load("proxy_paired_routers")
    prow = [[r["router"], r["rounds"], f"{r['baseline_p50_ms']:.3f} ms", f"{r['p50_ms']:.3f} ms",
             f"{r['median_paired_diff_ms']:+.3f} ms", f"{r['rounds_faster']} / {r['rounds']}"] for r in pp["results"]]  # fmt: skip
    # every side-by-side run with per-round figures (older runs of another shape are kept in git history only)
    runs = sorted(p.stem for p in RESULTS.glob("proxy_overhead_vs_*.json") if "rounds_requests_per_s" in p.read_text())
    vs = "\n".join(_before_after(n) for n in runs)
    paired = load("proxy_paired")
    qrow = [[r["router"], r["rounds"], f"{r['baseline_p50_ms']:.3f} ms", f"{r['p50_ms']:.3f} ms",
             f"{r['median_paired_diff_ms']:+.3f} ms", f"{r['rounds_faster']} / {r['rounds']}"] for r in paired["results"]]  # fmt: skip
    vs += "\n".join(
        [
            "",
            f"This release against {paired['baseline_commit']} (`python benchmarks/proxy_overhead.py --mode paired "
            f"--baseline-src SRC_OF_{paired['baseline_commit']}`, at {paired['commit']}): one-client p50, alternating rounds.",
            "",
            table(
                [
                    "router",
                    "rounds",
                    f"{paired['baseline_commit']} p50",
                    "p50",
                    "median paired difference",
                    "rounds faster",
                ],
                qrow,
            ),
        ]
    )
    return "\n".join([
        "## What the proxy costs",
        "",
        f"`python benchmarks/proxy_overhead.py --rounds {d['rounds']} --shipped` (commit {d['commit']}): {d['client']} "
        f"with {d['concurrency']} connections against one OpenAI-protocol upstream on 127.0.0.1, on {d['cpus']} cores "
        "shared by the load generator, the upstream and the proxy. The floor rows are relays with nothing but "
        "routing; LiteLLM's proxy passes requests through without routing. Direct: "
        f"{direct['requests_per_s']:,.0f} requests/s, {direct['p50_ms_1_client']:.2f} ms p50 at one client.",
        "",
        table(["path", "requests/s", "of direct", "added p50, 1 client", "CPU per request", "errors", "lost"], rows),
        "",
        f"Proxy memory over the run: {rss[0][1]:.1f} MB at start, {rss[-1][1]:.1f} MB after {rss[-1][0]:,} requests.",
        "",
        f"Streams (`python benchmarks/proxy_overhead.py --mode stream`, {st['rounds']} rounds of {st['streams_per_round']} streams, "
        f"{st['chunks_per_stream']} chunks {st['interval_ms']} ms apart): delay of each chunk as the client sees it; "
        f"hybridllm over the bare relay, median of paired rounds: {st['over_bare_relay_median_paired_p50_ms']:+.3f} ms.",
        "",
        table(["path", "chunks", "p50", "p99", "max"], srows),
        "",
        "Routers side by side (`python benchmarks/proxy_overhead.py --mode paired --routers`): one-client p50 through the proxy, "
        "alternating rounds.",
        "",
        table(["router", "rounds", "baseline p50", "p50", "median paired difference", "rounds faster"], prow),
        vs,
    ])  # fmt: skip


def _before_after(name: str) -> str:
    """One ``proxy_overhead.py --baseline-src`` run: this checkout against an older one, side by side."""
    v = load(name)
    vrows = [[n, f"{r['requests_per_s']:,.0f}", ", ".join(f"{x:,.0f}" for x in r["rounds_requests_per_s"]),
              f"{v['added_p50_ms_1_client'][n]:.2f} ms", ", ".join(f"{x:.2f}" for x in r["rounds_p50_ms_1_client"])]
             for n, r in v["results"].items() if n != "direct"]  # fmt: skip
    return "\n".join([
        "",
        f"Against {v['baseline_commit']}, side by side (`python benchmarks/proxy_overhead.py --baseline-src "
        f'SRC_OF_{v["baseline_commit"]} --rounds {v["rounds"]} --only "shipped router" --no-floor --workers 0 '
        f"--rss-requests 0 --seconds 10 --concurrency {v['concurrency']} --out benchmarks/results/{name}.json`, at "
        f"{v['commit']}): {v['client']}, {v['concurrency']} connections, both checkouts serving the shipped router; "
        "the median round and every round.",
        "",
        table(["path", "requests/s", "rounds", "added p50, 1 client", "1-client p50 by round (ms)"], vrows),
    ])  # fmt: skip


def pipeline() -> str:
    c = load("collect_throughput")
    crows = [
        [r["path"], r["tokens"], f"{r['seconds']:.1f} s", f"{r['tokens_per_s']:.1f}", f"{r['ratio']:.3f}"]
        for r in c["runs"]
    ]
    e = load("engine_scaling")
    erows = [
        [r["job"], r["engine"], r["workers"], f"{r['seconds']:.1f} s", f"{r['per_s']:.1f} {r['unit']}/s"]
        for r in e["results"]
    ]
    est = e["estimate_16_nodes"]
    return "\n".join([
        "## Collection and engines",
        "",
        f"`python benchmarks/collect_throughput.py`: {c['model']}, {c['prompts']} prompts, {c['max_tokens']} tokens "
        f"each, {c['threads']} threads; `collect` against llama.cpp called directly.",
        "",
        table(["path", "tokens", "time", "tokens/s", "of direct"], crows),
        "",
        f"`python benchmarks/engine_scaling.py`: {e['requests']} requests to an upstream answering in "
        f"{e['latency_s'] * 1000:.0f} ms, in-process and on Ray ({e['machine']}).",
        "",
        table(["job", "engine", "workers", "time", "rate"], erows, "llrrr"),
        "",
        f"Estimate for 16 nodes ({est['assumptions']}): collecting {est['requests']:,} requests in "
        f"{est['collect_minutes']:.0f} min, the embedding pass in {est['embedding_pass_seconds']:.0f} s.",
    ])  # fmt: skip


def default_pair() -> str:
    b = load("default_pair_baselines")
    rows = [[name, f"{r['apgr']:.3f}", f"{r['ca_at_qd1']:.1f} %"] for name, r in b["results"].items()]
    d = b["default_point"]
    w = load("default_pair_walltime")["summary"]
    wrows = [["all at the large model", f"{w['all_large_seconds']:.1f} s", "", f"{w['quality_all_large']:.3f}"],
             ["all at the small model", f"{w['all_small_seconds']:.1f} s", "", f"{w['quality_all_small']:.3f}"]]  # fmt: skip
    for o in w["operating_points"].values():
        wrows.append([f"routed, {o['knob']}", f"{o['routed_seconds']:.1f} s ({pct(o['saving'])} faster)",
                      pct(o["small_share"]), f"{o['quality_routed']:.3f}"])  # fmt: skip
    h = load("head_selection")
    hrows = [
        [r["recipe"], r["seed"], f"{r['apgr']:.3f}", f"{r['ci95'][0]:.3f} … {r['ci95'][1]:.3f}"] for r in h["runs"]
    ]
    return "\n".join([
        "## The default local pair",
        "",
        f"`python benchmarks/default_pair_baselines.py`: the shipped router on the {b['n']} held-out questions of "
        "data/default-pair against baselines that need no router (APGR, share to the small model at ≤ 1 % drop).",
        "",
        table(["method", "APGR", "CA @ QD ≤ 1%"], rows),
        "",
        f"CA @ QD ≤ 1% is the best point of each method's curve on these questions, chosen with hindsight. The "
        f"shipped default (plain `hybrid`, {d['knob']}: the threshold {d['threshold']:.3f} saved in the artifact, "
        f"calibrated on validation) sends {d['small_share']:.1f} % of them to the small model, at a quality drop of "
        f"{d['quality_drop']:.1f} %.",
        "",
        f"`python benchmarks/default_pair_walltime.py --n {w['n']}`: both local models answering {w['n']} test prompts "
        "one request at a time on these 2 cores.",
        "",
        table(["path", "wall time", "to the small model", "quality"], wrows),
        "",
        f"`python benchmarks/head_selection.py` ({h['folds']}-fold cross-validation on {h['table']}): the head's "
        f"validation choices made on APGR or on log-likelihood, with and without the memory member. Mean out-of-fold "
        f"APGR: on APGR {h['mean_apgr']:.3f}, on log-likelihood {h['mean_loss']:.3f}, plus memory {h['mean_loss+memory']:.3f}.",
        "",
        table(["recipe", "seed", "out-of-fold APGR", "95 % interval"], hrows, "lrrr"),
    ])  # fmt: skip


def install() -> str:
    path = RESULTS / "install_size.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    rows = [[r["name"], f"`{r['command']}`", f"{r['seconds']:.0f} s", f"{r['mb']:,.0f} MB", r["packages"],
             "yes" if r["torch"] else "no"] for r in d["installs"]]  # fmt: skip
    checks = "; ".join(f"`{c['command']}` exit {c['rc']}" for c in d["lean_checks"])
    return "\n".join([
        "## Install size",
        "",
        f"`python benchmarks/install_size.py` (commit {d['commit']}): fresh virtualenvs from the local package index, "
        f"{d['note']}. In the plain install: {checks}.",
        "",
        table(["install", "command", "time", "size", "packages", "torch"], rows, "llrrrl"),
    ])  # fmt: skip


def labels() -> str:
    """Deterministic, probabilistic and transformed labels on the multi-sample tables."""
    path = RESULTS / "labels.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())

    def diff(c: dict[str, Any], kind: str, m: str, digits: int) -> str:
        v = c[f"{kind}_minus_det"][m]
        lo, hi = v["ci95"]
        star = "**" if lo > 0 or hi < 0 else ""
        return f"{star}{v['diff']:+.{digits}f}{star} ({lo:+.{digits}f} … {hi:+.{digits}f})"

    rows = []
    for c in sorted(d["configs"], key=lambda c: (c["score"].startswith("labels"), "ROUGE" in c["name"], c["gap"])):
        k = c["kinds"]
        t = c["labels"]["trans"]["t_star"]
        rows.append([
            c["name"], c["n"], f"{c['gap']:+.3f}", f"{c['labels']['prob']['share_differing_from_det']:.0%}",
            f"{t:.3g}", f"{k['det']['apgr']:.3f}", f"{k['prob']['apgr']:.3f}", f"{k['trans']['apgr']:.3f}",
            diff(c, "prob", "apgr", 3), diff(c, "trans", "apgr", 3),
            diff(c, "prob", "ca_qd1", 1), diff(c, "prob", "ca_qd5", 1),
        ])  # fmt: skip
    return "\n".join([
        "## Label kinds on multi-sample tables",
        "",
        f"`{d['command']}` ({d['seconds'] / 60:.0f} min): {d['models'][0]} → {d['models'][1]}, 3 samples per model and "
        f"query; {d['folds']}-fold cross-validation × {d['seeds']} seeds, the same folds for every label kind "
        f"({d['recipe']}); measures on the pooled out-of-fold scores against the mean quality over the samples, "
        f"averaged over seeds. Intervals: {d['bootstrap']}; bold where the 95 % interval excludes 0. Gap: Q_large − "
        "Q_small on the truth the row is judged by. ≠ det: labels that differ from `det`. CA: cost advantage (share "
        "to the small model, %) at ≤ 1 % / ≤ 5 % quality drop.",
        "",
        table(["table, score", "n", "gap", "≠ det", "t*", "APGR det", "prob", "trans", "prob − det",
               "trans − det", "CA@1 % prob − det", "CA@5 % prob − det"], rows, "lrrrrrrrllll"),
    ])  # fmt: skip


def drift() -> str:
    """The knob's promise on a replayed stream whose mix changes."""
    path = RESULTS / "drift.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    rows = []
    for sc in d["scenarios"]:
        for label, c in sc["configs"].items():
            tol = f"± {c['tolerance_pp']:g}" if c["measure"] != "quality_drop" else f"≤ +{c['tolerance_pp']:g}"
            cov = "" if c["interval_coverage"] is None else f"{c['interval_coverage']:.0%}"
            width = "" if c["interval_width_mean"] is None else f"{c['interval_width_mean']:.0f} pp"
            scopes = [
                "" if not c.get(k) else f"{c[k]['coverage']:.0%} · {c[k]['width_mean']:.1f} pp"
                for k in ("sliding", "since_start")
            ]
            rows.append([
                sc["name"], label, f"{c['measure']} {c['target']:g} {tol} pp", f"{c['held_share']:.0%}",
                f"{c['share_away_mean']:.1f}", f"{c['spend_mean']:.1f}", f"{c['quality_drop_mean']:.2f}", cov, width,
                *scopes,
            ])  # fmt: skip
    return "\n".join([
        "## Holding the knob under drift",
        "",
        f"`{d['command']}` ({d['seconds'] / 60:.0f} min): {d['scenarios'][0]['requests']} requests per stream through "
        f"the real proxy, the mix changing half-way ({d['scenarios'][0]['mix']}); shadow rate {d['shadow_rate']:.0%}; "
        f"windows of {d['window']} requests after {d['warmup']} of warm-up. Upstreams and the judge answer from the "
        "table (a stand-in for a real judge, so that each window's truth is known). Held: share of windows within "
        "the tolerance. Coverage: windows whose true quality drop lies in the live 95 % interval from that window's "
        f"shadow pairs (width: its mean). Sliding and since start: the two estimates the server shows, at each "
        f"window's end, from the last {d.get('live_pairs', 200)} shadow pairs and from every pair so far, against the "
        "truth over the requests they span (coverage · mean width). The since-start estimate is cumulative, so its "
        "coverage over the windows of one run is close to a single draw: an early miss stays in it for thousands of "
        "requests (read a low figure there as one run's luck of the shadow draws, and the per-window coverage as the "
        "interval's calibration). Away: % of requests not sent to the reference; spend: % of always-reference.",
        "",
        table(["stream", "routing", "target", "held", "away %", "spend %", "drop %", "coverage", "width",
               "sliding", "since start"], rows, "lllrrrrrrrr"),
        "",
        *_drift_phases(d),
        "![target, static and controlled per window](drift.png)",
    ])  # fmt: skip


def _drift_phases(d: dict[str, Any]) -> list[str]:
    """Per phase of the stream, and the quality hold against the static threshold where it holds."""
    rows, notes = [], []
    for sc in d["scenarios"]:
        for label, c in sc["configs"].items():
            ph = c.get("phases")
            if not ph:
                continue
            rows.append([sc["name"], label] + [f"{ph[p]['held_share']:.0%} · {ph[p]['share_away_mean']:.1f}"
                                               for p in ("before", "after")])  # fmt: skip
            vs = c.get("against_static")
            if vs:
                where = ", ".join(f"{p} the change: away {h:.1f} % against {s:.1f} %"
                                  for p, (h, s) in vs["away_in_those_phases"].items()) or "in no phase"  # fmt: skip
                h, s = vs["away_in_windows_static_holds"]
                notes.append(f"- {sc['name']}, {label}: where the static threshold holds, {where}; "
                             f"over the single windows where it holds, {h:.1f} % against {s:.1f} %.")  # fmt: skip
    if not rows:
        return []
    need = []
    for sc in d["scenarios"]:
        for phase, v in (sc.get("pairs_needed") or {}).items():
            need.append([sc["name"], phase, f"{v['away']:.1f}", f"{v['q_ref']:.2f}", f"{v['sd_per_pair']:.2f}",
                         f"{v['pairs_for_3pp']:,.0f}", f"{v['requests_for_3pp']:,.0f}"])  # fmt: skip
    learn = [] if not need else [
        "How fast any quality hold can learn: at the static threshold for the quality target, per phase, the share "
        "routed away, the reference's mean quality, the standard deviation of one shadow pair's contribution to the "
        f"drop (one judged sample per answer), and the pairs (requests at R = {d['shadow_rate']:.0%}) that a 95 % "
        "one-sided bound needs to come within 3 pp of the estimate (1.645² sd² / 0.03²):",
        "",
        table(["stream", "phase", "away %", "Q_ref", "sd per pair", "pairs", "requests"], need, "llrrrrr"),
        "",
    ]  # fmt: skip
    return [
        *learn,
        "Per phase of the stream (held share of windows · % away from the reference):",
        "",
        table(["stream", "routing", "before the change", "after the change"], rows, "llrr"),
        "",
        "The quality hold against the static threshold for the same target, where the static one holds (in >= 90 % "
        "of a phase's windows):",
        "",
        *notes,
        "",
    ]


def live_overhead() -> str:
    """What shadow checks and the controller cost the client."""
    path = RESULTS / "proxy_live_control.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    first = d["results"][0]
    rows, notes = [], []
    for r in d["results"]:
        hold = r["router"].rpartition("hold ")[2]
        p99 = {k: f"{r[k]:.2f} ms" if k in r else "–" for k in ("baseline_p99_ms", "p99_ms")}  # older runs: none
        rows += [
            [
                hold,
                "plain",
                f"{r['baseline_p50_ms']:.3f} ms",
                p99["baseline_p99_ms"],
                f"{r['baseline_requests_per_s']:,.0f}",
            ],
            ["", "shadow 5 % + hold", f"{r['p50_ms']:.3f} ms", p99["p99_ms"], f"{r['requests_per_s']:,.0f}"],
        ]
        notes.append(
            f"- `--hold {hold}`: median paired difference of the one-client p50 {r['median_paired_diff_ms']:+.3f} ms "
            f"(the live side faster in {r['rounds_faster']} of {r['rounds']} rounds)."
        )
    return "\n".join([
        "## What live control costs the client",
        "",
        f"`python benchmarks/proxy_overhead.py --mode paired --live --rounds {first['rounds']}` (commit {d['commit']}): "
        "per hold, the shipped router served twice at once, plain and with `--shadow-rate 0.05 --judge … --hold …`, "
        "in front of one fast upstream (which also answers as the judge); one-client wrk runs alternated (p50 and "
        f"p99 the medians over the rounds), then {first['clients']} connections for requests/s.",
        "",
        table(["hold", "serve", "one-client p50", "one-client p99", "requests/s"], rows, "llrrr"),
        "",
        *notes,
        "",
        "The requests/s difference is the shadow traffic itself: each shadowed request adds an upstream call and "
        "two judge calls in the same process. Under the quality hold, one routed request in 50 also waits for the "
        "control step (below), which is more than one in a hundred: that is the one-client p99's difference, "
        "under a millisecond, against an upstream that answers at once (a real model takes hundreds).",
        *hold_step(),
    ])  # fmt: skip


def hold_step() -> list[str]:
    """The quality hold's control step: the one-pass curve against each threshold on its own."""
    path = RESULTS / "hold_step.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    r0 = d["results"][0]
    return [
        "",
        f"The quality hold's control step, every 50 routed requests in the request path "
        f"(`python benchmarks/hold_step.py`, commit {d['commit']}): {r0['pairs']:,} shadow pairs, "
        f"{r0['thresholds']:,} calibrated thresholds, median of repeated runs; the step as the controller runs it "
        "(every threshold from one cumulative sum) against estimating each threshold on its own, falling, up to "
        "the first over the target (both choose the same threshold):",
        "",
        table(["models", "target", "threshold chosen", "each threshold on its own", "control step"], [
            [str(r["models"]), f"{r['target']:g} %", f"{r['threshold']:.3f}", f"{r['per_threshold_ms']:.1f} ms",
             f"{r['step_ms']:.2f} ms"]
            for r in d["results"]
        ], "rrrrr"),
    ]  # fmt: skip


def tenant_bounds() -> str:
    """Budget caps per key, every answer charged, feedback and the request index, against a tenant."""
    path = RESULTS / "tenant_bounds.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    old_path = RESULTS / "tenant_bounds_before.json"
    old = json.loads(old_path.read_text()) if old_path.exists() else None
    before = {(r["deployment"], r["start"], r["max_tokens"]): r for r in (old or {}).get("overshoot", [])}
    rows = []
    for r in d["overshoot"]:
        b = before.get((r["deployment"], r["start"], r["max_tokens"]))
        was = [] if old is None else ["–"] * 3
        if b is not None:
            was = [f"{b['spend_over_cap']:.2f}", f"{b['overshoot_in_requests']:.2f}", f"{b['innocent_refused']} of 8"]
        rows.append([
            r["deployment"], r["start"], "10^12" if r["max_tokens"] == 10**12 else f"{r['max_tokens']:,}",
            f"{r['answered']} / {r['refused']}", f"{r['spend']:,.0f}", f"{r['spend_over_cap']:.2f}",
            f"{r['overshoot_in_requests']:.2f}", f"{r['innocent_refused']} of 8", *was,
        ])  # fmt: skip
    r0, c = d["overshoot"][0], d["charging"]
    dearest = max(d["overshoot"], key=lambda r: r["largest_request_cost"])
    head = ["deployment", "start", "max_tokens", "answered / refused", "spend", "spend / cap", "over (requests)",
            "innocent refused"]  # fmt: skip
    if old is not None:
        head += [f"{old['commit']}: spend / cap", "over (requests)", "innocent refused"]
    gap = {"none": "no gap", "over-counted": "the gap an over-count", "under-counted": "the gap an under-count"}
    out = [
        "## What a tenant can spend and store",
        "",
        f"`{d['command']}` ({d['seconds'] / 60:.0f} min, commit {d['commit']}): a real `hybridllm serve` (the shipped "
        "router, client keys, a models file with prices; the large model's `max_output_tokens` = "
        f"{d['max_output_tokens'][LARGE_NAME]:,}) in front of an OpenAI-protocol upstream in its own process that "
        "generates long answers at a steady pace, reports usage honestly and bills what it generated (a caller that "
        "hangs up is billed the words made so far); every cost below is the upstream's bill × price.",
        "",
        f"**Per-key overshoot.** Key `team-a` sends {r0['concurrent']} concurrent long answers (half streamed; one "
        f"costs up to {dearest['largest_request_cost']:,.0f}, its bound {dearest['request_bound'] or 0:,.0f}) "
        f"against its cap of {r0['cap']:,.0f} (`--on-cap refuse`); the innocent key `team-b` sends 8 short ones "
        f"against its own cap of {r0['innocent_cap']:,.0f}, which they fit: 4 among team-a's, 4 at once after them. Cold: a "
        "fresh server; warm: after one cheap answer. Over: spend past the cap in units of team-a's dearest single "
        "request (0 when under the cap)."
        + ("" if old is None else f" Beside it the same run on commit {old['commit']}, before per-key "
           "reservations."),
        "",
        table(head, rows, "lll" + "r" * (len(head) - 3)),
        "",
        f"**Every answer charged.** {c['requests']:,} mixed requests ({c['concurrency']} at a time: chat and "
        "completions, streamed and not, routed and to each model by name, `max_tokens` from none to 10^12), a tenth "
        "hung up by their client at a random point ("
        + ", ".join(f"{n} {k}" for k, n in sorted(c["outcomes"].items()) if k.startswith("hung"))
        + f"): `hybridllm_cost` counted {c['counted']:,.1f} of the upstream's {c['upstream_billed']:,.1f} "
        f"(**{pct(c['counted_ratio'], 2)}**, {gap[c['gap']]}); upstream calls the proxy cut short: "
        f"{c['upstream_calls_cut']}."
        + ("" if old is None or "charging" not in old else
           f" On {old['commit']}: {pct(old['charging']['counted_ratio'], 2)} ({old['charging']['gap']}; "
           f"{old['charging']['upstream_calls_cut']} upstream calls cut short, and "
           f"{old['charging']['outcomes'].get('status 429', 0)} requests with `max_tokens` 10^12 refused before their "
           "model's first answer: their reservation, the bound from `max_tokens` unclamped, was past a cap of 10^9)."),
    ]  # fmt: skip
    f = d["feedback"]
    out += [
        "",
        f"**Outcomes log per feedback post** (`--outcomes --log-prompts`, {f['requests']} requests with a "
        f"{f['prompt_bytes'] / 1000:,.0f} kB prompt each, then {f['repeated_posts']} more posts on the first one's id): "
        f"a request's first post adds {f['first_post_bytes_mean']:,} bytes (its prompt once, in its `request` record, "
        f"and {f['first_post_bytes_beyond_prompt']:,} bytes beside it); a repeated post adds "
        f"{f['repeated_post_bytes_mean']:g} bytes ("
        + ", ".join(f"{n} × {code}" for code, n in f["repeated_statuses"].items())
        + f"). In all {f['log_bytes']:,} bytes "
        f"for {f['requests'] + f['repeated_posts']} posts, where a copy of the prompt per post would be "
        f"{f['prompt_logged_every_post_would_be']:,}.",
        "",
        "**The request index** (`/v1/feedback`'s, default bound 64 MiB) after "
        f"{d['index'][0]['requests']:,} requests:",
        "",
        table(["store", "prompts", "size", "counted against the bound", "requests kept"], [
            [r["store"], r["prompts"],
             f"{r['heap_bytes'] / 2**20:.1f} MiB heap" if "heap_bytes" in r else f"{r['disk_bytes'] / 2**20:.1f} MiB on disk",
             f"{r['counted_bytes'] / 2**20:.1f} MiB" if "counted_bytes" in r else "–", f"{r['entries']:,}"]
            for r in d["index"]
        ], "llrrr"),
    ]  # fmt: skip
    return "\n".join(out)


LARGE_NAME = "qwen2.5-1.5b"  # tenant_bounds.py's large model


def hold_money() -> str:
    """The budget hold in money against the hold in relative costs, on a stream of varied cost."""
    path = RESULTS / "hold_money.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    small, large = (d["prices"][m] for m in d["models"])
    price = "{price_in:g} / {price_cached_in:g} / {price_out:g}"
    rows = [
        [
            f"{r['target']:g} %", r["hold"], "–" if r["horizon"] is None else f"{r['horizon']:g}",
            " / ".join(f"{x:.1f} %" for x in r["money_share"]),
            f"{r['within_2pp'] * 100:.0f} % of {r['windows']}", f"{r['within_2pp_worst_stream'] * 100:.0f} %",
            f"{r['window_min']:.1f}–{r['window_max']:.1f} %",
            "–" if r["estimate_mean_abs_err"] is None else f"{r['estimate_mean_abs_err']:.2f} pp",
        ]
        for r in d["results"]
    ]  # fmt: skip
    head = ["target", "hold", "horizon", "money share (each stream)", f"windows within ±{d['tolerance_pp']:g} pp",
            "worst stream", "window range", "hold's own error"]  # fmt: skip
    return "\n".join([
        "## The budget hold in money",
        "",
        f"`python benchmarks/hold_money.py` (commit {d['commit']}): `--hold budget=X` with the shipped router, in "
        "process, on streams of the default pair's routing table (real GSM8K and MMLU-Pro questions of "
        "`../shared/data/`, each with both models' real prompt and completion token counts from the collection "
        f"journals: {d['rows']['gsm8k']} GSM8K, {d['rows']['mmlu']} MMLU-Pro), drawn in three phases of MMLU-Pro "
        + ", ".join(f"{x * 100:.0f} %" for x in d["phases_mmlu_share"])
        + f" (the rest GSM8K), {d['requests']:,} requests per stream, {len(d['seeds'])} streams. Every request "
        f"carries a {d['system_tokens']:,}-token system prompt the provider has cached. Declared prices per 1M "
        f"tokens (prompt / cached prompt / completion): {d['models'][0]} {price.format(**small)}, "
        f"{d['models'][1]} {price.format(**large)}. Truth: each request's real cost on the model it went to "
        "against the reference's own answer to the same question; windows of "
        f"{d['window']} requests after {d['warmup']}, pooled over the streams.",
        "",
        table(head, rows, "llrrrrrr"),
        "",
        "- `relative`: the hold before, on the models' relative costs (the blended price a models file gives); "
        "one request to a model counts the same whatever it asks, so the cheap questions the router sends to the "
        "small model stand for more savings than they bring.",
        "- `money`: `Hold(..., money=CostModel(...))` (`hybridllm.routing.money`): each request priced on every "
        "model, before its call from its estimated prompt tokens and each model's typical answer, after it from "
        "its usage (prompt, cached and completion tokens) and, for the models that did not answer, this answer's "
        "length times the ratio of the models' lengths (from the router's training table); `no table`: from the "
        "defaults; `shadow 5 %`: the ratio also learnt from shadow pairs, fewer and noisier than the table here; "
        "`horizon 20`: the running error repaid as slowly as the relative hold does.",
        "- `hold's own error`: the mean gap between the hold's realised figure and the truth at each window's end.",
        *([
            "- `knob in money`, `knob, relative costs`: no hold; every request names `hybrid-budget-X`, resolved "
            "before the call from the calibration's shares (docs/control.md, budget in money): at each model's "
            "typical cost on this traffic, learnt from every answer (`hybridllm.routing.money_knob.MoneyBudget`), or "
            "at the relative costs. An open loop: where the stream's mix is not the calibration's, the shares and "
            "the spend move with it; what is left to the hold.",
        ] if any(r["hold"].startswith("knob") for r in d["results"]) else []),
    ])  # fmt: skip


SECTIONS: list[Callable[[], str]] = [
    routing_quality, nmodel_quality, fleet_policy, labels, router_speed, steering, proxy, live_overhead, drift, hold_money, tenant_bounds,
    pipeline,
    default_pair, install, sessions, sessions_overhead, retrain_loop,
]  # fmt: skip
#: other pages with a block generated here, between <!-- NAME:begin --> and <!-- NAME:end -->
BLOCKS = {
    "labels": (REPO / "docs/method.md", labels),
    "drift": (REPO / "docs/control.md", drift),
    "sessions": (REPO / "docs/sessions.md", sessions),
    "sessions_overhead": (REPO / "docs/sessions.md", sessions_overhead),
}


def with_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin", f"<!-- {name}:end -->"
    if begin not in text:
        return text
    i, j = text.index(begin), text.index(end) + len(end)
    note = f"{begin} (generated by `python benchmarks/report.py` from benchmarks/results/*.json) -->"
    inner = body.split("\n", 2)[2] + "\n" if body else ""  # the section without its heading
    return text[:i] + note + "\n" + inner + end + text[j:]


def headline() -> str:
    """The README's few figures, each with the benchmark it comes from."""
    base = load("default_pair_baselines")
    b, d = base["results"], base["default_point"]
    rq = load("routing_quality_splits")["splits"]
    nm = {r["name"]: r for r in load("nmodel_quality")["runs"]}
    sp = next(r for r in load("router_speed")["results"] if r["encoder"].startswith("static"))
    po = load("proxy_overhead")
    shipped = "hybridllm, shipped router"
    rows = [
        [
            "the shipped router, default pair's 214 held-out questions",
            f"APGR {b['shipped router']['apgr']:.3f} (random {b['random']['apgr']:.3f}, oracle {b['oracle']['apgr']:.3f}); "
            f"the shipped default (`hybrid`) sends {d['small_share']:.1f} % to the small model (quality drop "
            f"{d['quality_drop']:.1f} %); the curve's best point at ≤ 1 % drop, chosen with hindsight, "
            f"{b['shipped router']['ca_at_qd1']:.1f} %",
            "default_pair_baselines",
        ],
        [
            "two models, 4 MMLU-Pro pairs, 5 splits",
            "router − best tuned peer, APGR: "
            + ", ".join(f"{p['minus_best_peer']['mean']:+.4f}" for p in rq["summary"]),
            "routing_quality",
        ],
        *[
            [
                f"{name}, MMLU-Pro",
                f"AIQ {r['router']['aiq']:.4f} vs {r['hull']['aiq']:.4f} for the best fixed mix of models; "
                f"cost at ≤ 1 % drop {r['router']['cost_at_1pct_drop']:.1f} % of always-best",
                "nmodel_quality",
            ]
            for name, r in nm.items()
        ],
        [
            "one routing decision (static encoder + head)",
            f"{sp['single_p50_ms']:.2f} ms p50, {sp['batch64_prompts_per_s']:,.0f} prompts/s in batches of 64",
            "router_speed",
        ],
        [
            "what the proxy adds, one client",
            f"{po['added_p50_ms_1_client'][shipped]:.2f} ms p50 "
            f"(LiteLLM's pass-through proxy: {po['added_p50_ms_1_client']['LiteLLM proxy (pass-through)']:.2f} ms); "
            f"{pct(po['share_of_direct_requests_per_s'][shipped])} of direct requests/s at 64 clients",
            "proxy_overhead",
        ],
    ]
    path = RESULTS / "install_size.json"
    if path.exists():
        ins = {r["name"]: r for r in json.loads(path.read_text())["installs"]}
        rows.append(
            [
                "install",
                f"plain {ins['plain']['mb']:,.0f} MB (no torch); with the train extra "
                f"{ins['with the train extra']['mb']:,.0f} MB",
                "install_size",
            ]
        )
    path = RESULTS / "tenant_bounds.json"
    if path.exists():
        tb = json.loads(path.read_text())
        c, over = tb["charging"], max(r["overshoot_in_requests"] for r in tb["overshoot"])
        rows.append([
            "every answer charged, caps per key",
            f"{pct(c['counted_ratio'], 1)} of the upstream's usage counted under 10 % client hang-ups; per-key "
            f"overshoot ≤ {over:.2f} requests under {tb['overshoot'][0]['concurrent']} concurrent (cold, warm, "
            "max_tokens 10^12, 2 replicas on Redis)",
            "tenant_bounds",
        ])  # fmt: skip
    body = table(["what", "measured", "benchmark"], [[a, m, f"`{src}`"] for a, m, src in rows], "lll")
    return f"{BEGIN} (generated by `python benchmarks/report.py` from benchmarks/results/*.json) -->\n{body}\n{END}"


def with_headline(readme: str) -> str:
    i, j = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:i] + headline() + readme[j:]


def render() -> str:
    parts = [
        "# Benchmarks",
        "",
        "<!-- generated by `python benchmarks/report.py` from benchmarks/results/*.json; edit the script, not this "
        "page -->",
        "",
        "Every figure here was measured on this project's reference machine (2 CPU cores, no GPU) by the command "
        "named with it, and written to `benchmarks/results/`. Older runs are in git history.",
    ]
    for section in SECTIONS:
        text = section()
        if text:
            parts += ["", text]
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md is stale")
    args = ap.parse_args()
    text, readme = render(), README.read_text()
    pages = [(DOC, text, DOC.read_text() if DOC.exists() else ""), (README, with_headline(readme), readme)]
    for name, (page, section) in BLOCKS.items():
        if page.exists():
            have = page.read_text()
            pages.append((page, with_block(have, name, section()), have))
    if args.check:
        stale = [str(p) for p, want, have in pages if want != have]
        if stale:
            print(f"{', '.join(stale)} stale: run python benchmarks/report.py", file=sys.stderr)
            sys.exit(1)
        return
    for page, want, have in pages:
        if want != have:
            page.write_text(want)
    print(f"wrote {DOC}, the headline of {README} and the generated blocks of {', '.join(n for n in BLOCKS)}")


if __name__ == "__main__":
    main()
