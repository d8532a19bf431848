"""The floor under any Python proxy built on this stack: a bare ASGI relay on the same server
(uvicorn, httptools, uvloop) and the same upstream client (one pooled aiohttp session) as
`hybridllm serve`, that reads the body, posts it to one upstream and returns the upstream's bytes (a server-sent-event
stream chunk by chunk, as it arrives).
No parsing, no auth, no routing, no logging, no metrics. `proxy_overhead.py` runs it beside the real
proxy, so the table shows how much of the gap to the upstream is the stack and how much is hybridllm.

    python benchmarks/bare_relay.py --port 8001 --upstream http://127.0.0.1:8000
    python benchmarks/bare_relay.py ... --route DIR   # plus one routing decision per request (DIR: a router)

For `router_side_effect.py`: ``--spin-us N`` spends N µs of plain CPU per request before the upstream
call, ``--sweep-kb N`` writes N KB of memory per request, and ``--timings FILE`` writes the median
time of the upstream call (post to the last byte) at shutdown.
"""

from __future__ import annotations

import argparse
from typing import Any


def make_app(
    upstream: str, router_dir: str | None = None, spin_us: float = 0, sweep_kb: int = 0, timings: str | None = None
) -> Any:
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

        router = load_router(router_dir)

        def route(body: bytes) -> None:
            msgs = json.loads(body)["messages"]
            router.score([msgs[-1]["content"]])

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


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--route", help="a router directory: score each request's last user turn")
    ap.add_argument("--spin-us", type=float, default=0, help="plain CPU work per request, in µs")
    ap.add_argument("--sweep-kb", type=int, default=0, help="memory written per request, in KB")
    ap.add_argument("--timings", help="write the upstream call's median time here at shutdown")
    args = ap.parse_args()
    app = make_app(args.upstream, args.route, args.spin_us, args.sweep_kb, args.timings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, http="httptools")


if __name__ == "__main__":
    main()
