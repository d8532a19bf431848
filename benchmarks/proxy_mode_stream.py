"""Does the proxy delay a stream? Per-chunk delay of a server-sent-event stream, straight from the
upstream, through the bare ASGI relay of `bare_relay.py` (the floor of the stack: same server, same
upstream client, nothing else) and through `hybridllm serve`, in one run.

    python benchmarks/proxy_overhead.py --mode stream [--rounds 10 --streams 4 --chunks 100 --interval-ms 10]

The upstream (its own process) streams OpenAI chat chunks at a fixed interval, each carrying the
time it was written; the client (aiohttp) notes when each chunk arrives. Delay = arrival - write, per
chunk, on one machine clock. The three paths are measured in rounds, their order flipped every round
(on this shared machine the per-chunk delay drifts between minutes by as much as the paths differ);
each path's p50 is the median of its per-round p50s, its p99 that of all its chunks, and the proxy
is compared with the bare relay round by round. Writes benchmarks/results/stream_relay.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_harness import (
    bare_relay_cmd,
    bench_router,
    free_port,
    scratch_dir,
    start_server,
    stop_server,
    wait_up,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]


def run_upstream(port: int, chunks: int, interval: float) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def chat(request):  # type: ignore[no-untyped-def]
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})

        async def events():  # type: ignore[no-untyped-def]
            for _ in range(chunks):
                delta = {"content": f"{time.time():.6f} "}
                chunk = {"id": "s", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(interval)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


async def delays(port: int, streams: int) -> list[float]:
    import aiohttp

    out: list[float] = []
    body = {"model": "hybrid", "messages": [{"role": "user", "content": "Count."}], "stream": True}
    async with aiohttp.ClientSession() as s:
        for _ in range(streams):
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                buf = b""
                async for piece in r.content.iter_any():
                    now = time.time()
                    buf += piece
                    while b"\n\n" in buf:
                        event, buf = buf.split(b"\n\n", 1)
                        data = event.decode().removeprefix("data: ")
                        if data == "[DONE]":
                            continue
                        for c in json.loads(data)["choices"]:
                            sent = (c.get("delta") or {}).get("content")
                            if sent:
                                out.append(now - float(sent))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="proxy_overhead.py --mode stream")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--streams", type=int, default=4, help="streams per path and round")
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--interval-ms", type=float, default=10)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stream_relay.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HYBRIDLLM_NO_PROGRESS", "1")
    tmp = scratch_dir()
    router = bench_router(Path(tmp), 600)
    up_port, px_port, bare_port = free_port(), free_port(), free_port()
    up = mp.get_context("spawn").Process(
        target=run_upstream, args=(up_port, args.chunks, args.interval_ms / 1000), daemon=True
    )
    up.start()
    url = f"http://127.0.0.1:{up_port}/v1"
    cmd = [sys.executable, "-m", "hybridllm.cli", "serve", "--router", str(router), "--small", f"s@{url}",
           "--large", f"l@{url}", "--port", str(px_port)]  # fmt: skip
    proxy = start_server(cmd, Path(tmp) / "serve.log")
    bare = start_server([*bare_relay_cmd(url), "--port", str(bare_port)], Path(tmp) / "bare.log")
    paths = {"direct": up_port, "bare ASGI relay": bare_port, "through hybridllm": px_port}
    chunks: dict[str, list[float]] = {name: [] for name in paths}
    rounds: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for port in paths.values():
            wait_up(port)
        for rnd in range(args.rounds):
            for name in list(paths) if rnd % 2 == 0 else list(paths)[::-1]:
                d = np.asarray(asyncio.run(delays(paths[name], args.streams))) * 1000
                chunks[name] += d.tolist()
                rounds[name].append(round(float(np.percentile(d, 50)), 3))
    finally:
        stop_server(proxy)
        stop_server(bare)
        up.terminate()
    results = {
        name: {
            "chunks": len(chunks[name]),
            "p50_ms": round(float(np.median(rounds[name])), 3),
            "p99_ms": round(float(np.percentile(chunks[name], 99)), 3),
            "max_ms": round(float(np.max(chunks[name])), 3),
            "rounds_p50_ms": rounds[name],
        }
        for name in paths
    }
    a, b, f = results["direct"], results["through hybridllm"], results["bare ASGI relay"]
    over_floor = np.subtract(rounds["through hybridllm"], rounds["bare ASGI relay"])
    payload = {
        "benchmark": "stream_relay",
        "rounds": args.rounds,
        "streams_per_round": args.streams,
        "chunks_per_stream": args.chunks,
        "interval_ms": args.interval_ms,
        "results": results,
        "added_p50_ms": round(b["p50_ms"] - a["p50_ms"], 3),
        "added_p99_ms": round(b["p99_ms"] - a["p99_ms"], 3),
        "bare_relay_added_p50_ms": round(f["p50_ms"] - a["p50_ms"], 3),
        "bare_relay_added_p99_ms": round(f["p99_ms"] - a["p99_ms"], 3),
        "over_bare_relay_median_paired_p50_ms": round(float(np.median(over_floor)), 3),
        "rounds_proxy_faster_than_bare_relay": int((over_floor < 0).sum()),
    }
    write_result(args.out, payload)
    print(f"{'path':20s} {'chunks':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}")
    for name, r in results.items():
        print(f"{name:20s} {r['chunks']:7d} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['max_ms']:7.3f}")
    print(f"added per chunk: p50 {payload['added_p50_ms']} ms, p99 {payload['added_p99_ms']} ms")
    print(
        f"bare relay added per chunk: p50 {payload['bare_relay_added_p50_ms']} ms, "
        f"p99 {payload['bare_relay_added_p99_ms']} ms"
    )
    print(
        f"hybridllm over the bare relay, per round: median {payload['over_bare_relay_median_paired_p50_ms']:+.3f} ms; "
        f"faster in {payload['rounds_proxy_faster_than_bare_relay']} of {args.rounds} rounds"
    )
