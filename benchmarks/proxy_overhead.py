"""Proxy overhead: the same requests sent straight to a fast upstream, through `hybridllm serve`
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
the proxy of another checkout and this one, both with a router trained without the memory member
(which versions before it cannot read); LiteLLM 1.x from its own virtualenv (`python -m venv
/tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`) with a master key, model
`hybrid` mapped to the same upstream, no routing; and the floor of the stack: `benchmarks/bare_relay.py`,
a bare ASGI relay on the same server and client, alone, with one routing decision per request, and
with the decisions of concurrent requests scored together (one process, and --workers N processes).
Per path: p50 with one client, then requests/s, p50, p99, errors and timeouts ("lost") at
--concurrency; for `hybridllm` also its RSS over --rss-requests requests. Writes benchmarks/results/proxy_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
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


async def load(url: str, prompts: list[str], concurrency: int, auth: str = "") -> tuple[list[float], int, float]:
    """The Python load generator: aiohttp (its client costs a tenth of httpx's CPU per request,
    which matters when the generator shares the cores with what it measures)."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                p = queue.get_nowait()
                t = time.perf_counter()
                body = {"model": "hybrid", "messages": [{"role": "user", "content": p}], "max_tokens": 1}
                try:
                    async with client.post(f"{url}/chat/completions", json=body) as r:
                        data = await r.json(content_type=None)
                    ok = r.status == 200 and data["choices"][0]["message"]["content"] == "ok"
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
local auth = os.getenv("AUTH")
if auth ~= nil and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end
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


def run_wrk(port: int, prompts: list[str], concurrency: int, seconds: float, tmp: str, auth: str = "") -> dict:
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
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PROMPTS_FILE": str(bodies), "AUTH": auth},
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


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the workers of --workers N), in MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            for k in kids:
                out += [int(k), *_children(int(k))]
    return out


def start_server(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
    )


def stop_server(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_up(port: int, auth: str = "", model: str = "hybrid") -> None:
    import httpx

    deadline = time.time() + 180
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    while time.time() < deadline:
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "warm"}]},
                headers=headers,
                timeout=5,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not start")


def _cpu_tree(pid: int) -> float:
    return sum(cpu_seconds(p) for p in [pid, *_children(pid)])


def measure(
    name: str, port: int, args: argparse.Namespace, prompts: list[str], tmp: str, auth: str = "", pid: int = 0
) -> dict:
    """One path: a 1-client run (the added latency) and a run at --concurrency (throughput); with
    ``pid``, the CPU time that process and its children spent per request in the loaded run."""
    if args.client == "wrk":
        run_wrk(port, prompts[:1000], args.concurrency, 2, tmp, auth)  # warm-up
        one = run_wrk(port, prompts[:1000], 1, args.seconds / 2, tmp, auth)
        cpu0 = _cpu_tree(pid) if pid else 0.0
        many = run_wrk(port, prompts[:1000], args.concurrency, args.seconds, tmp, auth)
    else:
        asyncio.run(load(f"http://127.0.0.1:{port}/v1", prompts[:200], args.concurrency, auth))
        one = _python_run(port, prompts[:500], 1, auth)
        cpu0 = _cpu_tree(pid) if pid else 0.0
        many = _python_run(port, prompts, args.concurrency, auth)
    cpu = round(1e3 * (_cpu_tree(pid) - cpu0) / max(many["requests"], 1), 3) if pid else None
    out = {
        "p50_ms_1_client": one["p50_ms"],
        "requests_per_s": many["requests_per_s"],
        "p50_ms": many["p50_ms"],
        "p99_ms": many["p99_ms"],
        "requests": many["requests"],
        "errors": many["errors"],
        "lost": many["lost"],
        "cpu_ms_per_request": cpu,
    }
    print(f"  {name}: {out}", flush=True)
    return out


def gsm8k_prompts() -> list[str]:
    """The GSM8K test questions the proxy benchmarks send (``../shared/data``)."""
    return [json.loads(line)["prompt"] for line in (SHARED / "gsm8k" / "test.jsonl").open()]


def scratch_dir() -> str:
    """A temporary directory for this run (routers, request bodies, server logs), removed when the
    process exits."""
    d = tempfile.mkdtemp(prefix="hybridllm-bench-")
    atexit.register(shutil.rmtree, d, True)
    return d


def write_result(out: str | Path, payload: dict) -> None:
    """A benchmark's JSON, written where ``--out`` says; says where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def start_upstream() -> tuple[mp.process.BaseProcess, int]:
    """The benchmarks' upstream (:func:`run_upstream`) in its own process on a free port, answering."""
    port = free_port()
    proc = mp.get_context("spawn").Process(target=run_upstream, args=(port,), daemon=True)
    proc.start()
    try:
        wait_up(port)
    except BaseException:
        proc.terminate()
        raise
    return proc, port


def bare_relay_cmd(url: str) -> list[str]:
    """The command that starts ``benchmarks/bare_relay.py`` in front of the upstream at ``url`` (…/v1)."""
    return [sys.executable, str(REPO / "benchmarks" / "bare_relay.py"), "--upstream", url.removesuffix("/v1")]


def median_round(runs: list[dict]) -> dict:
    """A path's figures over its rounds: the loaded figures of the round with the median throughput,
    the median one-client p50, each round's throughput and one-client p50 beside them, and errors
    and losses summed over all rounds."""
    by_rate = sorted(runs, key=lambda r: r["requests_per_s"])
    out = dict(by_rate[(len(by_rate) - 1) // 2])
    if len(runs) > 1:
        out["p50_ms_1_client"] = float(np.median([r["p50_ms_1_client"] for r in runs]))
        out["rounds_requests_per_s"] = [r["requests_per_s"] for r in runs]
        out["rounds_p50_ms_1_client"] = [r["p50_ms_1_client"] for r in runs]
        out["errors"] = sum(r["errors"] for r in runs)
        out["lost"] = sum(r["lost"] for r in runs)
    return out


def _python_run(port: int, prompts: list[str], concurrency: int, auth: str) -> dict:
    lat, errors, wall = asyncio.run(load(f"http://127.0.0.1:{port}/v1", prompts, concurrency, auth))
    ms = np.asarray(lat) * 1000
    return {
        "requests": len(lat),
        "errors": errors,
        "lost": len(prompts) - len(lat),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "requests_per_s": round(len(lat) / wall, 1),
    }


def rss_over(port: int, pid: int, total: int, tmp: str, prompts: list[str], concurrency: int) -> list[list[float]]:
    """RSS of the proxy while it answers ``total`` requests: [requests so far, MB] per step."""
    done, series = 0, [[0, round(rss_mb(pid), 1)]]
    while done < total:
        r = run_wrk(port, prompts[:1000], concurrency, 4, tmp)
        done += r["requests"]
        series.append([done, round(rss_mb(pid), 1)])
    return series


def _commit(checkout: Path) -> str | None:
    """The commit a checkout is at (the JSON says which code each row measured)."""
    try:
        cmd = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
        got = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return None
    return got.stdout.strip() or None


def bench_router(directory: Path, rows: int, knn: bool = True) -> Path:
    """The router the proxy benchmarks serve: static encoder, trained on the first ``rows`` rows of
    MMLU-Pro (Mistral-7B -> Mixtral-8x7B); ``knn=False``: without the memory member, a router that
    hybridllm versions before it can read (the --baseline-src run)."""
    from hybridllm import TrainOptions, read_table, train_router
    from hybridllm.head import HeadConfig

    out = directory / ("router" if knn else "router-no-memory")
    opts = TrainOptions(small=SMALL, large=LARGE, head=HeadConfig(extra=["log_tokens"], knn=knn))
    train_router(read_table(SHARED / "mmlu_pro.jsonl")[:rows], opts, out, show_progress=False)
    return out


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


def main() -> None:
    ap = argparse.ArgumentParser()
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
    ap.add_argument("--rss-requests", type=int, default=20000, help="requests for the RSS check (0: skip)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "proxy_overhead.json"))
    args = ap.parse_args()
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
        if args.baseline_src:
            src = str(Path(args.baseline_src).resolve())
            plain = bench_router(Path(tmp), 2000, knn=False)
            serve_plain = [*serve[:5], str(plain), *serve[6:]]
            runs.insert(0, ("hybridllm, router without memory", serve_plain, {}, ""))
            runs.insert(0, ("hybridllm (baseline)", serve_plain, {"PYTHONPATH": src}, ""))
        if not args.no_floor:
            bare = bare_relay_cmd(url)
            runs.insert(0, ("floor: bare relay + batched router", [*bare, "--route", str(router), "--batch"], {}, ""))
            runs.insert(0, ("floor: bare relay + router", [*bare, "--route", str(router)], {}, ""))
            runs.insert(0, ("floor: bare ASGI relay", bare, {}, ""))
        if args.workers > 1:
            if not args.no_floor:
                batched = [*bare_relay_cmd(url), "--route", str(router), "--batch", "--workers", str(args.workers)]
                runs.append((f"floor: bare relay + batched router, {args.workers} workers", batched, {}, ""))
            runs.append((f"hybridllm --workers {args.workers}", [*serve, "--workers", str(args.workers)], {}, ""))
        if Path(args.litellm).exists():
            key = "sk-bench-master"
            cfg = Path(tmp) / "litellm.yaml"
            cfg.write_text(LITELLM_CONFIG.format(url=url, key=key))
            cmd = [args.litellm, "--config", str(cfg), "--host", "127.0.0.1"]
            runs.append(("LiteLLM proxy (pass-through)", cmd, {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, key))
        else:
            print(f"LiteLLM not found at {args.litellm}: skipped", flush=True)
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
        "commit": _commit(REPO),
        "baseline_commit": _commit(Path(args.baseline_src).parent) if args.baseline_src else None,
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
