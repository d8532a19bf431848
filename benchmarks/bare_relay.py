"""The floor under any Python proxy built on this stack: a bare ASGI relay on the same server
(uvicorn, httptools, uvloop) and the same upstream client (one pooled aiohttp session) as
`hybridllm serve`, that reads the body, posts it to one upstream and returns the upstream's bytes (a server-sent-event
stream chunk by chunk, as it arrives).
No parsing, no auth, no routing, no logging, no metrics. `proxy_overhead.py` runs it beside the real
proxy, so the table shows how much of the gap to the upstream is the stack and how much is hybridllm.

    python benchmarks/bare_relay.py --port 8001 --upstream http://127.0.0.1:8000
    python benchmarks/bare_relay.py ... --route DIR   # plus one routing decision per request (DIR: a router)
    python benchmarks/bare_relay.py ... --route DIR --batch   # the decisions of concurrent requests in one call

For `proxy_overhead.py --mode side-effect`: ``--spin-us N`` spends N µs of plain CPU per request before the upstream
call, ``--sweep-kb N`` writes N KB of memory per request, and ``--timings FILE`` writes the median
time of the upstream call (post to the last byte) at shutdown.
"""

from __future__ import annotations

import argparse
from typing import Any


def make_app(
    upstream: str,
    router_dir: str | None = None,
    spin_us: float = 0,
    sweep_kb: int = 0,
    timings: str | None = None,
    batch: bool = False,
) -> Any:
    import asyncio
    import json
    import time
    from pathlib import Path

    import aiohttp
    import numpy as np

    target = upstream.rstrip("/") + "/v1/chat/completions"
    session: list[aiohttp.ClientSession] = []
    route = None
    if router_dir:
        from hybridllm import load_router
        from hybridllm.serve.build import limit_blas_threads

        limit_blas_threads()  # as `hybridllm serve` runs its router: one BLAS thread per process
        router = load_router(router_dir)

        def route(body: bytes) -> None:
            msgs = json.loads(body)["messages"]
            router.score([msgs[-1]["content"]])

    # --batch: the least a batching proxy must do. Requests that arrive while the event loop is busy
    # wait together; one call scores all of them on the loop, as hybridllm does with quick batches
    pending: list[tuple[str, asyncio.Future]] = []

    def flush() -> None:
        items = pending[:]
        pending.clear()
        for (_, fut), s in zip(items, router.score([t for t, _ in items]), strict=True):
            fut.set_result(s)

    async def route_batched(body: bytes) -> None:
        fut = asyncio.get_running_loop().create_future()
        if not pending:
            asyncio.get_running_loop().call_soon(flush)
        pending.append((json.loads(body)["messages"][-1]["content"], fut))
        await fut

    sweep = np.ones(sweep_kb * 256, dtype=np.float32)
    calls: list[float] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await session[0].close()
                    if timings:
                        got = {"requests": len(calls), "upstream_call_p50_ms": 1e3 * float(np.median(calls))}
                        Path(timings).write_text(json.dumps(got))
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        if route is not None:
            if batch:
                await route_batched(body)
            else:
                route(body)
        if spin_us:
            end = time.perf_counter() + spin_us / 1e6
            while time.perf_counter() < end:
                pass
        if sweep_kb:
            np.add(sweep, 1, out=sweep)
        t0 = time.perf_counter()
        async with session[0].post(target, data=body, headers={"content-type": "application/json"}) as r:
            if r.content_type == "text/event-stream":  # a stream: each chunk passed on as it arrives
                start = {"type": "http.response.start", "status": r.status}
                await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
                async for chunk in r.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await r.read()
            status = r.status
        if timings:
            calls.append(time.perf_counter() - t0)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


def _app_from_env() -> Any:
    """``--workers N``: each worker process builds its app from the arguments in the environment."""
    import json
    import os

    return make_app(**json.loads(os.environ["BARE_RELAY_ARGS"]))


def main() -> None:
    import json
    import os
    from pathlib import Path

    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--route", help="a router directory: score each request's last user turn")
    ap.add_argument("--batch", action="store_true", help="with --route: score concurrent requests in one call")
    ap.add_argument("--spin-us", type=float, default=0, help="plain CPU work per request, in µs")
    ap.add_argument("--sweep-kb", type=int, default=0, help="memory written per request, in KB")
    ap.add_argument("--timings", help="write the upstream call's median time here at shutdown")
    ap.add_argument("--workers", type=int, default=1, help="processes on one port, as `hybridllm serve --workers N`")
    args = ap.parse_args()
    kwargs = {"upstream": args.upstream, "router_dir": args.route, "spin_us": args.spin_us, "sweep_kb": args.sweep_kb,
              "timings": args.timings, "batch": args.batch}  # fmt: skip
    run = {"host": "127.0.0.1", "port": args.port, "log_level": "warning", "access_log": False, "http": "httptools"}
    if args.workers > 1:
        os.environ["BARE_RELAY_ARGS"] = json.dumps(kwargs)
        here = str(Path(__file__).resolve().parent)
        uvicorn.run("bare_relay:_app_from_env", factory=True, workers=args.workers, app_dir=here, **run)
    else:
        uvicorn.run(make_app(**kwargs), **run)


if __name__ == "__main__":
    main()
