"""The "Learning from traffic" section of docs/benchmarks.md, from benchmarks/results/retrain_loop.json,
which ``python benchmarks/retrain_loop.py`` writes. Used by report.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _md import table

RESULTS = Path(__file__).resolve().parent / "results"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _scenario(sc: dict[str, Any]) -> list[str]:
    """One scenario's table: APGR for a pair, AIQ for a fleet (a file written before fleets has
    neither ``metric`` nor ``models``: a pair's APGR)."""
    held, metric = sc["held_out"], sc.get("metric", "apgr")
    models = sc.get("models") or [sc["small"], sc["large"]]
    name = metric.upper()
    rows = [["start (trained on the starting slice)", f"{held['start'][metric]:.3f}", "–", ""]]
    for st in sc["steps"]:
        key = f"challenger@{st['pairs']}"
        g = st["gate"]
        verdict = "promoted" if g["promote"] else "kept the champion"
        gate = f"{g['challenger'] - g['champion']:+.3f} {_ci(g['diff_ci95'])} on {g['n']} recent pairs: {verdict}"
        if "skipped" in st:  # runs from before the gate left repeated prompts out have no count
            gate += f" ({st['skipped'].get('train_rows_held_out_prompt', 0):,} repeats left out of training)"
        rows.append([f"challenger at {st['pairs']:,} pairs", f"{held[key][metric]:.3f}",
                     _ci(held[key]["minus_start_ci95"]), gate])  # fmt: skip
    rows.append(["ceiling (the whole stream's table rows)", f"{held['ceiling'][metric]:.3f}",
                 _ci(held["ceiling"]["minus_start_ci95"]), ""])  # fmt: skip
    champ = " → ".join(f"{st['champion_after']:.3f}" for st in sc["steps"])
    served = sc["served"]
    calls = ""
    if "shadow_calls" in served and served.get("shadow_pairs"):
        calls = (f" {served['shadow_calls']:,} shadow calls for {served['shadow_pairs']:,} shadow pairs "
                 f"({served['shadow_calls'] / served['shadow_pairs']:.2f} a pair")  # fmt: skip
        calls += f', `shadow_sides = "{sc["shadow_sides"]}"`).' if sc.get("shadow_sides") else ")."
    costs = f" (costs {' : '.join(f'{c:g}' for c in sc['costs'])})" if len(models) > 2 and sc.get("costs") else ""
    old = (
        ""
        if any("skipped" in st for st in sc["steps"])
        else (
            " This run predates the gate leaving repeated prompts out of training: its gate may have scored "
            "prompts the challenger was trained on (the held-out figures are unaffected)."
        )
    )
    return [
        f"### {sc['name']}: {' → '.join(models)}{costs}",
        "",
        f"{sc['held_out_rows']:,} held-out rows, {sc['start_rows']} to start, {sc['stream_rows']:,} in the stream "
        f"(`{sc['table']}`); {served['requests']:,} requests served through the proxy in {served['seconds']:.0f} s."
        + calls
        + (f" Run at `{sc['commit']}` on {sc['date']}, {sc['seconds'] / 60:.0f} min." if "commit" in sc else "")
        + old,
        "",
        table(
            ["router", f"held-out {name}", "minus start, 95 % interval", "the gate (challenger − champion)"],
            rows,
            "lrrl",
        ),
        "",
        f"Promotions: {sc['promotions']} of {len(sc['steps'])}; promotions that lowered the held-out {name}: "
        f"{sc['promotions_worse']}. The champion's held-out {name} after each step: {champ}.",
        "",
    ]


def retrain_loop() -> str:
    path = RESULTS / "retrain_loop.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    steps = ", ".join(f"{n:,}" for n in d["steps"])
    timed = all("seconds" in sc for sc in d["scenarios"])  # scenarios rerun one by one carry their own
    took = f" ({d['seconds'] / 60:.0f} min)" if timed else " (each scenario with `--only NAME`)"
    lines = [
        "## Learning from traffic",
        "",
        f"`python benchmarks/retrain_loop.py{' --quick' if d['quick'] else ''}`{took}: a "
        "router trained on a small slice serves a stream through the real proxy with "
        f"{d['shadow_rate'] * 100:g} % shadow checks and the outcomes log on; a stand-in judge rates each answer "
        f"from the table's score of that sample. At {steps} shadow pairs, `hybridllm.model.retrain` trains a "
        "challenger on the log so far and its gate compares it with the champion on the log's most recent 20 % "
        "(paired bootstrap, 95 %; an earlier pair that repeats a prompt asked there does not train the challenger: "
        "the stream draws prompts with replacement); a promoted challenger is the next step's champion. Every router "
        "is then "
        "scored on a held-out slice of the table that was never served nor trained on (paired bootstrap "
        "intervals of the difference to the starting router): APGR for a pair, AIQ for a fleet, whose "
        'shadow checks ask every model (`shadow_sides = "all"`). [docs/retrain.md](retrain.md) explains the loop.',
        "",
    ]
    for sc in d["scenarios"]:
        lines += _scenario(sc)
    return "\n".join(lines).rstrip() + "\n"
