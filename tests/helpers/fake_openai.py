"""A real OpenAI-protocol HTTP server for tests (uvicorn on 127.0.0.1, a free port, in a thread).

It answers deterministically ("echo:<prompt>#<seed>") and can be told to misbehave: a queue of
faults is consumed one per request (429 with Retry-After, 500, a slow answer, a malformed body).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .net import free_port


class FakeOpenAI:
    def __init__(self) -> None:
        self.faults: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0  # seconds before every answer
        self.reply: Any = None  # optional callable(prompt) -> text, instead of the echo
        self.stream_delay = 0.0
        self.usage_delay = 0.0  # seconds between a stream's last choice chunk and its usage chunk
        self.chunks_sent = 0
        self.auth: list[str | None] = []  # the Authorization header of every request, in order
        self.left_early: list[bool] = []  # after a "sleep:" fault: had the caller hung up?
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        self.app.post("/v1/completions")(self._completion)
        self.app.get("/v1/models")(self._models)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    async def _models(self, request: Request) -> Any:
        self.auth.append(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    async def _fault(self, request: Request | None = None) -> Any:
        if request is not None:
            self.auth.append(request.headers.get("authorization"))
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.faults:
            return None
        f = self.faults.popleft()
        if f == "429":
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"retry-after": "0"})
        if f == "500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if f == "400":
            return JSONResponse({"error": {"message": "bad request"}}, status_code=400)
        if f == "malformed":
            return PlainTextResponse("{not json", status_code=200)
        if f == "oddjson":
            return JSONResponse({"choices": [], "usage": 5})
        if f == "nochoices":
            return JSONResponse({"object": "chat.completion", "choices": []})
        if f == "midstream":
            self.faults.appendleft(f)  # consumed by the stream itself
            return None
        if f.startswith("sleep:"):
            await asyncio.sleep(float(f.split(":")[1]))
            if request is not None:
                self.left_early.append(await request.is_disconnected())
            return None
        if f == "429-7":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "7"})
        if f == "drip":  # a 200 whose body arrives one byte per 0.1 s, for 30 s

            async def drip() -> Any:
                for _ in range(300):
                    yield b" "
                    await asyncio.sleep(0.1)

            return StreamingResponse(drip(), media_type="application/json")
        if f == "json-for-stream":  # a stream request answered with a plain JSON body
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
        raise ValueError(f)

    async def _chat(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append(body)
        fault = await self._fault(request)
        if fault is not None:
            return fault
        last = body["messages"][-1] if isinstance(body.get("messages"), list) and body["messages"] else {}
        prompt = last.get("content") if isinstance(last, dict) else None
        prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
        text = self.reply(prompt) if self.reply else f"echo:{prompt}#{body.get('seed')}"
        if body.get("stream"):
            return StreamingResponse(self._sse(body, text), media_type="text/event-stream")
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(text.split()),
                "total_tokens": len(prompt.split()) + len(text.split()),
            },
        }

    async def _sse(self, body: dict[str, Any], text: str, kind: str = "chat") -> Any:
        """OpenAI's chunk stream, one word per chunk; with ``stream_options.include_usage`` a last
        chunk with usage and no choices, as OpenAI sends it."""
        model = str(body.get("model"))
        words = text.split(" ")
        midstream = bool(self.faults) and self.faults[0] == "midstream"
        if midstream:
            self.faults.popleft()
        for i, w in enumerate(words):
            if midstream and i == 2:
                raise RuntimeError("upstream died mid-stream")
            piece = (" " if i else "") + w
            choice = {"index": 0, "delta": {"content": piece}} if kind == "chat" else {"index": 0, "text": piece}
            chunk = {
                "id": "chatcmpl-s",
                "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": 0,
                "model": model,
                "choices": [{**choice, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
            self.chunks_sent += 1
            await asyncio.sleep(self.stream_delay)
        end = {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        yield f"data: {json.dumps(end)}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            await asyncio.sleep(self.usage_delay)
            usage = {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)}
            yield f"data: {json.dumps({'id': 'chatcmpl-s', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    async def _completion(self, request: Request) -> Any:
        body = await request.json()
        self.requests.append(body)
        fault = await self._fault(request)
        if fault is not None:
            return fault
        text = f"echo:{body.get('prompt')}#{body.get('seed')}"
        if body.get("stream"):
            return StreamingResponse(self._sse(body, text, "completion"), media_type="text/event-stream")
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
