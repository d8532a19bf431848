"""What the proxy costs, in one benchmark with modes on one harness (benchmarks/proxy_harness.py):

    --mode throughput (default)  requests/s and added latency against direct, the floor relays and LiteLLM
    --mode paired                two proxies (or two routers: --routers) one client at a time, alternating rounds
    --mode stream                the delay a relayed stream adds to each chunk
    --mode side-effect           what a routing decision adds to one client's request

Each mode's own options: `python benchmarks/proxy_overhead.py --mode MODE --help`.

Throughput: the same requests sent straight to a fast upstream, through `hybridllm serve`
(one process and --workers N) and through LiteLLM's proxy as a plain pass-through, in one run with
one load generator (wrk, C, one thread, 1,000 different GSM8K prompts; or --client python).

    python benchmarks/proxy_overhead.py                # wrk, 64 clients, 15 s per path
    python benchmarks/proxy_overhead.py --client python --requests 5000
    python benchmarks/proxy_overhead.py --rounds 3     # every path 3 times, interleaved; the median round
    python benchmarks/proxy_overhead.py --shipped      # also `hybridllm serve` with the shipped router

The upstream is a minimal OpenAI-protocol server (uvicorn, its own process, answers at once). Each
proxy runs as its users run it, in its own process(es), and is started, measured and stopped in turn:
`hybridllm serve` with a router trained on a slice of MMLU-Pro (static encoder), model name `hybrid`
(a real routing decision on every request, the JSON access log written); with --baseline-src also
the proxy of another checkout beside this one, both serving the shipped router (an artifact every
release reads); LiteLLM 1.x from its own virtualenv (`python -m venv
/tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`) with a master key, model
`hybrid` mapped to the same upstream, no routing; and the floor of the stack: `benchmarks/bare_relay.py`,
a bare ASGI relay on the same server and client, alone, with one routing decision per request, and
with the decisions of concurrent requests scored together (one process, and --workers N processes).
Per path: p50 with one client, then requests/s, p50, p99, errors and timeouts ("lost") at
--concurrency; for `hybridllm` also its RSS over --rss-requests requests. Writes benchmarks/results/proxy_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_harness import (
    REPO,
    bare_relay_cmd,
    bench_router,
    free_port,
    git_commit,
    gsm8k_prompts,
    measure,
    median_round,
    rss_over,
    scratch_dir,
    start_server,
    start_upstream,
    stop_server,
    wait_up,
    write_result,
)

LITELLM_CONFIG = """model_list:
  - model_name: hybrid
    litellm_params:
      model: openai/s
      api_base: {url}
      api_key: sk-upstream
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
"""


MODES = ("throughput", "paired", "stream", "side-effect")


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--mode", choices=MODES, default="throughput")
    known, rest = pre.parse_known_args()
    if known.mode != "throughput":
        import proxy_mode_paired
        import proxy_mode_side_effect
        import proxy_mode_stream

        modes = {"paired": proxy_mode_paired, "stream": proxy_mode_stream, "side-effect": proxy_mode_side_effect}
        modes[known.mode].main(rest)
        return
    throughput(rest)


def throughput(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="proxy_overhead.py [--mode throughput]")
    ap.add_argument("--requests", type=int, default=5000, help="python client: requests per run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    ap.add_argument("--seconds", type=float, default=15, help="wrk: length of the loaded run per path")
    ap.add_argument("--workers", type=int, default=2, help="also run hybridllm serve --workers N (0: skip)")
    ap.add_argument(
        "--litellm",
        default=shutil.which("litellm") or "/tmp/litellm-venv/bin/litellm",
        help="LiteLLM's proxy executable (pip install 'litellm[proxy]' in its own virtualenv); skipped if absent",
    )
    ap.add_argument(
        "--baseline-src",
        help="also run the proxy from another checkout's src/ (`git worktree add /tmp/old COMMIT`, then /tmp/old/src)",
    )
    ap.add_argument("--shipped", action="store_true", help="also serve the shipped default router")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare ASGI relay (benchmarks/bare_relay.py) rows")
    ap.add_argument(
        "--rounds", type=int, default=1, help="measure every path this many times, interleaved; report the median round"
    )
    ap.add_argument("--only", nargs="+", help="measure only the paths whose name contains one of these (direct always)")
    ap.add_argument("--rss-requests", type=int, default=20000, help="requests for the RSS check (0: skip)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "proxy_overhead.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    tmp = scratch_dir()
    router = bench_router(Path(tmp), 2000)
    prompts = gsm8k_prompts()
    prompts = (prompts * (args.requests // len(prompts) + 1))[: args.requests]
    upstream, up_port = start_upstream()
    url = f"http://127.0.0.1:{up_port}/v1"
    serve = [sys.executable, "-m", "hybridllm.cli", "serve", "--router", str(router), "--small", f"s@{url}",
             "--large", f"l@{url}"]  # fmt: skip
    rss: list[list[float]] = []
    rounds: dict[str, list[dict]] = {}
    try:
        runs: list[tuple[str, list[str], dict[str, str], str]] = [("hybridllm", serve, {}, "")]
        if args.shipped:  # `hybridllm serve` with no --router: the shipped router (linear member only)
            runs.append(("hybridllm, shipped router", [*serve[:4], *serve[6:]], {}, ""))
        if args.baseline_src:  # the shipped router, which every release reads, served by both checkouts
            src = str(Path(args.baseline_src).resolve())
            if not args.shipped:
                runs.append(("hybridllm, shipped router", [*serve[:4], *serve[6:]], {}, ""))
            runs.insert(0, ("hybridllm (baseline), shipped router", [*serve[:4], *serve[6:]], {"PYTHONPATH": src}, ""))
        bare = bare_relay_cmd(url)
        batched = [*bare, "--route", str(router), "--batch"]
        if not args.no_floor:
            runs.insert(0, ("floor: bare relay + batched router", batched, {}, ""))
            if args.shipped:
                from hybridllm.model.router import default_router_dir

                shipped = [*bare, "--route", str(default_router_dir()), "--batch"]
                runs.insert(0, ("floor: bare relay + batched shipped router", shipped, {}, ""))
            runs.insert(0, ("floor: bare relay + router", [*bare, "--route", str(router)], {}, ""))
            runs.insert(0, ("floor: bare ASGI relay", bare, {}, ""))
        if args.workers > 1:
            if not args.no_floor:
                several = [*batched, "--workers", str(args.workers)]
                runs.append((f"floor: bare relay + batched router, {args.workers} workers", several, {}, ""))
            runs.append((f"hybridllm --workers {args.workers}", [*serve, "--workers", str(args.workers)], {}, ""))
        if Path(args.litellm).exists():
            key = "sk-bench-master"
            cfg = Path(tmp) / "litellm.yaml"
            cfg.write_text(LITELLM_CONFIG.format(url=url, key=key))
            cmd = [args.litellm, "--config", str(cfg), "--host", "127.0.0.1"]
            runs.append(("LiteLLM proxy (pass-through)", cmd, {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, key))
        else:
            print(f"LiteLLM not found at {args.litellm}: skipped", flush=True)
        if args.only:
            runs = [r for r in runs if any(k in r[0] for k in args.only)]
        for rnd in range(args.rounds):
            if args.rounds > 1:
                print(f"round {rnd + 1} of {args.rounds}", flush=True)
            rounds.setdefault("direct", []).append(measure("direct", up_port, args, prompts, tmp, pid=upstream.pid))
            for name, cmd, env, auth in runs:
                port = free_port()
                proc = start_server([*cmd, "--port", str(port)], Path(tmp) / f"{name.split()[0]}-{port}.log", env)
                try:
                    wait_up(port, auth)
                    rounds.setdefault(name, []).append(measure(name, port, args, prompts, tmp, auth, proc.pid))
                    if name == "hybridllm" and rnd == 0 and args.rss_requests and args.client == "wrk":
                        rss = rss_over(port, proc.pid, args.rss_requests, tmp, prompts, args.concurrency)
                        print(f"  RSS over {rss[-1][0]} requests: {rss}", flush=True)
                finally:
                    stop_server(proc)
    finally:
        upstream.terminate()
    results = {name: median_round(runs_of) for name, runs_of in rounds.items()}
    d = results["direct"]
    payload = {
        "benchmark": "proxy_overhead",
        "client": args.client,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "results": results,
        "added_p50_ms_1_client": {
            k: round(v["p50_ms_1_client"] - d["p50_ms_1_client"], 3) for k, v in results.items() if k != "direct"
        },
        "added_p50_ms_loaded": {k: round(v["p50_ms"] - d["p50_ms"], 2) for k, v in results.items() if k != "direct"},
        "share_of_direct_requests_per_s": {
            k: round(v["requests_per_s"] / d["requests_per_s"], 3) for k, v in results.items() if k != "direct"
        },
        "rss_mb_over_requests": rss,
        "commit": git_commit(REPO),
        "baseline_commit": git_commit(Path(args.baseline_src).parent) if args.baseline_src else None,
    }
    write_result(args.out, payload)
    print(
        f"\n{'path':32s} {'req/s':>8s} {'of direct':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s} {'lost':>4s} "
        f"{'1-client p50 ms':>15s} {'added':>7s} {'CPU ms/req':>10s}"
    )
    for name, r in results.items():
        share = "" if name == "direct" else f"{payload['share_of_direct_requests_per_s'][name] * 100:8.1f}%"
        added = "" if name == "direct" else f"{payload['added_p50_ms_1_client'][name]:7.3f}"
        print(
            f"{name:32s} {r['requests_per_s']:8.1f} {share:>9s} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['errors']:6d} "
            f"{r['lost']:4d} {r['p50_ms_1_client']:15.3f} {added:>7s} {r.get('cpu_ms_per_request') or 0:10.3f}"
        )
    if rss:
        print(f"hybridllm RSS: {rss[0][1]} MB at start, {rss[-1][1]} MB after {rss[-1][0]} requests")
    sys.exit(0)


if __name__ == "__main__":
    main()
