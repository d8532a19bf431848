"""Proxy overhead under load: the same requests sent straight to a fast upstream and through
`hybridllm serve`, in one run.

    python benchmarks/proxy_overhead.py --requests 5000 --concurrency 64

The upstream is a minimal OpenAI-protocol server (uvicorn, its own process, answers at once); the
proxy runs in its own process with a router trained on a slice of MMLU-Pro (static encoder), using
the model name `hybrid` (a real routing decision on every request). Writes
benchmarks/results/proxy_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SMALL, LARGE = "Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_upstream(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request):  # type: ignore[no-untyped-def]
        body = await request.json()
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            }
        )

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def run_proxy(port: int, upstream_port: int, router_dir: str, src: str | None = None) -> None:
    """The proxy in this process; ``src``: another checkout's ``src`` directory to import hybridllm
    from (the code before a change, for a side-by-side in one run)."""
    import logging

    if src is not None:
        sys.path.insert(0, src)

    import uvicorn

    from hybridllm.backends import HTTPBackend
    from hybridllm.router import Router
    from hybridllm.serve import ServeOptions, create_app

    logging.getLogger("hybridllm.access").setLevel(logging.WARNING)
    url = f"http://127.0.0.1:{upstream_port}/v1"
    router = Router(router_dir)
    app = create_app(
        router,
        HTTPBackend(model="s", base_url=url, name=SMALL, concurrency=None),
        HTTPBackend(model="l", base_url=url, name=LARGE, concurrency=None),
        ServeOptions(),
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


async def load(url: str, prompts: list[str], concurrency: int) -> tuple[list[float], int, float]:
    import httpx

    lat: list[float] = []
    errors = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                p = queue.get_nowait()
                t = time.perf_counter()
                try:
                    r = await client.post(
                        "/chat/completions",
                        json={"model": "hybrid", "messages": [{"role": "user", "content": p}], "max_tokens": 1},
                    )
                    ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
                except Exception:
                    ok = False
                lat.append(time.perf_counter() - t)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, errors, time.perf_counter() - t0


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local prompts = {}
for line in io.lines(os.getenv("PROMPTS_FILE")) do prompts[#prompts + 1] = line end
local i = 0
request = function()
  i = i % #prompts + 1
  return wrk.format(nil, "/v1/chat/completions", nil, prompts[i])
end
done = function(summary, latency, requests)
  io.write(string.format("JSON %d %d %d %d %.3f %.3f %.3f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""


def run_wrk(port: int, prompts: list[str], concurrency: int, seconds: int, tmp: str) -> dict:
    """wrk (C, one thread) drives the load so the Python servers get the CPU, not the client."""
    import subprocess

    bodies = Path(tmp) / "bodies.txt"
    bodies.write_text(
        "\n".join(
            json.dumps({"model": "hybrid", "messages": [{"role": "user", "content": p}], "max_tokens": 1})
            for p in prompts
        )
        + "\n"
    )
    script = Path(tmp) / "post.lua"
    script.write_text(WRK_LUA)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PROMPTS_FILE": str(bodies)},
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("JSON "))
    n, status_err, sock_err, timeouts, p50, p99, dur = line.split()[1:]
    return {
        "requests": int(n),
        "errors": int(status_err) + int(sock_err) + int(timeouts),
        "lost": int(timeouts),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "requests_per_s": round(int(n) / float(dur), 1),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): what the proxy itself spent,
    steadier on a shared machine than throughput."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(port: int) -> None:
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "large", "messages": [{"role": "user", "content": "warm"}]},
                timeout=5,
            )
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"server on port {port} did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    ap.add_argument("--seconds", type=int, default=20, help="wrk run length per path")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "proxy_overhead.json"))
    ap.add_argument(
        "--baseline-src",
        help="also run the proxy from another checkout's src/ (e.g. `git worktree add /tmp/old <commit>`, "
        "then /tmp/old/src), reported as 'baseline proxy'",
    )
    args = ap.parse_args()
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    from hybridllm import TrainOptions, read_table, train_router
    from hybridllm.head import HeadConfig

    tmp = tempfile.mkdtemp()
    rows = read_table(SHARED / "mmlu_pro.jsonl")[:2000]
    train_router(
        rows,
        TrainOptions(small=SMALL, large=LARGE, head=HeadConfig(extra=["log_tokens"])),
        Path(tmp) / "router",
        show_progress=False,
    )
    prompts = [json.loads(line)["prompt"] for line in (SHARED / "gsm8k" / "test.jsonl").open()]
    prompts = (prompts * (args.requests // len(prompts) + 1))[: args.requests]
    up_port, proxy_port, base_port = free_port(), free_port(), free_port()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=run_upstream, args=(up_port,), daemon=True),
        ctx.Process(target=run_proxy, args=(proxy_port, up_port, str(Path(tmp) / "router")), daemon=True),
    ]
    paths = [("direct", up_port), ("through proxy", proxy_port)]
    owner = {"direct": 0, "through proxy": 1, "baseline proxy": 2}
    if args.baseline_src:
        base_args = (base_port, up_port, str(Path(tmp) / "router"), str(Path(args.baseline_src).resolve()))
        procs.append(ctx.Process(target=run_proxy, args=base_args, daemon=True))
        paths.append(("baseline proxy", base_port))
    for p in procs:
        p.start()
    try:
        for _, port in paths:
            wait_up(port)
        results = {}
        for name, port in paths:
            asyncio.run(load(f"http://127.0.0.1:{port}/v1", prompts[:200], args.concurrency))  # warm-up
            if args.client == "wrk":
                results[name] = run_wrk(port, prompts[:1000], args.concurrency, args.seconds, tmp)
                continue
            cpu0 = cpu_seconds(procs[owner[name]].pid)
            lat, errors, wall = asyncio.run(load(f"http://127.0.0.1:{port}/v1", prompts, args.concurrency))
            cpu = cpu_seconds(procs[owner[name]].pid) - cpu0
            ms = np.asarray(lat) * 1000
            results[name] = {
                "server_cpu_ms_per_request": round(cpu / max(len(lat), 1) * 1000, 3),
                "requests": len(lat),
                "errors": errors,
                "lost": args.requests - len(lat),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "requests_per_s": round(len(lat) / wall, 1),
            }
    finally:
        for p in procs:
            p.terminate()
    d, px = results["direct"], results["through proxy"]
    payload = {
        "benchmark": "proxy_overhead",
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "results": results,
        "added_p50_ms": round(px["p50_ms"] - d["p50_ms"], 2),
        "added_p99_ms": round(px["p99_ms"] - d["p99_ms"], 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    if args.baseline_src:
        payload["baseline_src"] = args.baseline_src
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(
        f"{'path':14s} {'requests':>8s} {'errors':>6s} {'lost':>4s} {'p50 ms':>7s} {'p99 ms':>7s} {'req/s':>7s} "
        f"{'server CPU ms/req':>17s}"
    )
    for name, r in results.items():
        cpu = r.get("server_cpu_ms_per_request")
        print(
            f"{name:14s} {r['requests']:8d} {r['errors']:6d} {r['lost']:4d} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
            f"{r['requests_per_s']:7.1f} {'' if cpu is None else f'{cpu:17.3f}'}"
        )
    print(f"added latency: p50 {payload['added_p50_ms']} ms, p99 {payload['added_p99_ms']} ms")
    sys.exit(0)


if __name__ == "__main__":
    main()
