"""What one control step of the quality hold costs: the drop and its bound at every calibrated
threshold, from the controller's 1,000 shadow pairs. The step runs in the request path every 50
routed requests (``Hold.quality_every``), so its time is a stall of the event loop.

Side by side in one run, on the same pairs: the one-pass curve the controller uses
(:func:`hybridllm.routing.estimates.drop_curve`: every threshold from one cumulative sum) and a loop
that estimates each threshold on its own (the policy's picks, then the ratio interval), stopping at
the first threshold over the target as the controller's search does.

    python benchmarks/hold_step.py            # 2 and 3 models, 1,000 pairs, 1,001 thresholds
    python benchmarks/hold_step.py --pairs 4000

Writes benchmarks/results/hold_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from hybridllm.routing.estimates import PairArrays, ShadowPair, drop_curve, policy_sides, ratio_interval
from hybridllm.routing.live import Hold
from hybridllm.routing.policy import Fleet, choose

REPO = Path(__file__).resolve().parent.parent
FLEETS = {
    2: Fleet(("small", "large"), (1.0, 4.0), "large"),
    3: Fleet(("a", "b", "c"), (1.0, 3.0, 10.0), "c"),
}


def make_pairs(fleet: Fleet, n: int, seed: int = 0) -> list[ShadowPair]:
    """Pairs whose qualities follow their scores (a score tells its model's odds of a good answer)."""
    rng = np.random.default_rng(seed)
    ref, out = fleet.ref, []
    for _ in range(n):
        sc = tuple(float(x) for x in rng.random(ref))
        q = [float(rng.random() < s) for s in sc] + [1.0]
        served = int(choose(np.array([sc]), fleet, 0.6)[0])
        other = ref if served != ref else int(np.argmax(sc))
        extra = tuple((m, q[m]) for m in policy_sides(sc, ref) if m not in (served, other))
        out.append(ShadowPair(sc, served, other, q[served], q[other], 20.0, 0.0, extra))
    return out


def per_threshold(pairs: list[ShadowPair], hold: Hold) -> float:
    """Each threshold estimated on its own, by falling threshold, up to the first over the target."""
    arr = PairArrays(pairs, len(hold.fleet.models))
    shift = hold._shift(arr.scores)
    best = hold.hi
    for thr in hold.grid[::-1]:
        picks = choose(arr.scores, hold.fleet, float(thr))
        qp, qr = arr.q[np.arange(len(picks)), picks], arr.q[:, hold.fleet.ref]
        keep = ~(np.isnan(qp) | np.isnan(qr))
        got = ratio_interval((qr - qp)[keep], qr[keep], (arr.weight * shift)[keep], hold.z, horizon=200)
        if got is None:
            continue
        if got[2] > hold.target + 1e-9:
            break
        best = float(thr)
    return best


def timed(fn, repeat: int) -> tuple[float, object]:
    times, got = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--thresholds", type=int, default=1001)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/hold_step.json"))
    args = ap.parse_args()
    grid = np.linspace(0, 1, args.thresholds)
    rows = []
    for k, fleet in FLEETS.items():
        cal = [{"threshold": float(t), "cost": 100, "cost_advantage": 0, "quality_drop": 0} for t in grid]
        for target in (1.0, 5.0, 100.0):  # 100: no threshold is over it, the loop visits every one
            hold = Hold("max_quality_drop", target, fleet, cal, pair_window=args.pairs)
            pairs = make_pairs(fleet, args.pairs)
            for p in pairs:
                hold.add_pair(p)
                hold.scores.append(p.scores)
            loop_ms, loop_thr = timed(lambda: per_threshold(pairs, hold), max(3, args.repeat // 5))  # noqa: B023
            step_ms, (step_thr, _) = timed(hold._quality_step, args.repeat)
            curve_ms, _ = timed(lambda: drop_curve(pairs, fleet, grid, hold.z, None, 200), args.repeat)  # noqa: B023
            assert step_thr == loop_thr, (k, target, step_thr, loop_thr)  # the same choice
            rows.append({
                "models": k, "target": target, "pairs": args.pairs, "thresholds": args.thresholds,
                "threshold": step_thr, "per_threshold_ms": loop_ms, "step_ms": step_ms, "curve_ms": curve_ms,
            })  # fmt: skip
    heads = f"{'models':>6s} {'target':>7s} {'threshold':>9s} {'per-threshold loop':>19s} {'control step':>13s}"
    print(f"{heads} {'curve alone':>12s}")
    for r in rows:
        print(
            f"{r['models']:6d} {r['target']:6.0f}% {r['threshold']:9.3f} {r['per_threshold_ms']:16.1f} ms "
            f"{r['step_ms']:10.2f} ms {r['curve_ms']:9.2f} ms"
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    payload = {"benchmark": "hold_step", "commit": commit.strip(), "cpus": os.cpu_count(), "results": rows}
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
