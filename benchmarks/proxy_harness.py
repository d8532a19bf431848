"""What the proxy benchmarks share: the upstream they relay to (a minimal OpenAI-protocol server in
its own process that answers at once), the load generators (wrk with a Lua script over many
prompts, or an asyncio client), starting, waiting for and stopping servers, CPU and RSS of a process
tree from /proc, the router they serve, and a scratch directory removed at exit.

Used by ``proxy_overhead.py`` and its modes (``proxy_mode_paired.py``, ``proxy_mode_stream.py``,
``proxy_mode_side_effect.py``).
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
        text = "ok"
        if body["model"] == "judge":  # the judge of shadow checks (--mode paired --live), in its protocol
            nonce = body["messages"][-1]["content"].rsplit("VERDICT-", 1)[-1].split(":", 1)[0]
            text = f"VERDICT-{nonce}: 7"
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
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


def git_commit(checkout: Path) -> str | None:
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
    from hybridllm.model.head import HeadConfig

    out = directory / ("router" if knn else "router-no-memory")
    opts = TrainOptions(small=SMALL, large=LARGE, head=HeadConfig(extra=["log_tokens"], knn=knn))
    train_router(read_table(SHARED / "mmlu_pro.jsonl")[:rows], opts, out, show_progress=False)
    return out
