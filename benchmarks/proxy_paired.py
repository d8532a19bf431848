"""One-client latency of this checkout's proxy against another checkout's, measured in pairs.

`proxy_overhead.py` measures each path after the other; on this shared 2-core machine a path's
one-client p50 drifts by more between minutes than most changes move it. Here both proxies run at
the same time in front of one upstream, and short one-client `wrk` runs alternate between them
(the order flipped every round), so each round compares the two under the same conditions. Reported
per router (with and without the memory member): the median of each side's per-round p50 and in
how many rounds this checkout was faster.

    git worktree add /tmp/prev <commit>
    python benchmarks/proxy_paired.py --baseline-src /tmp/prev/src        # 12 rounds of 2 s per side
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from proxy_overhead import (
    REPO,
    _commit,
    bench_router,
    free_port,
    gsm8k_prompts,
    run_upstream,
    run_wrk,
    start_server,
    stop_server,
    wait_up,
    write_result,
)


def paired(router: Path, url: str, baseline_src: str, rounds: int, seconds: float, tmp: str) -> dict:
    prompts = gsm8k_prompts()[:1000]
    serve = [sys.executable, "-m", "hybridllm.cli", "serve", "--router", str(router), "--small", f"s@{url}",
             "--large", f"l@{url}"]  # fmt: skip
    sides = {"baseline": {"PYTHONPATH": baseline_src}, "this checkout": {}}
    ports, procs = {}, {}
    try:
        for name, env in sides.items():
            ports[name] = free_port()
            log = Path(tmp) / f"{name.replace(' ', '_')}-{router.name}.log"
            procs[name] = start_server([*serve, "--port", str(ports[name])], log, env)
        for port in ports.values():
            wait_up(port)
            run_wrk(port, prompts, 8, 2, tmp)  # warm-up
        p50: dict[str, list[float]] = {name: [] for name in sides}
        for rnd in range(rounds):
            order = list(sides) if rnd % 2 == 0 else list(sides)[::-1]
            for name in order:
                p50[name].append(run_wrk(ports[name], prompts, 1, seconds, tmp)["p50_ms"])
    finally:
        for proc in procs.values():
            stop_server(proc)
    base, now = np.array(p50["baseline"]), np.array(p50["this checkout"])
    return {
        "router": "with memory member" if router.name == "router" else "without memory member",
        "rounds": rounds,
        "baseline_p50_ms": float(np.median(base)),
        "p50_ms": float(np.median(now)),
        "median_paired_diff_ms": float(np.median(now - base)),
        "rounds_faster": int((now < base).sum()),
        "baseline_rounds_p50_ms": base.tolist(),
        "rounds_p50_ms": now.tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-src", required=True, help="the other checkout's src/ (git worktree add DIR COMMIT)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each one-client run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "proxy_paired.json"))
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    tmp = tempfile.mkdtemp()
    routers = [bench_router(Path(tmp), 2000), bench_router(Path(tmp), 2000, knn=False)]
    up_port = free_port()
    upstream = mp.get_context("spawn").Process(target=run_upstream, args=(up_port,), daemon=True)
    upstream.start()
    try:
        wait_up(up_port)
        results = [
            paired(r, f"http://127.0.0.1:{up_port}/v1", args.baseline_src, args.rounds, args.seconds, tmp)
            for r in routers
        ]
    finally:
        upstream.terminate()
    print(f"\n{'router':22s} {'baseline p50':>13s} {'this p50':>9s} {'paired diff':>12s} {'faster':>8s}")
    for r in results:
        print(
            f"{r['router']:22s} {r['baseline_p50_ms']:10.3f} ms {r['p50_ms']:6.3f} ms "
            f"{r['median_paired_diff_ms']:+9.3f} ms {r['rounds_faster']:4d}/{r['rounds']}"
        )
    payload = {
        "benchmark": "proxy_paired",
        "client": "wrk, 1 connection",
        "commit": _commit(REPO),
        "baseline_commit": _commit(Path(args.baseline_src).resolve().parent),
        "cpus": os.cpu_count(),
        "results": results,
    }
    write_result(args.out, payload)


if __name__ == "__main__":
    main()
