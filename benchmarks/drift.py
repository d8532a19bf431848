"""Does the knob's promise hold when the query mix changes? A replay through the real proxy.

A stream of requests whose mix changes half-way is replayed through ``hybridllm serve``'s app
(uvicorn on 127.0.0.1) in front of OpenAI-protocol upstreams that answer from a routing table: each
answer is one of the table's sampled responses, named by a token, and a judge endpoint rates an
answer from that sample's score in the table (1 + 9 q). The judge stands in for a real one so that
the truth is known: every window's realised quality drop and spend can be computed from the
table's mean quality per model and query.

For each stream, the same requests are replayed through: a static threshold (the router's
calibrated point for the target, as ``--default-knob`` gives it) and the controller holding the share
or spend (``--hold cost_advantage=X`` / ``budget=X``); then a static threshold for a quality target
and the controller holding it (``--hold max_quality_drop=X``): by default (the bound for the next
200 requests), with the bound on the recent mean (``--hold-window 0``) and on the point estimate
(``--hold-confidence 0.5``). All with shadow checks at ``--rate``. Windows of 200 requests after a
warm-up; per window: the held measure's truth, and the live estimate's 95 % interval from that
window's shadow pairs, and the server's sliding and since-start estimates against their truth.

Streams:
- ``default-pair``: the shipped router on data/default-pair/table.jsonl, MMLU-Pro 85 % of the
  queries, then 20 % (the rest GSM8K);
- ``mmlu-3``: a router over three models of the shared MMLU-Pro table trained here (60 % of the
  table, costs 1 : 4 : 10), replayed on the other 40 %: humanities/social-science questions 85 %
  of the stream, then 20 % (the rest STEM).

    python benchmarks/drift.py               # writes benchmarks/results/drift.json and docs/drift.png
    python benchmarks/drift.py --requests 2000 --out /tmp/drift.json --plot /tmp/drift.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request

from hybridllm.backends import make_backend
from hybridllm.model.router import Router, default_router_dir
from hybridllm.routing.estimates import ratio_interval
from hybridllm.serve import ServeOptions, create_app
from hybridllm.tables.format import read_table, split_rows

REPO = Path(__file__).resolve().parents[1]
TOKEN = re.compile(r"\[\[ans:(\d+):(\d+):(\d+)\]\]")
WINDOW = 200
LIVE_PAIRS = 200  # the server's sliding window of shadow pairs (serve.control.estimates.QualityEstimates)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TableLLM:
    """Every model of a table and the judge behind one OpenAI-protocol server: a model answers a
    prompt with one of its sampled responses (a token naming row, model and sample); the judge
    rates such a token from the table's quality of that sample."""

    def __init__(self, rows: list[dict], models: list[str], seed: int = 0) -> None:
        self.rows, self.models = rows, models
        self.by_prompt = {r["prompt"]: i for i, r in enumerate(rows)}
        self.rng = random.Random(seed)
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> TableLLM:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    async def chat(self, request: Request) -> Any:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if body["model"] == "judge":
            m = TOKEN.search(text.split("Assistant's answer:")[-1])
            q = 0.0
            if m:
                i, k, s = (int(x) for x in m.groups())
                q = float(self.rows[i]["quality"][self.models[k]][s])
            nonce = re.findall(r"^VERDICT-([0-9a-f]+): N$", text, flags=re.MULTILINE)[-1]  # the judge protocol
            content = f"VERDICT-{nonce}: {1 + 9 * q:.1f}"
        else:
            i, k = self.by_prompt[text], self.models.index(body["model"])
            s = self.rng.randrange(len(self.rows[i]["quality"][self.models[k]]))
            content = f"[[ans:{i}:{k}:{s}]]"
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200},
        }


def stream_of(rows: list[dict], is_a: list[bool], n: int, share_a: tuple[float, float], seed: int) -> list[int]:
    """Row indices: the first half with share_a[0] of group A, the second with share_a[1]."""
    rng = random.Random(seed)
    a = [i for i, x in enumerate(is_a) if x]
    b = [i for i, x in enumerate(is_a) if not x]
    out = []
    for j in range(n):
        share = share_a[0] if j < n // 2 else share_a[1]
        out.append(rng.choice(a) if rng.random() < share else rng.choice(b))
    return out


def serve_app(router: Router, llm: TableLLM, models: list[str], opts: ServeOptions) -> tuple[Any, uvicorn.Server]:
    ups = [make_backend(f"{m}@http://127.0.0.1:{llm.port}/v1", name=m, concurrency=None) for m in models]
    judge = make_backend(f"judge@http://127.0.0.1:{llm.port}/v1", name="judge", concurrency=None)
    app = create_app(router, *ups, options=opts, judge=judge)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return app, server


async def replay(port: int, prompts: list[str], model: str, concurrency: int = 4) -> list[dict[str, Any]]:
    """Every prompt through the proxy, ``concurrency`` at a time in order; each answer's headers."""
    out: list[dict[str, Any]] = [{} for _ in prompts]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(j: int) -> None:
            async with sem:
                r = await client.post(
                    "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompts[j]}]}
                )
                r.raise_for_status()
                out[j] = {
                    "model": r.headers["x-hybridllm-model"],
                    "id": r.headers["x-hybridllm-request-id"],
                    "threshold": float(r.headers.get("x-hybridllm-threshold", "nan")),
                }

        for start in range(0, len(prompts), 50):  # in order: the controller sees the stream as it comes
            await asyncio.gather(*(one(j) for j in range(start, min(start + 50, len(prompts)))))
    return out


def run_config(
    router: Router, llm: TableLLM, models: list[str], stream: list[int], opts: ServeOptions, model: str
) -> dict[str, Any]:
    app, server = serve_app(router, llm, models, opts)
    pairs_by_id: dict[str, Any] = {}
    shadow = app.state.shadow
    if shadow is not None:
        shadow.sinks.append(lambda pair, job: pairs_by_id.__setitem__(job.rid, pair))
    prompts = [llm.rows[i]["prompt"] for i in stream]
    t0 = time.time()
    got = asyncio.run(replay(server.config.port, prompts, model))
    time.sleep(0.5)  # the last shadow pairs
    server.should_exit = True
    time.sleep(0.3)
    calls = {}
    for fam in app.state.metrics.shadow_calls.collect():
        for sm in fam.samples:
            if sm.name.endswith("_total"):
                calls[f"{sm.labels['model']}:{sm.labels['outcome']}"] = int(sm.value)
    return {
        "answers": got,
        "pairs": pairs_by_id,
        "shadow_calls": calls,
        "seconds": time.time() - t0,
        "hold": app.state.hold.state() if app.state.hold is not None else None,
    }


def windows(
    rows: list[dict], models: list[str], costs: list[float], stream: list[int], res: dict[str, Any], warmup: int
) -> list[dict[str, Any]]:
    """Per window of WINDOW requests after ``warmup``: truth (share away from the reference, spend,
    quality drop) and the live estimate of the drop from the window's shadow pairs; and, at the
    window's end, the two estimates the server shows (the last LIVE_PAIRS pairs, and every pair
    since start) beside the truth over the requests they span."""
    ref = len(models) - 1
    mean_q = np.array([[np.mean(rows[i]["quality"][m]) for m in models] for i in stream])
    picked = np.array([models.index(a["model"]) for a in res["answers"]])
    q_ref_all, q_srv_all = mean_q[:, ref], mean_q[np.arange(len(stream)), picked]
    ids = [a["id"] for a in res["answers"]]
    at = [j for j, i in enumerate(ids) if i in res["pairs"]]  # requests with a shadow pair, in order

    def truth(lo: int, hi: int) -> float:
        den = q_ref_all[lo:hi].sum()
        return float((den - q_srv_all[lo:hi].sum()) / den * 100) if den > 0 else 0.0

    def estimate(js: list[int]) -> list[float] | None:
        if not js:
            return None
        pairs = [res["pairs"][ids[j]] for j in js]
        qr = np.array([pp.quality(ref) for pp in pairs])
        qs = np.array([pp.q_served for pp in pairs])
        got = ratio_interval(qr - qs, qr, np.array([pp.weight for pp in pairs]))
        return None if got is None else list(got)

    out = []
    for start in range(warmup, len(stream) - WINDOW + 1, WINDOW):
        end = start + WINDOW
        sl = slice(start, end)
        p = picked[sl]
        upto = [j for j in at if j < end]
        last = upto[-LIVE_PAIRS:]
        out.append(
            {
                "start": start,
                "share_away": float((p != ref).mean() * 100),
                "spend": float(np.asarray(costs)[p].sum() / (costs[ref] * WINDOW) * 100),
                "quality_drop": truth(start, end),
                "pairs": sum(1 for j in at if start <= j < end),
                "estimate": estimate([j for j in at if start <= j < end]),
                "sliding": None if not last else {"truth": truth(last[0], end), "estimate": estimate(last)},
                "since_start": None if not upto else {"truth": truth(0, end), "estimate": estimate(upto)},
            }
        )
    return out


def coverage(ws: list[dict[str, Any]], scope: str) -> dict[str, float] | None:
    """Share of windows whose truth lies in the live interval, and the interval's mean width."""
    got = [(w[scope]["truth"], w[scope]["estimate"]) for w in ws if w[scope] and w[scope]["estimate"]]
    if not got:
        return None
    return {
        "coverage": float(np.mean([e[1] <= t <= e[2] for t, e in got])),
        "width_mean": float(np.mean([e[2] - e[1] for _, e in got])),
    }


def held_of(ws: list[dict[str, Any]], measure: str, target: float, tol: float) -> np.ndarray:
    vals = np.array([w[measure] for w in ws])
    return vals <= target + tol if measure == "quality_drop" else np.abs(vals - target) <= tol


def summarise(ws: list[dict[str, Any]], measure: str, target: float, tol: float, change: int) -> dict[str, Any]:
    vals = np.array([w[measure] for w in ws])
    held = held_of(ws, measure, target, tol)
    phases = {}
    for phase, keep in (("before", [w["start"] + WINDOW <= change for w in ws]),
                        ("after", [w["start"] >= change for w in ws])):  # fmt: skip
        k = np.array(keep)
        phases[phase] = {"held_share": float(held[k].mean()), "share_away_mean": float(np.mean(
            [w["share_away"] for w, x in zip(ws, keep, strict=True) if x])), "mean": float(vals[k].mean())}  # fmt: skip
    with_est = [w for w in ws if w["estimate"] is not None]
    covered = [w["estimate"][1] <= w["quality_drop"] <= w["estimate"][2] for w in with_est]
    return {
        "windows": len(ws),
        "held_share": float(held.mean()),
        "mean": float(vals.mean()),
        "phases": phases,
        "share_away_mean": float(np.mean([w["share_away"] for w in ws])),
        "spend_mean": float(np.mean([w["spend"] for w in ws])),
        "quality_drop_mean": float(np.mean([w["quality_drop"] for w in ws])),
        "interval_coverage": float(np.mean(covered)) if covered else None,
        "sliding": coverage(ws, "sliding"),
        "since_start": coverage(ws, "since_start"),
        "interval_width_mean": float(np.mean([w["estimate"][2] - w["estimate"][1] for w in with_est]))
        if with_est
        else None,
    }


def scenario(
    name: str,
    router: Router,
    rows: list[dict],
    models: list[str],
    costs: list[float],
    is_a: list[bool],
    args: argparse.Namespace,
    share_kind: str,
    share_target: float,
    qd_target: float,
) -> dict[str, Any]:
    stream = stream_of(rows, is_a, args.requests, (0.85, 0.20), seed=1)
    # the replay runs at some 300 requests/s, 5 % of which is above the default ceiling of 600 shadow
    # calls a minute (meant for real traffic): the benchmark measures the estimates and the controller
    base = {"shadow_rate": args.rate, "batch_window_s": 0.0, "shadow_per_minute": 1_000_000}
    share_name = f"hybrid-ca-{share_target:g}" if share_kind == "cost_advantage" else f"hybrid-budget-{share_target:g}"
    measure = "share_away" if share_kind == "cost_advantage" else "spend"
    configs = {
        f"static {share_kind} {share_target:g}": (ServeOptions(**base), share_name, measure, share_target),
        f"held {share_kind} {share_target:g}": (
            ServeOptions(**base, hold=f"{share_kind}={share_target:g}"),
            "hybrid",
            measure,
            share_target,
        ),
        f"static max_quality_drop {qd_target:g}": (
            ServeOptions(**base),
            f"hybrid-qd-{qd_target:g}",
            "quality_drop",
            qd_target,
        ),
        f"held max_quality_drop {qd_target:g}": (
            ServeOptions(**base, hold=f"max_quality_drop={qd_target:g}", hold_confidence=args.confidence),
            "hybrid",
            "quality_drop",
            qd_target,
        ),
        f"held max_quality_drop {qd_target:g}, bound on the mean": (
            ServeOptions(
                **base, hold=f"max_quality_drop={qd_target:g}", hold_confidence=args.confidence, hold_window=0
            ),
            "hybrid",
            "quality_drop",
            qd_target,
        ),
        f"held max_quality_drop {qd_target:g}, point estimate": (
            ServeOptions(**base, hold=f"max_quality_drop={qd_target:g}", hold_confidence=0.5),
            "hybrid",
            "quality_drop",
            qd_target,
        ),
    }
    out: dict[str, Any] = {
        "name": name,
        "models": models,
        "costs": costs,
        "requests": len(stream),
        "mix": "group A 85 % then 20 %",
        "configs": {},
    }
    with TableLLM(rows, models) as llm:
        for label, (opts, model, meas, target) in configs.items():
            res = run_config(router, llm, models, stream, opts, model)
            ws = windows(rows, models, costs, stream, res, args.warmup)
            tol = 2.0 if meas != "quality_drop" else 0.5
            summ = summarise(ws, meas, target, tol, len(stream) // 2)
            out["configs"][label] = {
                "measure": meas,
                "target": target,
                "tolerance_pp": tol,
                **summ,
                "hold_end": res["hold"],
                "shadow_calls": res["shadow_calls"],
                "seconds": round(res["seconds"], 1),
                "windows": ws,
            }
            print(
                f"{name:13} {label:32} held {summ['held_share']:6.1%}  {meas} mean {summ['mean']:6.2f}  "
                f"away {summ['share_away_mean']:5.1f}  drop {summ['quality_drop_mean']:5.2f}  "
                f"coverage {summ['interval_coverage']}",
                flush=True,
            )
    against_static(out["configs"])
    out["pairs_needed"] = pairs_needed(router, rows, models, stream, qd_target, args.rate)
    return out


def against_static(configs: dict[str, Any]) -> None:
    """Each held quality config against the static threshold for the same target, where the static
    one holds: per phase of the stream (before and after the change) where it holds in >= 90 % of
    windows, and per window where it holds."""
    static = next((c for k, c in configs.items() if k.startswith("static max_quality_drop")), None)
    if static is None:
        return
    s_held = held_of(static["windows"], "quality_drop", static["target"], static["tolerance_pp"])
    s_away = np.array([w["share_away"] for w in static["windows"]])
    for label, c in configs.items():
        if not label.startswith("held max_quality_drop"):
            continue
        away = np.array([w["share_away"] for w in c["windows"]])
        phases = [p for p, v in static["phases"].items() if v["held_share"] >= 0.9]
        c["against_static"] = {
            "phases_static_holds": phases,
            "away_in_those_phases": {
                p: [c["phases"][p]["share_away_mean"], static["phases"][p]["share_away_mean"]] for p in phases
            },
            "away_in_windows_static_holds": [float(away[s_held].mean()), float(s_away[s_held].mean())],
        }


def pairs_needed(
    router: Router, rows: list[dict], models: list[str], stream: list[int], target: float, rate: float, seed: int = 0
) -> dict[str, Any]:
    """Per phase, at the static threshold for the quality target: the share routed away, the
    reference's mean quality, the per-pair standard deviation of the drop's residual (one judged
    sample per answer, as a shadow pair sees it) and the pairs (and requests at ``rate``) a 95 %
    one-sided bound needs to come within 3 pp of the estimate: how fast any quality hold can learn."""
    from hybridllm.routing.policy import choose

    thr = router.threshold(max_quality_drop=target)[0]
    scores = np.asarray(router.score([rows[i]["prompt"] for i in stream])).reshape(len(stream), -1)
    rng = np.random.default_rng(seed)
    ref, half = len(models) - 1, len(stream) // 2
    out = {}
    for phase, sl in (("before", slice(0, half)), ("after", slice(half, None))):
        idx = stream[sl]
        picks = choose(scores[sl], router.fleet, thr)
        q_pick = np.array([rng.choice(rows[i]["quality"][models[k]]) for i, k in zip(idx, picks, strict=True)])
        q_ref = np.array([rng.choice(rows[i]["quality"][models[ref]]) for i in idx])
        q_pick = np.where(picks == ref, q_ref, q_pick)
        x = q_ref - q_pick
        r = x.sum() / q_ref.sum()
        sd = float((x - r * q_ref).std() / q_ref.mean())
        n = (1.645 * sd / 0.03) ** 2
        out[phase] = {"away": float((picks != ref).mean() * 100), "q_ref": float(q_ref.mean()), "sd_per_pair": sd,
                      "pairs_for_3pp": float(n), "requests_for_3pp": float(n / rate)}  # fmt: skip
    return out


def mmlu_three(args: argparse.Namespace) -> tuple[Router, list[dict], list[str], list[float], list[bool]]:
    from hybridllm.model.fit import TrainOptions, fit_router

    models = ["Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1", "Meta-Llama-3_1-70B-Instruct"]
    costs = [1.0, 4.0, 10.0]
    rows = read_table(REPO.parent / "shared/data/mmlu_pro.jsonl")
    rows = [r for r in rows if all(m in r["quality"] for m in models)]
    train, test = split_rows(rows, [0.6, 0.4], "drift")
    fitted = fit_router(
        train, TrainOptions(models=models, costs=dict(zip(models, costs, strict=True))), show_progress=False
    )
    router = Router.from_fitted(fitted)
    humanities = {"law", "history", "philosophy", "psychology", "economics", "business", "other", "health"}
    is_a = [r.get("meta", {}).get("category") in humanities for r in test]
    return router, test, models, costs, is_a


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results["scenarios"]), 2, figsize=(12, 3.6 * len(results["scenarios"])), squeeze=False)
    for row, sc in zip(axes, results["scenarios"], strict=True):
        for ax, kind in zip(row, ("share", "quality"), strict=True):
            for label, c in sc["configs"].items():
                if (c["measure"] == "quality_drop") != (kind == "quality"):
                    continue
                x = [w["start"] + WINDOW / 2 for w in c["windows"]]
                y = [w[c["measure"]] for w in c["windows"]]
                ax.plot(x, y, marker="o", ms=3, label=label)
                if kind == "quality" and label.startswith("held"):
                    lo = [w["estimate"][1] if w["estimate"] else np.nan for w in c["windows"]]
                    hi = [w["estimate"][2] if w["estimate"] else np.nan for w in c["windows"]]
                    ax.fill_between(x, lo, hi, alpha=0.15, label="held: live 95 % interval")
                target = c["target"]
            ax.axhline(target, color="k", ls="--", lw=1, label="target")
            ax.axvline(sc["requests"] / 2, color="grey", ls=":", lw=1)
            ax.set_title(f"{sc['name']}: {'quality drop' if kind == 'quality' else 'share / spend'} per window")
            if kind == "quality":
                ax.set_ylim(-15, 40)  # the per-window intervals (~10 pairs each) reach far beyond: see the table
            ax.set_xlabel("request")
            ax.set_ylabel("%")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=24000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--only", choices=["default-pair", "mmlu-3"], default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/drift.json"))
    ap.add_argument("--replot", action="store_true", help="only redraw --plot from --out")
    ap.add_argument("--pairs-needed", action="store_true", help="only add the pairs-needed figures to --out")
    ap.add_argument("--plot", default=str(REPO / "docs/drift.png"))
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), args.plot)
        return
    if args.pairs_needed:  # only add that figure to --out (each stream's router and stream rebuilt)
        results = json.loads(Path(args.out).read_text())
        for sc in results["scenarios"]:
            router, rows, models, _, is_a = (
                (Router(default_router_dir()), read_table(REPO / "data/default-pair/table.jsonl"), None, None, None)
                if sc["name"] == "default-pair"
                else mmlu_three(args)
            )
            models = sc["models"]
            if is_a is None:
                is_a = [not r["id"].startswith("gsm8k") for r in rows]
            stream = stream_of(rows, is_a, sc["requests"], (0.85, 0.20), seed=1)
            target = next(c["target"] for k, c in sc["configs"].items() if k.startswith("static max_quality_drop"))
            sc["pairs_needed"] = pairs_needed(router, rows, models, stream, target, results["shadow_rate"])
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        return
    t0 = time.time()
    scenarios = []
    if args.only in (None, "default-pair"):
        router = Router(default_router_dir())
        rows = read_table(REPO / "data/default-pair/table.jsonl")
        models = list(router.fleet.models)
        is_a = [not r["id"].startswith("gsm8k") for r in rows]
        scenarios.append(
            scenario("default-pair", router, rows, models, [1.0, 2.0], is_a, args, "cost_advantage", 50, 5)
        )
    if args.only in (None, "mmlu-3"):
        router, rows, models, costs, is_a = mmlu_three(args)
        scenarios.append(scenario("mmlu-3", router, rows, models, costs, is_a, args, "budget", 50, 5))
    results = {
        "benchmark": "drift",
        "command": "python benchmarks/drift.py" + ("" if args.requests == 24000 else f" --requests {args.requests}"),
        "window": WINDOW,
        "live_pairs": LIVE_PAIRS,
        "warmup": args.warmup,
        "shadow_rate": args.rate,
        "confidence": args.confidence,
        "scenarios": scenarios,
        "seconds": round(time.time() - t0, 1),
        "python": platform.python_version(),
    }
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.plot)
    print(f"wrote {args.out}, {args.plot} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
