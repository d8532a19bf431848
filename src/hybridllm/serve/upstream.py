"""Calling one upstream for the proxy: an OpenAI-compatible HTTP endpoint or an in-process GGUF
model, with a total deadline per attempt (not per read: an upstream that drips a byte at a time must
not hold a request forever) and a check that a stream really is a stream.

An attempt ends in an :class:`Answer` (bytes to relay, or an open SSE stream) or an
:class:`Failure` the caller may fall back from.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

_LOCAL_SAMPLING_ARGS = {
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "stop",
    "seed",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
}
_LOCAL_CHAT_ARGS = _LOCAL_SAMPLING_ARGS | {"messages", "tools", "tool_choice", "response_format", "top_logprobs"}
_LOCAL_COMPLETION_ARGS = _LOCAL_SAMPLING_ARGS | {"prompt", "suffix", "echo"}


@dataclass
class Upstream:
    """An endpoint the proxy forwards to."""

    name: str  # the name clients see and the router knows (the artifact's small/large model)
    base_url: str
    model: str  # the model name sent upstream
    api_key: str | None = field(default=None, repr=False)  # sent to this upstream only
    timeout_s: float = 120.0  # total per attempt, streams included
    local: Any = None  # a backends.LocalBackend: the in-process GGUF runtime instead of HTTP


@dataclass
class Answer:
    status: int
    data: bytes | None = None  # a whole JSON body, relayed as it came
    payload: Any = None  # the same, parsed (usage for metrics)
    stream: AsyncIterator[bytes] | None = None


@dataclass
class Failure:
    status: int  # what the client gets if nothing else answers: 502, 504 or the upstream's 429
    message: str
    retry_after: str | None = None


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


async def within(awaitable: Any, seconds: float) -> Any:
    """``awaitable`` or ``asyncio.TimeoutError`` after ``seconds``. On Python 3.11+ a timer on the
    running task (``asyncio.timeout``), not a task per call as ``wait_for`` makes: this sits on
    every request's path."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def call_http(client: Any, up: Upstream, path: str, body: dict[str, Any], stream: bool) -> Answer | Failure:
    import httpx

    deadline = time.monotonic() + up.timeout_s
    try:
        req = client.build_request("POST", path, json=body)
        resp = await within(client.send(req, stream=True), _remaining(deadline))
    except asyncio.TimeoutError:
        return Failure(504, f"upstream {up.name} did not answer within {up.timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Failure(502, f"upstream {up.name} unreachable: {type(exc).__name__}")
    ok = False
    try:
        if resp.status_code >= 500 or resp.status_code == 429:
            try:
                detail = (await within(resp.aread(), min(_remaining(deadline), 5.0)))[:300]
            except (asyncio.TimeoutError, httpx.HTTPError):
                detail = b""
            status = 429 if resp.status_code == 429 else 502
            return Failure(
                status,
                f"upstream {up.name} answered {resp.status_code}: {detail.decode('utf-8', 'replace')}",
                resp.headers.get("retry-after"),
            )
        ctype = resp.headers.get("content-type", "")
        if stream and resp.status_code == 200:
            if not ctype.startswith("text/event-stream"):
                return Failure(502, f"upstream {up.name} answered a stream request with {ctype or 'no content type'}")
            ok = True
            return Answer(200, stream=_relay(resp, deadline, up))
        try:
            data = await within(resp.aread(), _remaining(deadline))
        except asyncio.TimeoutError:
            return Failure(504, f"upstream {up.name} did not finish within {up.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Failure(502, f"upstream {up.name} broke off: {type(exc).__name__}")
        try:
            payload = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return Failure(502, f"upstream {up.name} sent a malformed body")
        return Answer(resp.status_code, data=data, payload=payload)
    finally:
        if not ok:
            await resp.aclose()


class StreamBroke(Exception):
    """The upstream stream failed after it started: relayed as an error event."""


async def _relay(resp: Any, deadline: float, up: Upstream) -> AsyncIterator[bytes]:
    """Upstream SSE bytes as they come, within the attempt's deadline; a client disconnect cancels
    this generator and closes the upstream call."""
    import httpx

    it = resp.aiter_raw().__aiter__()
    try:
        while True:
            try:
                chunk = await within(it.__anext__(), _remaining(deadline))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise StreamBroke(f"upstream {up.name} did not finish within {up.timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise StreamBroke(f"upstream {up.name} failed mid-stream: {type(exc).__name__}") from None
            yield chunk
    finally:
        await resp.aclose()


async def call_local(up: Upstream, body: dict[str, Any], kind: str, stream: bool) -> Answer | Failure:
    """Run a request on the in-process model; llama-cpp-python already returns OpenAI-shaped objects."""
    backend = up.local
    allowed = _LOCAL_CHAT_ARGS if kind == "chat" else _LOCAL_COMPLETION_ARGS
    kw = {k: v for k, v in body.items() if k in allowed and v is not None}
    try:
        llm = await asyncio.to_thread(backend.load)
        fn = llm.create_chat_completion if kind == "chat" else llm.create_completion
        if not stream:
            async with backend.slot():
                out = await asyncio.to_thread(lambda: fn(**kw))
            payload = dict(out, model=up.model)
            return Answer(200, data=json.dumps(payload).encode(), payload=payload)
    except Exception as exc:  # the in-process model failed: same fallback path as HTTP
        return Failure(502, f"local model {up.name} failed: {type(exc).__name__}: {str(exc)[:200]}")

    async def sse() -> AsyncIterator[bytes]:
        async with backend.slot():
            try:
                it = await asyncio.to_thread(lambda: fn(stream=True, **kw))
                while True:
                    chunk = await asyncio.to_thread(next, it, None)
                    if chunk is None:
                        break
                    yield f"data: {json.dumps(dict(chunk, model=up.model))}\n\n".encode()
            except Exception as exc:
                raise StreamBroke(f"local model {up.name} failed mid-stream: {type(exc).__name__}") from None
        yield b"data: [DONE]\n\n"

    return Answer(200, stream=sse())


async def probe(client: Any, up: Upstream, timeout_s: float = 3.0) -> dict[str, Any]:
    """Readiness of one upstream: ``GET /models`` answered 200 within the timeout (HTTP), or the
    model loaded (in-process)."""
    import httpx

    if up.local is not None:
        return {"ok": up.local._llm is not None, "kind": "in-process"}
    try:
        r = await within(client.get("/models"), timeout_s)
    except asyncio.TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout_s:g} s"}
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"unreachable ({type(exc).__name__})"}
    return {"ok": r.status_code == 200, "status": r.status_code}
