"""One-client latency of this checkout's proxy against another checkout's, measured in pairs.

`proxy_overhead.py` measures each path after the other; on this shared 2-core machine a path's
one-client p50 drifts by more between minutes than most changes move it. Here both proxies run at
the same time in front of one upstream, and short one-client `wrk` runs alternate between them
(the order flipped every round), so each round compares the two under the same conditions. Reported
per router (with and without the memory member): the median of each side's per-round p50 and in
how many rounds this checkout was faster.

    git worktree add /tmp/prev <commit>
    python benchmarks/proxy_overhead.py --mode paired --baseline-src /tmp/prev/src        # 12 rounds of 2 s per side
    python benchmarks/proxy_overhead.py --mode paired --routers    # this checkout: benchmark router vs the shipped one
    python benchmarks/proxy_overhead.py --mode paired --live       # shipped router without / with shadow + each hold
    python benchmarks/proxy_overhead.py --mode paired --sessions   # shipped router with sessions off / on

With --live each round also measures both sides' requests/s at --clients connections.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from proxy_harness import (
    REPO,
    bench_router,
    free_port,
    git_commit,
    gsm8k_prompts,
    run_wrk,
    scratch_dir,
    start_server,
    start_upstream,
    stop_server,
    wait_up,
    write_result,
)


def paired(
    sides: dict[str, tuple[list[str], dict[str, str]]], rounds: int, seconds: float, tmp: str, clients: int = 0
) -> dict:
    """Two servers, ``{name: (command, environment)}``, the first the baseline: both up at once,
    one-client runs alternated, the order flipped every round."""
    prompts = gsm8k_prompts()[:1000]
    ports, procs = {}, {}
    try:
        for i, (name, (cmd, env)) in enumerate(sides.items()):
            ports[name] = free_port()
            procs[name] = start_server(
                [*cmd, "--port", str(ports[name])], Path(tmp) / f"side{i}-{ports[name]}.log", env
            )
        for port in ports.values():
            wait_up(port)
            run_wrk(port, prompts, 8, 2, tmp)  # warm-up
        p50: dict[str, list[float]] = {name: [] for name in sides}
        p99: dict[str, list[float]] = {name: [] for name in sides}
        rps: dict[str, list[float]] = {name: [] for name in sides}
        for rnd in range(rounds):
            order = list(sides) if rnd % 2 == 0 else list(sides)[::-1]
            for name in order:
                one = run_wrk(ports[name], prompts, 1, seconds, tmp)
                p50[name].append(one["p50_ms"])
                p99[name].append(one["p99_ms"])
                if clients:
                    rps[name].append(run_wrk(ports[name], prompts, clients, seconds, tmp)["requests_per_s"])
    finally:
        for proc in procs.values():
            stop_server(proc)
    (first, base), (second, now) = ((k, np.array(v)) for k, v in p50.items())
    return {
        "baseline": first,
        "compared": second,
        "rounds": rounds,
        "baseline_p50_ms": float(np.median(base)),
        "p50_ms": float(np.median(now)),
        "median_paired_diff_ms": float(np.median(now - base)),
        "rounds_faster": int((now < base).sum()),
        "baseline_rounds_p50_ms": base.tolist(),
        "rounds_p50_ms": now.tolist(),
        "baseline_p99_ms": float(np.median(p99[first])),
        "p99_ms": float(np.median(p99[second])),
        **(
            {
                "clients": clients,
                "baseline_requests_per_s": float(np.median(rps[first])),
                "requests_per_s": float(np.median(rps[second])),
                "rounds_requests_per_s": {k: v for k, v in rps.items()},
            }
            if clients
            else {}
        ),
    }


def serve_cmd(url: str, router: Path | None) -> list[str]:
    """`hybridllm serve` in front of ``url`` for both models; ``router`` None: the shipped router."""
    chosen = [] if router is None else ["--router", str(router)]
    return [sys.executable, "-m", "hybridllm.cli", "serve", *chosen, "--small", f"s@{url}", "--large", f"l@{url}"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="proxy_overhead.py --mode paired")
    ap.add_argument("--baseline-src", help="the other checkout's src/ (git worktree add DIR COMMIT)")
    ap.add_argument(
        "--routers",
        action="store_true",
        help="instead: this checkout with the benchmark router against the shipped one",
    )
    ap.add_argument("--live", action="store_true", help="instead: the shipped router without and with live control")
    ap.add_argument(
        "--sessions", action="store_true", help="instead: the shipped router with sessions off (--no-sessions) and on"
    )
    ap.add_argument("--clients", type=int, default=16, help="--live: connections of the requests/s runs")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each one-client run")
    ap.add_argument("--out", help="JSON (default: benchmarks/results/proxy_paired[_routers].json)")
    args = ap.parse_args(argv)
    if sum([bool(args.baseline_src), args.routers, args.live, args.sessions]) != 1:
        ap.error("give --baseline-src DIR (two checkouts), --routers (two routers), --live or --sessions, one of them")
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    tmp = scratch_dir()
    shipped = args.live or args.sessions
    routers = [] if shipped else [bench_router(Path(tmp), 2000)]
    if not args.routers and not shipped:
        routers.append(bench_router(Path(tmp), 2000, knn=False))
    upstream, up_port = start_upstream()
    url = f"http://127.0.0.1:{up_port}/v1"
    try:
        if args.live:
            shadow = ["--shadow-rate", "0.05", "--judge", f"judge@{url}"]
            pairs = {
                f"shipped router: plain vs shadow 5 % + hold {hold}": {
                    "plain": (serve_cmd(url, None), {}),
                    "shadow + hold": ([*serve_cmd(url, None), *shadow, "--hold", hold], {}),
                }
                for hold in ("cost_advantage=50", "max_quality_drop=5")
            }
        elif args.sessions:  # each wrk request a conversation's first turn: its session derived and pinned
            secret = {"HYBRIDLLM_SESSION_SECRET": "benchmark secret, shared by no one"}
            pairs = {
                "shipped router: sessions off vs on": {
                    "sessions off": ([*serve_cmd(url, None), "--no-sessions"], secret),
                    "sessions on": (serve_cmd(url, None), secret),
                }
            }
        elif args.routers:
            pairs = {
                "shipped router vs the benchmark router": {
                    "benchmark router (MMLU-Pro, with memory)": (serve_cmd(url, routers[0]), {}),
                    "shipped router": (serve_cmd(url, None), {}),
                }
            }
        else:
            # this checkout as it ships (sessions on) and with --no-sessions: what the request path
            # itself costs apart from the session rules (their own cost: --sessions)
            secret = {"HYBRIDLLM_SESSION_SECRET": "benchmark secret, shared by no one"}
            pairs = {
                f"{'with' if r is routers[0] else 'without'} memory member{label}": {
                    "baseline": (serve_cmd(url, r), {"PYTHONPATH": args.baseline_src}),
                    "this checkout": ([*serve_cmd(url, r), *extra], secret),
                }
                for r in routers
                for label, extra in (("", []), (", sessions off", ["--no-sessions"]))
            }
        results = []
        for label, sides in pairs.items():
            clients = args.clients if args.live else 0
            results.append({"router": label, **paired(sides, args.rounds, args.seconds, tmp, clients)})
    finally:
        upstream.terminate()
    print(f"\n{'router':42s} {'baseline p50':>13s} {'its p50':>9s} {'paired diff':>12s} {'faster':>8s} {'p99':>18s}")
    for r in results:
        print(
            f"{r['router']:42.42s} {r['baseline_p50_ms']:10.3f} ms {r['p50_ms']:6.3f} ms "
            f"{r['median_paired_diff_ms']:+9.3f} ms {r['rounds_faster']:4d}/{r['rounds']}"
            f"  {r['baseline_p99_ms']:.2f} vs {r['p99_ms']:.2f} ms"
            + (f"   req/s {r['baseline_requests_per_s']:.0f} vs {r['requests_per_s']:.0f}" if "clients" in r else "")
        )
    payload = {
        "benchmark": "proxy_paired",
        "client": "wrk, 1 connection",
        "commit": git_commit(REPO),
        "baseline_commit": git_commit(Path(args.baseline_src).resolve().parent) if args.baseline_src else None,
        "cpus": os.cpu_count(),
        "results": results,
    }
    name = (
        "proxy_paired_routers.json"
        if args.routers
        else "proxy_live_control.json"
        if args.live
        else "sessions_overhead.json"
        if args.sessions
        else "proxy_paired.json"
    )
    write_result(args.out or str(REPO / "benchmarks" / "results" / name), payload)
