"""A real OpenAI-protocol HTTP server for tests (uvicorn on 127.0.0.1, a free port, in a thread).

It answers deterministically ("echo:<prompt>#<seed>") and can be told to misbehave: a queue of
faults is consumed one per request (429 with Retry-After, 500, a slow answer, a malformed body).
It can also play a model with limits, as a provider answers them: one that refuses ``tools``
(``refuse_tools``: a 400), one with a small context window (``window``: a 400
``context_length_exceeded`` for a longer prompt), one that reads a prompt's prefix from its cache
(``cached_tokens``: reported in ``usage.prompt_tokens_details``), and one that answers a request
offering ``tools`` with a tool call (``tool_calls``, streamed too), as an agent loop's model does.
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
        self.refuse_tools = False  # a model without tool calling: a request with `tools` is a 400
        self.window: int | None = None  # its context window: a longer prompt (words, bytes / 4) is a 400
        self.cached_tokens = 0  # prompt tokens it reports as read from its cache (at most the prompt's)
        self.tool_calls = False  # a request offering `tools` whose last message is the user's gets a tool call
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
        refused = self._limits(body)
        if refused is not None:
            return refused
        last = body["messages"][-1] if isinstance(body.get("messages"), list) and body["messages"] else {}
        prompt = last.get("content") if isinstance(last, dict) else None
        prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
        text = self.reply(prompt) if self.reply else f"echo:{prompt}#{body.get('seed')}"
        call = self._tool_call(body, last)
        if body.get("stream"):
            return StreamingResponse(self._sse(body, text, call=call), media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        usage = self._usage(len(prompt.split()), len(text.split()))
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}],
            "usage": usage,
        }

    def _limits(self, body: dict[str, Any]) -> Any:
        """The provider's own refusal of a request this model cannot serve (None: it can)."""
        if self.refuse_tools and body.get("tools"):
            err = {"message": "this model does not support tools", "type": "invalid_request_error", "param": "tools"}
            return JSONResponse({"error": err}, status_code=400)
        if self.window is not None:
            size = len(json.dumps(body.get("messages") or body.get("prompt")).encode()) // 4
            if size > self.window:
                said = f"this model's maximum context length is {self.window} tokens; the prompt has {size}"
                err = {"message": said, "type": "invalid_request_error", "param": "messages",
                       "code": "context_length_exceeded"}  # fmt: skip
                return JSONResponse({"error": err}, status_code=400)
        return None

    def _tool_call(self, body: dict[str, Any], last: Any) -> dict[str, Any] | None:
        if not (self.tool_calls and body.get("tools") and isinstance(last, dict) and last.get("role") == "user"):
            return None
        name = body["tools"][0]["function"]["name"]
        return {"id": f"call_{len(self.requests)}", "type": "function",
                "function": {"name": name, "arguments": json.dumps({"q": str(last.get("content"))[:40]})}}  # fmt: skip

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}  # fmt: skip
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, prompt)}
        return usage

    async def _sse(
        self, body: dict[str, Any], text: str, kind: str = "chat", call: dict[str, Any] | None = None
    ) -> Any:
        """OpenAI's chunk stream, one word per chunk (a tool call: its name, then its arguments);
        with ``stream_options.include_usage`` a last chunk with usage and no choices, as OpenAI
        sends it."""
        model = str(body.get("model"))
        words = text.split(" ")
        if call is not None:
            fn = call["function"]
            first = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            for delta in ({"role": "assistant", "content": None, "tool_calls": [first]},
                          {"tool_calls": [{"index": 0, "function": {"arguments": fn["arguments"]}}]}):  # fmt: skip
                chunk = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
                yield f"data: {json.dumps(chunk)}\n\n"
            words = []
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
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if call else "stop"}],
        }
        yield f"data: {json.dumps(end)}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            await asyncio.sleep(self.usage_delay)
            usage = self._usage(1, len(words))
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
