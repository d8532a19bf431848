"""Does ``--hold budget=X`` hold X % of always-reference in money, on a stream whose per-request cost
varies with its prompt and its answer? Side by side in one run, on the same stream and router:

- ``relative``: the hold as it was, on the models' relative costs (the blended price
  ``(3 * price_in + price_out) / 4`` a models file gives each model): one request to a model costs
  the same whatever its prompt and answer;
- ``money``: the hold in money (:class:`hybridllm.routing.money.CostModel`): each request priced on
  every model from its estimated prompt tokens and each model's typical answer before the call,
  and from its usage after it, starting from the router's training table's answer lengths;
- ``money, no table``: the same from the defaults (256-token answers, equal lengths on a prompt);
- ``money, shadow 5 %``: from the table, and one request in 20 also answered by the other model
  (``serve --shadow-rate 0.05``): the pair's answer lengths teach the ratio of the models' lengths
  on the requests each is routed (:meth:`hybridllm.routing.money.CostModel.pair`);
- ``knob in money`` and ``knob, relative costs``: no hold, every request naming ``hybrid-budget-X``
  (an open loop): resolved in money on this traffic as a priced server does
  (:class:`hybridllm.routing.money_knob.MoneyBudget` over a :class:`CostModel` from the defaults,
  learning every answer), or in the calibration's relative costs as an unpriced one does.

The stream: the default pair's routing table (``data/default-pair/table.jsonl``: 1,000 real
questions of ``../shared/data/`` GSM8K and MMLU-Pro, each answered three times by both models of
the shipped router, with their real prompt and completion token counts from the collection
journals), drawn with replacement in three phases of a third each: MMLU-Pro 80 %, 20 %, then 50 %
of the requests (the rest GSM8K). A GSM8K answer is ~280 tokens, an MMLU-Pro one ~3: the cost of a
request varies several-fold with what it asks. Every request carries a declared system prompt
(``--system-tokens``, default 1,024) that the provider has cached (``cached_tokens``), at the
declared prices below. The shipped router scores every prompt; each request goes where the
policy sends it at the hold's threshold of the moment, and its truth is its real cost on the model
it went to against its real cost on the reference (the other model's own answer to the same
question). Windows of 200 requests after ``--warmup``, pooled over three streams (``--seeds``).

    python benchmarks/hold_money.py                    # targets 30 and 50 %, three streams
    python benchmarks/hold_money.py --requests 3000 --targets 30 --seeds 0 --out /tmp/hold_money.json

Writes benchmarks/results/hold_money.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.model.router import SHIPPED_ROUTER, Router
from hybridllm.routing.knob import point_for_budget
from hybridllm.routing.live import Hold
from hybridllm.routing.money import CostModel, Price, Tokens, estimate_prompt_tokens, table_lengths, tokens_cost
from hybridllm.routing.money_knob import MoneyBudget
from hybridllm.routing.policy import Fleet, choose

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "default-pair"
JOURNALS = (DATA / "mmlu_journal.jsonl", REPO / "data" / "gsm8k-qwen" / "journal.jsonl")
WINDOW = 200
TOLERANCE_PP = 2.0
#: declared prices per 1M tokens (prompt, cached prompt, completion): a hosted small / large pair, 1 : 20
PRICES = {"qwen2.5-0.5b": Price(0.10, 0.40, 0.025), "qwen2.5-1.5b": Price(2.00, 8.00, 0.50)}
PHASES = (0.8, 0.2, 0.5)  # MMLU-Pro's share of each third of the stream


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_rows(models: list[str]) -> list[dict[str, Any]]:
    """The table's rows with each model's real prompt tokens and completion tokens per sample."""
    prompt_tokens: dict[tuple[str, str], int] = {}
    for path in JOURNALS:
        for rec in read_jsonl(path):
            if "id" in rec and isinstance(rec.get("prompt_tokens"), int):
                prompt_tokens[(rec["id"], rec["model"])] = rec["prompt_tokens"]
    rows = []
    for r in read_jsonl(DATA / "table.jsonl"):
        got = r["meta"]["completion_tokens"]
        if all((r["id"], m) in prompt_tokens and len(got[m]) == 3 for m in models):
            rows.append({
                "id": r["id"], "prompt": r["prompt"], "task": r["id"].split("-")[0],
                "prompt_tokens": [prompt_tokens[(r["id"], m)] for m in models],
                "completion": np.array([got[m] for m in models], dtype=np.int64),  # [model, sample]
            })  # fmt: skip
    return rows


def make_stream(rows: list[dict[str, Any]], n: int, seed: int) -> list[tuple[int, int]]:
    """(row, sample) per request: MMLU-Pro at each phase's share, the rest GSM8K."""
    rng = np.random.default_rng(seed)
    by_task = {t: [i for i, r in enumerate(rows) if r["task"] == t] for t in ("mmlu", "gsm8k")}
    out = []
    for j in range(n):
        share = PHASES[min(j * len(PHASES) // n, len(PHASES) - 1)]
        pool = by_task["mmlu"] if rng.random() < share else by_task["gsm8k"]
        out.append((int(pool[rng.integers(len(pool))]), int(rng.integers(3))))
    return out


def as_usage(t: Tokens) -> dict[str, Any]:
    return {
        "prompt_tokens": t.prompt,
        "completion_tokens": t.completion,
        "prompt_tokens_details": {"cached_tokens": t.cached},
    }


def run(
    hold: Hold,
    scores: np.ndarray,
    rows: list[dict[str, Any]],
    stream: list[tuple[int, int]],
    system: int,
    shadow_rate: float = 0.0,
) -> dict[str, Any]:
    """The stream through the hold: per request the model it went to, its true cost there and on the
    reference, and the hold's own realised estimate."""
    fleet, prices = hold.fleet, [PRICES[m] for m in hold.fleet.models]
    rng = np.random.default_rng(1)
    picked, served, ref_cost, est = [], [], [], []
    for i, k in stream:
        row = rows[i]
        pick = int(choose(scores[i][None, :], fleet, hold.threshold)[0])
        usage = [
            Tokens(row["prompt_tokens"][m] + system, system, int(row["completion"][m, k]))
            for m in range(len(fleet.models))
        ]
        ticket = hold.observe(scores[i], pick, estimate_prompt_tokens(row["prompt"]) + system)
        u = usage[pick]
        hold.settle(ticket, as_usage(u))
        if hold.money is not None and rng.random() < shadow_rate:  # the shadow asks the other side
            other = fleet.ref if pick != fleet.ref else 0
            hold.money.pair(pick, as_usage(u), other, as_usage(usage[other]))
        picked.append(pick)
        served.append(tokens_cost(u, prices[pick]))
        ref_cost.append(tokens_cost(usage[fleet.ref], prices[fleet.ref]))
        est.append(hold.realised())
    return {"picked": np.array(picked), "served": np.array(served), "ref": np.array(ref_cost), "est": np.array(est)}


def run_knob(
    fleet: Fleet,
    threshold: Any,
    money: CostModel | None,
    scores: np.ndarray,
    rows: list[dict[str, Any]],
    stream: list[tuple[int, int]],
    system: int,
) -> dict[str, Any]:
    """The stream at a per-request knob: ``threshold()`` its threshold of the moment; ``money``, the
    server's cost model, taught every answer's usage (as ``serve``'s money hook does)."""
    prices = [PRICES[m] for m in fleet.models]
    picked, served, ref_cost = [], [], []
    for i, k in stream:
        row = rows[i]
        pick = int(choose(scores[i][None, :], fleet, threshold())[0])
        usage = [
            Tokens(row["prompt_tokens"][m] + system, system, int(row["completion"][m, k]))
            for m in range(len(fleet.models))
        ]
        if money is not None:
            money.after(pick, as_usage(usage[pick]), estimate_prompt_tokens(row["prompt"]) + system)
        picked.append(pick)
        served.append(tokens_cost(usage[pick], prices[pick]))
        ref_cost.append(tokens_cost(usage[fleet.ref], prices[fleet.ref]))
    return {"picked": np.array(picked), "served": np.array(served), "ref": np.array(ref_cost), "est": None}


def summary(res: dict[str, Any], target: float, warmup: int) -> dict[str, Any]:
    served, ref, n = res["served"], res["ref"], len(res["served"])
    wins = []
    for start in range(warmup, n - WINDOW + 1, WINDOW):
        sl = slice(start, start + WINDOW)
        wins.append(float(served[sl].sum() / ref[sl].sum() * 100))
    w = np.array(wins)
    # the hold's own realised figure (its last 200 requests) against their truth, at each window's end
    est_err = [
        float(res["est"][s + WINDOW - 1] - served[s : s + WINDOW].sum() / ref[s : s + WINDOW].sum() * 100)
        for s in range(warmup, n - WINDOW + 1, WINDOW)
    ] if res["est"] is not None else [np.nan]  # fmt: skip
    return {
        "money_share": float(served[warmup:].sum() / ref[warmup:].sum() * 100),
        "windows": len(w),
        "within_2pp": float(np.mean(np.abs(w - target) <= TOLERANCE_PP)),
        "window_min": float(w.min()),
        "window_max": float(w.max()),
        "window_mean_abs_err": float(np.mean(np.abs(w - target))),
        "estimate_mean_abs_err": float(np.mean(np.abs(est_err))),
        "share_to_reference": float(np.mean(res["picked"][warmup:] == 1) * 100),
        "per_window": [round(x, 3) for x in wins],
    }


def _knob_threshold(fleet: Fleet, cal: list[dict[str, Any]], money: CostModel | None, budget: float) -> Any:
    """``hybrid-budget-X``'s threshold of the moment: in money (``money`` given) or in ``cal``'s costs."""
    if money is None:
        fixed = float(point_for_budget(cal, budget)["threshold"])
        return lambda: fixed
    knob = MoneyBudget(fleet, cal, money)
    return lambda: knob.resolve(budget)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--targets", default="30,50")
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--system-tokens", type=int, default=1024)
    ap.add_argument("--seeds", default="0,1,2", help="one stream per seed (the draws of rows and samples)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/hold_money.json"))
    args = ap.parse_args()
    router = Router(SHIPPED_ROUTER)
    models = list(router.fleet.models)
    rows = load_rows(models)
    scores = np.asarray(router.score([r["prompt"] for r in rows]), dtype=np.float64).reshape(len(rows), -1)
    relative = Fleet(
        tuple(models), tuple((3 * PRICES[m].prompt + PRICES[m].completion) / 4 for m in models), models[-1]
    )
    # the router's calibration rows, each at the cost its shares give with these relative costs
    cal = [
        {**r, "cost": float(np.dot(r["shares"], relative.costs)) / relative.costs[relative.ref]}
        for r in router.config["calibration"]
    ]
    lengths, ratios = table_lengths(read_jsonl(DATA / "split" / "train.jsonl"), models)
    prices = [PRICES[m] for m in models]
    variants = {  # name: (the CostModel, the shadow rate, the horizon: None for the hold's default)
        "relative": (lambda: None, 0.0, None),
        "money": (lambda: CostModel(prices, answer_tokens=lengths, ratios=ratios), 0.0, None),
        "money, no table": (lambda: CostModel(prices), 0.0, None),
        "money, shadow 5 %": (lambda: CostModel(prices, answer_tokens=lengths, ratios=ratios), 0.05, None),
        "money, horizon 20": (lambda: CostModel(prices, answer_tokens=lengths, ratios=ratios), 0.0, 20.0),
    }
    knobs = [(name, (lambda: None, 0.0, None)) for name in ("knob in money", "knob, relative costs")]
    seeds = [int(x) for x in args.seeds.split(",")]
    streams = {seed: make_stream(rows, args.requests, seed) for seed in seeds}
    results = []
    for target in (float(t) for t in args.targets.split(",")):
        for name, (money, rate, horizon) in [*variants.items(), *knobs]:
            runs = []
            for seed, stream in streams.items():
                if name.startswith("knob"):
                    model = CostModel(prices) if name == "knob in money" else None
                    threshold = _knob_threshold(relative, cal, model, target)
                    res = run_knob(relative, threshold, model, scores, rows, stream, args.system_tokens)
                else:
                    hold = Hold("budget", target, relative, cal, money=money(), horizon=horizon)
                    res = run(hold, scores, rows, stream, args.system_tokens, rate)
                runs.append({"seed": seed, **summary(res, target, args.warmup)})
            windows = np.array([w for r in runs for w in r["per_window"]])
            results.append({
                "target": target, "hold": name, "horizon": None if name.startswith("knob") else hold.horizon,
                "money_share": [r["money_share"] for r in runs],
                "windows": len(windows),
                "within_2pp": float(np.mean(np.abs(windows - target) <= TOLERANCE_PP)),
                "within_2pp_worst_stream": min(r["within_2pp"] for r in runs),
                "window_min": float(windows.min()), "window_max": float(windows.max()),
                "estimate_mean_abs_err": None if name.startswith("knob") else float(
                    np.mean([r["estimate_mean_abs_err"] for r in runs])),
                "share_to_reference": float(np.mean([r["share_to_reference"] for r in runs])),
                "streams": runs,
            })  # fmt: skip
    print(f"{'target':>6s}  {'hold':18s} {'money share (streams)':>22s} {'windows ±2 pp':>15s} {'worst':>6s} "
          f"{'window range':>13s} {'to ref':>7s} {'est err':>8s}")  # fmt: skip
    for r in results:
        share = "/".join(f"{x:.1f}" for x in r["money_share"])
        print(
            f"{r['target']:5.0f}%  {r['hold']:18s} {share:>20s} % {r['within_2pp'] * 100:7.0f}% of {r['windows']:3d} "
            f"{r['within_2pp_worst_stream'] * 100:5.0f}% {r['window_min']:5.1f}-{r['window_max']:5.1f} % "
            f"{r['share_to_reference']:5.1f}% "
            + ("   –" if r["estimate_mean_abs_err"] is None else f"{r['estimate_mean_abs_err']:5.2f} pp")
        )
    counts = {t: sum(1 for r in rows if r["task"] == t) for t in ("gsm8k", "mmlu")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    payload = {
        "benchmark": "hold_money",
        "commit": commit.strip(),
        "cpus": os.cpu_count(),
        "requests": args.requests,
        "seeds": seeds,
        "warmup": args.warmup,
        "window": WINDOW,
        "tolerance_pp": TOLERANCE_PP,
        "system_tokens": args.system_tokens,
        "phases_mmlu_share": list(PHASES),
        "rows": counts,
        "models": models,
        "prices": {
            m: {"price_in": p.prompt, "price_cached_in": p.cached, "price_out": p.completion} for m, p in PRICES.items()
        },
        "relative_costs": list(relative.costs),
        "seed_answer_tokens": dict(zip(models, lengths, strict=True)),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
