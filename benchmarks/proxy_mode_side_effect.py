"""What one routing decision costs a one-client proxy beyond its own compute time, on this machine.

A routing decision takes about 0.2 ms in a warm loop, yet adding it to the bare relay of
`bare_relay.py` adds about 0.5 ms to the one-client latency. This runs the bare relay (one upstream,
`wrk` with one connection, all on the same 2 cores) four ways: alone; spending the router's measured
warm-loop time on plain CPU work before each upstream call; writing 2 MB of memory before each call;
and making the real routing decision. For each it reports the one-client p50 and the median time of
the upstream call itself (post to last byte, timed inside the relay), which is the same request to
the same upstream every time. Each mode runs twice, the order interleaved; the table shows medians.

    python benchmarks/proxy_overhead.py --mode side-effect        # about 2 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from proxy_harness import (
    REPO,
    bare_relay_cmd,
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


def warm_decision_ms(router_dir: Path, prompts: list[str]) -> float:
    """Median time of one Router.score call on a lone prompt, in a warm loop (after one pass)."""
    from hybridllm import load_router

    router = load_router(router_dir)
    for p in prompts:
        router.score([p])
    times = []
    for p in prompts:
        t = time.perf_counter()
        router.score([p])
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="proxy_overhead.py --mode side-effect")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each one-client run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "router_side_effect.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    tmp = scratch_dir()
    router = bench_router(Path(tmp), 2000)
    prompts = gsm8k_prompts()[:1000]
    decision_ms = warm_decision_ms(router, prompts)
    upstream, up_port = start_upstream()
    url = f"http://127.0.0.1:{up_port}/v1"
    modes = {
        "bare relay": [],
        f"+ {1e3 * decision_ms:.0f} µs of plain CPU work": ["--spin-us", f"{1e3 * decision_ms:.0f}"],
        "+ 2 MB of memory written": ["--sweep-kb", "2048"],
        "+ one routing decision": ["--route", str(router)],
    }
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    try:
        for _ in range(2):
            for name, extra in modes.items():
                port, timings = free_port(), Path(tmp) / "timings.json"
                proc = start_server([*bare_relay_cmd(url), *extra, "--timings", str(timings), "--port", str(port)],
                                    Path(tmp) / "relay.log")  # fmt: skip
                try:
                    wait_up(port)
                    run_wrk(port, prompts, 1, 2, tmp)  # warm-up (one client too: the relay times every call)
                    one = run_wrk(port, prompts, 1, args.seconds, tmp)
                finally:
                    stop_server(proc)
                runs[name].append({"p50_ms": one["p50_ms"], **json.loads(timings.read_text())})
    finally:
        upstream.terminate()
    base = statistics.median(r["p50_ms"] for r in runs["bare relay"])
    rows = []
    print(f"\none routing decision in a warm loop: {decision_ms:.3f} ms\n")
    print(f"{'mode':34s} {'1-client p50':>13s} {'added':>9s} {'upstream call p50':>18s}")
    for name, rs in runs.items():
        p50 = statistics.median(r["p50_ms"] for r in rs)
        call = statistics.median(r["upstream_call_p50_ms"] for r in rs)
        rows.append({"mode": name, "p50_ms_1_client": p50, "added_ms": p50 - base, "upstream_call_p50_ms": call,
                     "runs": rs})  # fmt: skip
        print(f"{name:34s} {p50:10.3f} ms {p50 - base:+6.3f} ms {call:15.3f} ms")
    payload = {
        "benchmark": "router_side_effect",
        "commit": git_commit(REPO),
        "cpus": os.cpu_count(),
        "decision_warm_ms": decision_ms,
        "results": rows,
    }
    write_result(args.out, payload)
