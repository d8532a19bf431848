"""The sessions section of docs/benchmarks.md (and its block in docs/sessions.md), from
benchmarks/results/sessions.json, which ``python benchmarks/sessions.py`` writes. Used by report.py."""

from __future__ import annotations

import json
from pathlib import Path

from _md import table

RESULTS = Path(__file__).resolve().parent / "results"
MT_HEAD = ["target", "routing", "turns to cheap", "switches / session", "cached prompt", "cost / 1k conv.", "quality"]
AGENT_HEAD = ["routing", "switches inside tool loops", "switches / session", "sessions that switch", "cached prompt",
              "cost (% of always-reference)", "requests to cheap"]  # fmt: skip


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def sessions() -> str:
    path = RESULTS / "sessions.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    v, mt, ag = d["views"], d["mt_bench"], d["agent"]
    prices = "; ".join(f"{_short(m)} ${p['in']:g} in / ${p['out']:g} out" for m, p in d["prices_per_1m"].items())
    cheap = _short(next(iter(d["prices_per_1m"])))
    view_rows = []
    for name, x in v["by_view"].items():
        sd = f" ± {x['sd']:.4f}" if x.get("sd") is not None else ""
        same = f"same texts as `{x['same_texts_as']}`" if x.get("same_texts_as") else ""
        mark = "**" if name == v["default"] else ""
        each = ", ".join(f"{a:.4f}" for a in x["apgr"])
        view_rows.append(
            [f"{mark}`{name}`{mark}", f"{x['mean']:.4f}{sd}", each, f"{x['minus_last']['mean']:+.4f}", same]
        )
    mt_rows = []
    for p in mt["points"]:
        for pol, label in (("per_turn", "per turn"), ("session", "session")):
            x = p[pol]
            mt_rows.append([
                f"{p['target_cheap_share']} %", label, f"{x['cheap_turn_share'] * 100:.1f} %",
                f"{x['switches_per_session']:.3f}", f"{x['cached_prompt_share'] * 100:.1f} %",
                f"${x['cost_per_1k_conversations']:.2f}", f"{x['quality']:.4f}",
            ])  # fmt: skip
    for m, x in mt["always"].items():
        mt_rows.append(["–", f"always {_short(m)}", "", "0", "", f"${x['cost_per_1k_conversations']:.2f}",
                        f"{x['quality']:.4f}"])  # fmt: skip
    ag_rows = []
    for name, x in ag["policies"].items():
        ag_rows.append([
            name, f"{x['switches_inside_tool_loops']} of {x['tool_loop_requests']:,}",
            f"{x['switches_per_session']:.2f}",
            f"{x['sessions_with_a_switch'] * 100:.1f} %", f"{x['cached_prompt_share'] * 100:.1f} %",
            f"{x['cost_share_of_always_ref'] * 100:.1f} %", f"{x['cheap_request_share'] * 100:.1f} %",
        ])  # fmt: skip
    minutes = d["seconds"] / 60
    out = [
        "## Conversations and agent loops: sessions",
        "",
        f"`{d['command']}` ({minutes:.0f} min, commit {d['commit']}; docs/sessions.md). Declared: prices per 1M "
        f"tokens {prices}; cached prompt tokens at {(1 - d['cache_discount']) * 100:.0f} % of the input price; a "
        "provider's cache holds a session's previous prompt on the same model; tokens counted with the router's "
        "wordpiece tokenizer.",
        "",
        f"**What the router reads of a conversation.** MT-Bench's {v['n']} two-turn conversations, "
        f"{v['repeats']} × {v['folds']}-fold cross-validation by conversation: each fold's router (the default "
        "recipe, static encoder) trains on the other conversations' turns and scores the held-out second turns; "
        "APGR of the second turn (mean over repeats ± sd). `conversation` reads the system, user and assistant "
        f"messages, the first answer ({cheap}'s: the session's model whenever the second turn's decision matters) "
        "included. The default of "
        f"`hybridllm.routing.conversation` (bold) is `{v['default']}`; the best measured is `{v['best']}`.",
        "",
        table(["view", "second-turn APGR", "per repeat", "− `last`", ""], view_rows, "lrrrl"),
        "",
        "**MT-Bench, per-turn routing against sessions**, at thresholds sending the target share of the pooled "
        "out-of-fold scores to the cheap model. Per turn: each turn routed afresh; session: the rules of "
        "`hybridllm.routing.sessions` (only up). Quality: the judge's score / 10 per turn; a second turn sent to "
        "the other model than the first is scored with that model's own second-turn judgement (MT-Bench has no "
        "answer of one model on the other's history).",
        "",
        table(MT_HEAD, mt_rows, "llrrrrr"),
        "",
        f"**Agent loops** from {ag['traces']} traces of BFCL's multi-turn base category ({ag['source']}, Apache-2.0, "
        "built at benchmark time from the wheel: one assistant tool call per ground-truth call, each answered by a "
        "placeholder tool result, then a short answer), "
        f"{ag['slots']} sessions interleaved, routed by a router trained on all of MT-Bench reading "
        f"`{v['default']}`. Fixed knob: the threshold sending half the requests to each model; the hold: "
        f"`--hold budget={ag['hold_budget']:g}` (the live controller, its target in the models' relative costs). "
        "Cost: money, prompt cache included, as a share of the same traces all on the reference model (cached "
        "alike). No view reads tool results, so inside a tool loop the router's text does not change: at a fixed "
        "knob per-turn routing keeps a loop on one model too, and what breaks loops is a threshold that moves "
        "between a call and its result (a hold, a knob change). BFCL has no per-model outcomes: no quality here.",
        "",
        table(AGENT_HEAD, ag_rows, "lrrrrrr"),
    ]
    return "\n".join(out)


def sessions_overhead() -> str:
    """What sessions add to one client's request (benchmarks/results/sessions_overhead.json, written by
    ``python benchmarks/proxy_overhead.py --mode paired --sessions``)."""
    path = RESULTS / "sessions_overhead.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    r = d["results"][0]
    rows = [
        ["off (`--no-sessions`)", f"{r['baseline_p50_ms']:.3f} ms", f"{r['baseline_p99_ms']:.2f} ms"],
        ["on (the default)", f"{r['p50_ms']:.3f} ms", f"{r['p99_ms']:.2f} ms"],
    ]
    return "\n".join([
        "## What sessions cost the client",
        "",
        f"`python benchmarks/proxy_overhead.py --mode paired --sessions --rounds {r['rounds']}` (commit "
        f"{d['commit']}, {d['cpus']} CPUs): the shipped router served twice at once, sessions off and on, in front "
        "of one fast upstream; one-client wrk runs alternated, the order flipped every round (p50 and p99: the "
        "medians over the rounds). Every request is a conversation's first turn with no session id, the common "
        "case of a client that sends none: its session derived (a keyed BLAKE2b of its system prompt and first "
        "user turn), its tool history read, its pin written in the process's store.",
        "",
        table(["sessions", "one-client p50", "one-client p99"], rows, "lrr"),
        "",
        f"Median paired difference of the one-client p50: {r['median_paired_diff_ms']:+.3f} ms (sessions on faster "
        f"in {r['rounds_faster']} of {r['rounds']} rounds).",
        "",
    ])  # fmt: skip
