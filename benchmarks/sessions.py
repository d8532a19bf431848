"""Routing conversations and agent loops: what the router should read of a conversation, and per-turn
routing against session routing (docs/sessions.md).

    python benchmarks/sessions.py            # 2 repeats of 5-fold CV by conversation, 200 BFCL traces
    python benchmarks/sessions.py --quick    # 1 repeat, one-member heads, 40 BFCL traces (a smoke run)

1. Views (issue 35 item 4). MT-Bench's 80 two-turn conversations (``../shared/data/mt_bench.jsonl``),
   5-fold cross-validated by conversation: each fold's router (``fit_router``, the default recipe,
   static encoder) trains on the other conversations' first and second turns, the second turns in
   the view measured, and scores the held-out second turns; APGR over the pooled out-of-fold scores.
   The assistant text in the "conversation" view is Mixtral's first answer: under the session rules
   the second turn's decision only matters for a session still on the cheap model.
2. MT-Bench, per turn vs session, at thresholds sending 20 … 80 % of turns to the cheap model: the
   out-of-fold scores of the best view, the session rules of :mod:`hybridllm.routing.sessions`.
3. Agent loops from BFCL (``session_traces.py``): 16 sessions interleaved, routed by a router
   trained on all of MT-Bench, per turn at a fixed knob (half the requests to each model), per
   turn under ``--hold budget``, and as sessions under either; switches inside tool loops,
   cached-prompt share, cost.

Declared: prices (per 1M tokens) and cache discount below; tokens counted with the router's own
wordpiece tokenizer (a stand-in for each model's); a provider's cache holds the previous request's
prompt of a session on the same model (no minimum length); a second turn sent to the other model
than the first is scored with that model's own second-turn judgement (MT-Bench holds no answer of
one model on another's history). BFCL has no per-model outcomes: no quality there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from session_traces import BFCL, bfcl_traces, bfcl_wheel, mt_bench_conversations

REPO = Path(__file__).resolve().parents[1]
MT_BENCH = REPO.parent / "shared" / "data" / "mt_bench.jsonl"
CHEAP, REF = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
#: declared list prices, $ per 1M tokens (input, output)
PRICES = {CHEAP: (0.60, 0.60), REF: (10.0, 30.0)}
CACHE_DISCOUNT = 0.9  # cached prompt tokens at 10 % of the input price
MODELS = (CHEAP, REF)
HOLD_BUDGET = 30.0
SHARES = (20, 40, 60, 80)


def blended(m: str) -> float:
    return (3 * PRICES[m][0] + PRICES[m][1]) / 4  # the models file's cost from prices


def cost(m: str, prompt: int, cached: int, completion: int, moved: bool) -> float:
    from hybridllm.routing.money import Price
    from hybridllm.routing.sessions import turn_cost

    pin, pout = PRICES[m]
    return turn_cost(prompt, cached, completion, Price(pin, pout, pin * (1 - CACHE_DISCOUNT)), moved=moved)


def second_turn(conv: dict[str, Any], answer_of: str) -> list[dict[str, Any]]:
    u1, u2 = conv["turns"]
    return [{"role": "user", "content": u1}, {"role": "assistant", "content": conv["responses"][answer_of][0]},
            {"role": "user", "content": u2}]  # fmt: skip


def rows_for(convs: list[dict[str, Any]], view: str) -> list[dict[str, Any]]:
    from hybridllm.routing.conversation import view_text

    out = []
    for c in convs:
        q = c["turn_quality"]
        out.append({"id": f"{c['id']}/1", "prompt": c["turns"][0], "quality": {m: [q[m][0]] for m in MODELS}})
        text = view_text(second_turn(c, CHEAP), view)
        out.append({"id": f"{c['id']}/2", "prompt": text, "quality": {m: [q[m][1]] for m in MODELS}})
    return out


def options(seed: int, quick: bool) -> Any:
    from dataclasses import replace

    from hybridllm import TrainOptions

    opts = TrainOptions(small=CHEAP, large=REF, costs={m: blended(m) for m in MODELS}, seed=seed)
    return replace(opts, head=replace(opts.head, members=1)) if quick else opts


def views(convs: list[dict[str, Any]], repeats: int, folds: int, quick: bool) -> dict[str, Any]:
    """APGR of each view on held-out second turns, and (repeat 0) every conversation's out-of-fold
    scores: turn 1, and turn 2 with either model's first answer in the history."""
    from hybridllm.evaluate.metrics import evaluate_scores
    from hybridllm.model.fit import fit_router
    from hybridllm.model.router import Router
    from hybridllm.routing.conversation import VIEWS, view_text
    from hybridllm.tables.format import split_rows

    ql2 = np.array([c["turn_quality"][REF][1] for c in convs])
    qs2 = np.array([c["turn_quality"][CHEAP][1] for c in convs])
    index = {c["id"]: i for i, c in enumerate(convs)}
    out: dict[str, Any] = {v: {"apgr": []} for v in VIEWS}
    oof: dict[str, dict[str, np.ndarray]] = {}
    for r in range(repeats):
        parts = split_rows(convs, [1 / folds] * folds, f"sessions-views-{r}")
        done: dict[tuple[str, ...], str] = {}  # a view whose texts another view already gave: its scores
        for view in VIEWS:
            key = tuple(view_text(second_turn(c, who), view) for who in MODELS for c in convs)
            if key in done:
                out[view]["apgr"].append(out[done[key]]["apgr"][-1])
                out[view]["same_texts_as"] = done[key]
                oof.setdefault(view, oof.get(done[key], {}))
                continue
            done[key] = view
            s2, s1, s2ref = np.zeros(len(convs)), np.zeros(len(convs)), np.zeros(len(convs))
            for f, test in enumerate(parts):
                train = rows_for([c for g, p in enumerate(parts) if g != f for c in p], view)
                router = Router.from_fitted(fit_router(train, options(r * folds + f, quick), show_progress=False))
                idx = [index[c["id"]] for c in test]
                s2[idx] = router.score([view_text(second_turn(c, CHEAP), view) for c in test])
                if r == 0:
                    s1[idx] = router.score([c["turns"][0] for c in test])
                    s2ref[idx] = router.score([view_text(second_turn(c, REF), view) for c in test])
            apgr = evaluate_scores(s2, qs2, ql2, with_curve=False)["router"]["apgr"]
            out[view]["apgr"].append(apgr)
            print(f"repeat {r + 1}/{repeats}, view {view}: second-turn APGR {apgr:.4f}", flush=True)
            if r == 0:
                oof[view] = {"turn1": s1, "turn2": s2, "turn2_after_ref": s2ref}
    for v in VIEWS:
        a = np.array(out[v]["apgr"])
        out[v].update(mean=float(a.mean()), sd=float(a.std(ddof=1)) if len(a) > 1 else None)
        diff = a - np.array(out["last"]["apgr"])
        out[v]["minus_last"] = {"mean": float(diff.mean()), "per_repeat": diff.tolist()}
    return {"by_view": out, "oof": oof}


class Tokens:
    """Token counts with the router's own wordpiece tokenizer, cached per text."""

    def __init__(self) -> None:
        from hybridllm.features.featurize import make_encoder

        self.tok = make_encoder("static").tokenizer
        self.seen: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        if text not in self.seen:
            self.seen[text] = max(self.tok.lengths([text])[0] - self.tok.n_added, 0)
        return self.seen[text]

    def message(self, m: dict[str, Any]) -> int:
        calls = json.dumps(m["tool_calls"]) if m.get("tool_calls") else ""
        return 4 + self(f"{m.get('content') or ''}{calls}")  # 4: the chat template's per-message tokens


def mt_bench_sessions(convs: list[dict[str, Any]], oof: dict[str, np.ndarray], tokens: Tokens) -> list[dict]:
    """Per-turn and session routing at thresholds sending SHARES % of turns to the cheap model."""
    from hybridllm.routing.session_store import MemorySessionStore
    from hybridllm.routing.sessions import SessionRules

    pooled = np.concatenate([oof["turn1"], oof["turn2"]])
    points = []
    for share in SHARES:
        t = float(np.quantile(pooled, 1 - share / 100))
        row: dict[str, Any] = {"target_cheap_share": share, "threshold": t}
        for policy in ("per_turn", "session"):
            rules = SessionRules(MODELS, MemorySessionStore())
            agg = {"switches": 0, "prompt": 0, "cached": 0, "cost": 0.0, "quality": 0.0, "cheap_turns": 0}
            for i, c in enumerate(convs):
                m1 = CHEAP if oof["turn1"][i] >= t else REF
                rules.decide("bench", c["id"], m1, False, now=0.0)
                s2 = oof["turn2"][i] if m1 == CHEAP else oof["turn2_after_ref"][i]
                pick = CHEAP if s2 >= t else REF
                m2 = rules.decide("bench", c["id"], pick, False, now=1.0).model if policy == "session" else pick
                p1 = tokens.message({"content": c["turns"][0]})
                a1 = tokens(c["responses"][m1][0])
                p2 = p1 + 4 + a1 + tokens.message({"content": c["turns"][1]})
                cached = p1 if m2 == m1 else 0
                agg["switches"] += m2 != m1
                agg["prompt"] += p1 + p2
                agg["cached"] += cached
                agg["cost"] += cost(m1, p1, 0, a1, False)
                agg["cost"] += cost(m2, p2, p1, tokens(c["responses"][m2][1]), m2 != m1)
                agg["quality"] += c["turn_quality"][m1][0] + c["turn_quality"][m2][1]
                agg["cheap_turns"] += (m1 == CHEAP) + (m2 == CHEAP)
            n = len(convs)
            row[policy] = {
                "switches_per_session": agg["switches"] / n,
                "cached_prompt_share": agg["cached"] / agg["prompt"],
                "cost_per_1k_conversations": agg["cost"] / n * 1000,
                "quality": agg["quality"] / (2 * n),
                "cheap_turn_share": agg["cheap_turns"] / (2 * n),
                "counters": rules.counters.snapshot() if policy == "session" else None,
            }
        points.append(row)
    return points


def baselines(convs: list[dict[str, Any]], tokens: Tokens) -> dict[str, dict[str, float]]:
    out = {}
    for m in MODELS:
        total, q = 0.0, 0.0
        for c in convs:
            p1 = tokens.message({"content": c["turns"][0]})
            a1 = tokens(c["responses"][m][0])
            p2 = p1 + 4 + a1 + tokens.message({"content": c["turns"][1]})
            total += cost(m, p1, 0, a1, False) + cost(m, p2, p1, tokens(c["responses"][m][1]), False)
            q += sum(c["turn_quality"][m])
        out[m] = {"cost_per_1k_conversations": total / len(convs) * 1000, "quality": q / (2 * len(convs))}
    return out


def interleave(traces: list[Any], slots: int) -> list[tuple[int, int]]:
    """(trace, step) in the order a server sees them with ``slots`` sessions running at once, each
    taking one step in turn, a finished one replaced by the next trace."""
    order, active, nxt = [], list(range(min(slots, len(traces)))), min(slots, len(traces))
    pos = dict.fromkeys(active, 0)
    while active:
        for ti in list(active):
            order.append((ti, pos[ti]))
            pos[ti] += 1
            if pos[ti] == len(traces[ti].steps):
                active.remove(ti)
                if nxt < len(traces):
                    active.append(nxt)
                    pos[nxt] = 0
                    nxt += 1
    return order


AGENT_POLICIES = {  # name: (session rules, budget hold)
    "per turn, fixed knob": (False, False),
    f"per turn, hold budget={HOLD_BUDGET:g}": (False, True),
    "session, fixed knob": (True, False),
    f"session, hold budget={HOLD_BUDGET:g}": (True, True),
}


def agent_loops(traces: list[Any], router: Any, tokens: Tokens, slots: int = 16) -> dict[str, Any]:
    from hybridllm.routing.conversation import DEFAULT_VIEW, view_text
    from hybridllm.routing.live import Hold
    from hybridllm.routing.policy import choose
    from hybridllm.routing.session_store import MemorySessionStore
    from hybridllm.routing.sessions import SessionRules

    fleet = router.fleet
    texts = sorted({view_text(s.messages, DEFAULT_VIEW) for t in traces for s in t.steps})
    score = dict(zip(texts, router.score(texts).reshape(len(texts), -1)[:, 0].tolist(), strict=True))
    steps = []  # per trace, per step: (score, prompt tokens, completion tokens, tool loop)
    for t in traces:
        tools = tokens(json.dumps(t.tools))
        steps.append([
            (score[view_text(s.messages, DEFAULT_VIEW)], tools + sum(tokens.message(m) for m in s.messages),
             tokens.message(s.answer) - 4, s.tool_loop)
            for s in t.steps
        ])  # fmt: skip
    order = interleave(traces, slots)
    # the fixed knob: the threshold sending half of the requests to each model (the router's own
    # default point, calibrated on MT-Bench, sends nearly every BFCL request to the cheap model)
    fixed = float(np.median([x[0] for st in steps for x in st]))
    ref_cost = sum(cost(REF, p, prev, c, False) for st in steps for (_, p, c, _), prev in
                   zip(st, [0] + [x[1] for x in st[:-1]], strict=True))  # fmt: skip
    out: dict[str, Any] = {"fixed_threshold": fixed, "always_ref_cost": ref_cost, "policies": {}}
    for name, (sessions, held) in AGENT_POLICIES.items():
        hold = Hold("budget", HOLD_BUDGET, fleet, router.config["calibration"]) if held else None
        rules = SessionRules(fleet.models, MemorySessionStore())
        last: dict[int, str] = {}
        prev_prompt: dict[int, int] = {}
        switches = [0] * len(traces)
        agg = {"loop_switches": 0, "prompt": 0, "cached": 0, "cost": 0.0, "cheap": 0}
        for clock, (ti, si) in enumerate(order):
            s, prompt, completion, loop = steps[ti][si]
            t = hold.threshold if hold is not None else fixed
            choice = fleet.models[int(choose(np.array([[s]]), fleet, t)[0])]
            model = rules.decide("bench", traces[ti].id, choice, loop, now=float(clock)).model if sessions else choice
            if hold is not None:
                hold.observe([s], fleet.models.index(model))
            moved = ti in last and last[ti] != model
            switches[ti] += moved
            agg["loop_switches"] += moved and loop
            cached = 0 if moved or ti not in last else prev_prompt[ti]
            agg["prompt"] += prompt
            agg["cached"] += cached
            agg["cost"] += cost(model, prompt, cached, completion, moved)
            agg["cheap"] += model == CHEAP
            last[ti], prev_prompt[ti] = model, prompt
        n = len(order)
        out["policies"][name] = {
            "requests": n,
            "tool_loop_requests": sum(x[3] for st in steps for x in st),
            "switches_inside_tool_loops": agg["loop_switches"],
            "switches_per_session": sum(switches) / len(traces),
            "sessions_with_a_switch": sum(x > 0 for x in switches) / len(traces),
            "cached_prompt_share": agg["cached"] / agg["prompt"],
            "cost": agg["cost"],
            "cost_share_of_always_ref": agg["cost"] / ref_cost,
            "cheap_request_share": agg["cheap"] / n,
            "counters": rules.counters.snapshot() if sessions else None,
        }
    return out


def git_commit() -> str:
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=REPO)
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, one-member heads, 40 BFCL traces")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the 5-fold CV (default 2; --quick 1)")
    ap.add_argument("--bfcl-dir", type=Path, default=Path("/tmp/hybridllm-bfcl"), help="where the BFCL wheel is")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/sessions.json")
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm.model.fit import fit_router
    from hybridllm.model.router import Router
    from hybridllm.routing.conversation import DEFAULT_VIEW

    t0 = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 2)
    convs = mt_bench_conversations(MT_BENCH)
    v = views(convs, repeats, 5, args.quick)
    by = v["by_view"]
    best = max(by, key=lambda k: by[k]["mean"])
    tokens = Tokens()
    mt = mt_bench_sessions(convs, v["oof"][DEFAULT_VIEW], tokens)
    router = Router.from_fitted(fit_router(rows_for(convs, DEFAULT_VIEW), options(0, args.quick), show_progress=False))
    traces = list(bfcl_traces(bfcl_wheel(args.bfcl_dir), 40 if args.quick else None))
    agent = agent_loops(traces, router, tokens)
    result = {
        "command": "python benchmarks/sessions.py" + (" --quick" if args.quick else ""),
        "commit": git_commit(),
        "seconds": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
        "prices_per_1m": {m: {"in": p[0], "out": p[1]} for m, p in PRICES.items()},
        "cache_discount": CACHE_DISCOUNT,
        "views": {"repeats": repeats, "folds": 5, "n": len(convs), "by_view": by, "best": best,
                  "default": DEFAULT_VIEW},
        "mt_bench": {"points": mt, "always": baselines(convs, tokens)},
        "agent": {"source": f"{BFCL} (BFCL_v4_multi_turn_base)", "traces": len(traces), "slots": 16,
                  "hold_budget": HOLD_BUDGET, **agent},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nviews (second-turn APGR, {repeats} x 5-fold CV by conversation): best {best}, default {DEFAULT_VIEW}")
    for k, x in by.items():
        print(f"  {k:14s} {x['mean']:.4f}  minus last {x['minus_last']['mean']:+.4f}")
    print("\nMT-Bench: share  policy     switches/session  cached share  $/1k conv  quality")
    for p in mt:
        for pol in ("per_turn", "session"):
            x = p[pol]
            cells = f"{x['cached_prompt_share']:12.1%}  {x['cost_per_1k_conversations']:9.2f}  {x['quality']:.4f}"
            print(f"  {p['target_cheap_share']:>4d} %  {pol:9s}  {x['switches_per_session']:16.3f}  {cells}")
    print(f"\nagent loops ({len(traces)} BFCL traces): switches in tool loops, per session, cached share, cost share")
    for name, x in agent["policies"].items():
        print(f"  {name:28s} {x['switches_inside_tool_loops']:5d}  {x['switches_per_session']:.2f}  "
              f"{x['cached_prompt_share']:.1%}  {x['cost_share_of_always_ref']:.1%}")  # fmt: skip
    print(f"\nwrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
