"""Turn benchmark JSON into the Markdown tables pasted into README.md.

python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def routing_quality() -> str:
    d = json.loads((RESULTS / "routing_quality.json").read_text())
    out = []
    for p in d["pairs"]:
        out.append(
            f"\n**{p['small']} → {p['large']}** (test n = {p['n_test']}; "
            f"Q_small {p['Q_small']:.3f}, Q_large {p['Q_large']:.3f})\n"
        )
        out.append("| method | APGR | QD @ CA 20% | QD @ CA 40% | CA @ QD ≤ 1% | CA @ QD ≤ 5% |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, m in p["methods"].items():
            bold = "**" if "default" in name else ""
            out.append(
                f"| {bold}{name}{bold} | {bold}{m['apgr']:.3f}{bold} | {m['quality_drop_at_cost_advantage']['20']:.2f} "
                f"| {m['quality_drop_at_cost_advantage']['40']:.2f} | {m['cost_advantage_at_quality_drop']['1']:.1f} "
                f"| {m['cost_advantage_at_quality_drop']['5']:.1f} |"
            )
        if "default_vs_best_peer" in p:
            v = p["default_vs_best_peer"]
            out.append(
                f"\nDefault − best peer ({v['peer']}): {v['apgr_diff']:+.4f} APGR "
                f"(paired bootstrap 95% CI {v['bootstrap_95ci'][0]:+.3f} … {v['bootstrap_95ci'][1]:+.3f})."
            )
    return "\n".join(out)


def router_speed() -> str:
    d = json.loads((RESULTS / "router_speed.json").read_text())
    out = [
        "| encoder | median tokens | decision p50 | p99 | batch 64 throughput | train 10k rows (cold) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in d["results"]:
        train = f"{r['train_seconds_cold_cache']:.0f} s" if "train_seconds_cold_cache" in r else "not run"
        out.append(
            f"| {r['encoder']} | {r.get('prompt_tokens_median', 54):.0f} | {r['single_p50_ms']:.2f} ms "
            f"| {r['single_p99_ms']:.2f} ms | {r['batch64_prompts_per_s']:.0f} prompts/s | {train} |"
        )
    return "\n".join(out)


def reroute_robustness(point: str = "30% to small") -> str:
    """Flip rates before/after per suffix family, both pairs side by side: 'to large / to small'."""
    d = json.loads((RESULTS / "reroute_robustness.json").read_text())
    pairs = d["pairs"]
    head = "| suffix family | " + " | ".join(f"{p['pair'].split(' (')[0]} before | after" for p in pairs) + " |"
    out = [head, "| --- |" + " ---: | ---: |" * len(pairs)]

    def cell(f: dict) -> str:
        return f"{f['to_large']:.0%} / {f['to_small']:.0%}"

    for fam in pairs[0][point]["before"]["families"]:
        cells = [
            f"{cell(p[point]['before']['families'][fam])} | {cell(p[point]['after']['families'][fam])}" for p in pairs
        ]
        out.append(f"| {fam} | " + " | ".join(cells) + " |")
    apgr = [f"{p[point]['before']['apgr']:.3f} | {p[point]['after']['apgr']:.3f}" for p in pairs]
    out.append("| held-out APGR (these prompts) | " + " | ".join(apgr) + " |")
    return "\n".join(out)


def nmodel_quality() -> str:
    d = json.loads((RESULTS / "nmodel_quality.json").read_text())
    out = []
    for r in d["runs"]:
        ref = r["fleet"]["reference"]
        out.append(f"\n**{r['name']}** (test n = {r['n']}; reference {ref}; cost = % of always using it)\n")
        out.append("| method | AIQ | cost at ≤ 1 % quality drop |")
        out.append("| --- | ---: | ---: |")
        names = {
            "router": "**hybridllm router**",
            "hull": "best fixed mix of models",
            "random": "random (cheapest or best)",
        }
        for k in ("router", "hull", "random", *[k for k in r if k.startswith("peer:")]):
            out.append(f"| {names.get(k, k)} | {r[k]['aiq']:.4f} | {r[k]['cost_at_1pct_drop']:.1f} % |")
        o = r["oracle"]
        out.append(f"| oracle | | {o['cost']:.1f} % (quality {o['quality']:.3f}) |")
        singles = ", ".join(f"{x['model']} {x['cost']:.1f} % / {x['quality']:.3f}" for x in r["singles"])
        out.append(f"\nSingle models (cost / quality): {singles}.")
        lo, hi = r["router_minus_hull_ci95"]
        p = r["router_minus_best_peer"]
        out.append(
            f"Router − best fixed mix: AIQ 95 % CI [{lo:+.4f}, {hi:+.4f}]; router − {p['peer']}: "
            f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] (paired bootstrap, 500 resamples)."
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(routing_quality())
    print()
    print(router_speed())
    print()
    print(reroute_robustness())
    print()
    print(nmodel_quality())
