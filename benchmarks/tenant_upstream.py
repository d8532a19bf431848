"""The upstream of ``benchmarks/tenant_bounds.py``: an OpenAI-protocol server (chat and completions,
streamed and not) in its own process, that generates long answers at a steady pace, reports usage
honestly and keeps its own bill.

- A prompt's tokens are its words (every string of ``messages`` or ``prompt``); an answer's tokens
  are its words: ``words:N`` in the prompt asks for N, cut at the request's ``max_tokens`` /
  ``max_completion_tokens`` and at the model's maximum output (``--max-out MODEL=N``, else 4096).
- It bills what it generates, as a real upstream does: the whole answer when it was generated, the
  words generated so far when the caller hung up (a stream's reader gone, or a non-streamed call
  closed while it was generating, checked every step). The usage it *reports* (the JSON body's,
  or the usage chunk a stream sends when asked) is counted apart.
- ``tenant:NAME`` in the prompt says whose request it is: the bill is kept per tenant and model,
  with the dearest single request of each tenant.

``GET /bill`` returns the bill, ``POST /reset`` clears it. Started by ``tenant_bounds.py`` as
``python benchmarks/tenant_upstream.py --port P [--max-out MODEL=N ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

WORDS_PER_STEP = 16  # one stream chunk, one generation step
STEP_S = 0.004  # a step's time: a 1,600-word answer takes about 0.4 s
DEFAULT_MAX_OUT = 4096
_WANT = re.compile(r"words:(\d+)")
_TENANT = re.compile(r"tenant:([\w-]+)")


class Bill:
    def __init__(self, max_out: dict[str, int]) -> None:
        self.max_out = max_out
        self.reset()

    def reset(self) -> None:
        self.rows: dict[str, dict[str, list[int]]] = {}  # tenant -> model -> [prompt, completion, requests]
        self.reported: dict[str, list[int]] = {}  # model -> [prompt, completion] reported in usage objects
        self.largest: dict[str, dict[str, list[int]]] = {}  # tenant -> model -> [prompt, completion] of its longest
        self.active = 0
        self.hung_up = 0

    def charge(self, tenant: str, model: str, prompt: int, completion: int) -> None:
        row = self.rows.setdefault(tenant, {}).setdefault(model, [0, 0, 0])
        row[0] += prompt
        row[1] += completion
        row[2] += 1
        old = self.largest.setdefault(tenant, {}).get(model)
        if old is None or prompt + completion > sum(old):
            self.largest[tenant][model] = [prompt, completion]

    def report(self, model: str, prompt: int, completion: int) -> None:
        got = self.reported.setdefault(model, [0, 0])
        got[0] += prompt
        got[1] += completion

    def view(self) -> dict[str, Any]:
        return {"billed": self.rows, "reported": self.reported, "largest": self.largest, "active": self.active,
                "hung_up": self.hung_up}  # fmt: skip


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    return []


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def make_app(max_out: dict[str, int]) -> Starlette:
    bill = Bill(max_out)

    async def answer(request: Request, kind: str) -> Any:
        body = await request.json()
        model = str(body.get("model"))
        text = " ".join(_texts(body.get("messages") if kind == "chat" else body.get("prompt")))
        prompt = max(1, len(text.split()))
        want = int(m.group(1)) if (m := _WANT.search(text)) else 8
        caps = [c for c in (_count(body.get("max_tokens")), _count(body.get("max_completion_tokens"))) if c]
        n = min([want, bill.max_out.get(model, DEFAULT_MAX_OUT), *caps])
        tenant = m.group(1) if (m := _TENANT.search(text)) else "-"
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(stream(model, kind, prompt, n, tenant, usage), media_type="text/event-stream")
        bill.active += 1
        made = 0
        try:
            while made < n:  # generating, a step at a time; a caller gone stops it (and its bill)
                await asyncio.sleep(STEP_S)
                made = min(n, made + WORDS_PER_STEP)
                if made < n and await request.is_disconnected():
                    bill.hung_up += 1
                    return JSONResponse({}, status_code=499)
        finally:
            bill.charge(tenant, model, prompt, made)
            bill.active -= 1
        words = " ".join(["w"] * n)
        choice = ({"index": 0, "message": {"role": "assistant", "content": words}, "finish_reason": "stop"}
                  if kind == "chat" else {"index": 0, "text": words, "finish_reason": "stop"})  # fmt: skip
        bill.report(model, prompt, n)
        return JSONResponse({
            "id": "x", "object": "chat.completion" if kind == "chat" else "text_completion", "created": 0,
            "model": model, "choices": [choice],
            "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
        })  # fmt: skip

    async def stream(model: str, kind: str, prompt: int, n: int, tenant: str, usage: bool) -> Any:
        bill.active += 1
        made = 0
        try:
            while made < n:
                await asyncio.sleep(STEP_S)
                step = min(WORDS_PER_STEP, n - made)
                piece = (" " if made else "") + " ".join(["w"] * step)
                made += step
                delta = {"delta": {"content": piece}} if kind == "chat" else {"text": piece}
                obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                choice = {"index": 0, **delta, "finish_reason": None}
                chunk = {"id": "s", "object": obj, "created": 0, "model": model, "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n"
            last: dict[str, Any] = {"delta": {}} if kind == "chat" else {"text": ""}
            end = {"index": 0, **last, "finish_reason": "stop"}
            yield f"data: {json.dumps({'id': 's', 'model': model, 'choices': [end]})}\n\n"
            if usage:
                u = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
                yield f"data: {json.dumps({'id': 's', 'model': model, 'choices': [], 'usage': u})}\n\n"
                bill.report(model, prompt, n)
            yield "data: [DONE]\n\n"
        except BaseException:
            bill.hung_up += 1
            raise
        finally:
            bill.charge(tenant, model, prompt, made)
            bill.active -= 1

    async def chat(request: Request) -> Any:
        return await answer(request, "chat")

    async def completions(request: Request) -> Any:
        return await answer(request, "completions")

    async def view(request: Request) -> Any:
        return JSONResponse({**bill.view(), "t": time.time()})

    async def reset(request: Request) -> Any:
        bill.reset()
        return JSONResponse({"reset": True})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/completions", completions, methods=["POST"]),
        Route("/bill", view), Route("/reset", reset, methods=["POST"]),
    ])  # fmt: skip


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-out", action="append", default=[], help="MODEL=N: that model's longest answer")
    args = ap.parse_args()
    max_out = {k: int(v) for k, _, v in (x.partition("=") for x in args.max_out)}
    uvicorn.run(make_app(max_out), host="127.0.0.1", port=args.port, log_level="error")


if __name__ == "__main__":
    main()
