"""A test harness for the Messages and Responses routes before the proxy's core serves them: a
real HTTP server (uvicorn on 127.0.0.1, in a thread) whose two routes are wired from
:mod:`hybridllm.serve.apis` and :meth:`HTTPBackend.forward_raw` alone, step by step as the core
is to wire them (docs in the module :mod:`hybridllm.serve.apis`). No router: the request's routing
name (the ``x-hybridllm-knob`` header, else ``model``) picks an upstream by its name, and the
upstreams after it are its fallbacks. Each request's outcome is kept in ``records``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hybridllm.backends import Answer, HTTPBackend, StreamBroke
from hybridllm.serve.apis import PROTOCOLS
from hybridllm.serve.errors import RequestError

from .net import free_port


@dataclass
class Outcome:
    api: str
    status: int = 0
    model: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # chat-shaped, as the proxy's record holds it
    text: str = ""
    tool_loop: Any = None
    error: str | None = None


class ApiRelay:
    """``upstreams``: name → (model sent, base URL, key, api); each becomes an :class:`HTTPBackend`
    speaking its ``api``. ``keys``: the client keys accepted (none: no check)."""

    def __init__(self, upstreams: dict[str, tuple[str, str, str | None, str]], keys: list[str] | None = None) -> None:
        self.specs = upstreams
        self.keys = [k.encode() for k in keys or []]
        self.ups: dict[str, HTTPBackend] = {}
        self.records: list[Outcome] = []
        self.app = Starlette(
            routes=[Route(f"/v1/{api}", self._route(api), methods=["POST"]) for api in PROTOCOLS],
            lifespan=self._lifespan,
        )
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiRelay:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("relay did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    @asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        for name, (model, url, key, api) in self.specs.items():
            backend = HTTPBackend(model, url, api_key=key, name=name, api=api, concurrency=None, timeout_s=10)
            self.ups[name] = await backend.__aenter__()
        yield
        await asyncio.gather(*(u.__aexit__() for u in self.ups.values()))

    def _route(self, api: str) -> Any:
        async def handle(request: Request) -> Response:
            return await self.handle(request, api)

        return handle

    async def handle(self, request: Request, api: str) -> Response:
        proto = PROTOCOLS[api]
        out = Outcome(api)
        self.records.append(out)
        try:
            # 1. authorise with the protocol's own key header
            if self.keys and proto.client_key(request.headers, self.keys) is None:
                raise RequestError(401, "invalid or missing API key")
            # 2. read and check the body: the routing name, the router's text, a tool loop
            req = proto.check(await request.body(), request.headers, max_messages=64, turns="all", max_chars=4000)
            out.tool_loop = req.tool_loop
            # 3. decide (here: by name), never outside the protocol's own upstreams
            names = [n for n, u in self.ups.items() if u.api == api]
            if req.name not in names:
                raise RequestError(404, f"unknown model {req.name!r}")
            order = names[names.index(req.name) :]
            # 4. call: the body's bytes with only the model name replaced; fallback on a Failure
            headers = proto.upstream_headers(request.headers)
            got: Any = None
            for name in order:
                up = self.ups[name]
                got = await up.forward_raw(api, req.for_upstream(up.model), req.stream, headers)
                if isinstance(got, Answer):
                    out.model = name
                    break
            if not isinstance(got, Answer):
                raise RequestError(got.status, got.message)
        except RequestError as exc:
            out.status, out.error = exc.status, exc.message
            return proto.error_response(exc.status, exc.message)
        out.status = got.status
        if got.stream is None:  # 5a. a whole answer: its bytes as they came, its usage and text read
            out.usage, out.text = proto.chat_usage(got.payload), proto.answer_text(got.payload)
            return Response(got.data, got.status, media_type="application/json")
        return StreamingResponse(self._relay(proto, got.stream, out), media_type="text/event-stream")

    async def _relay(self, proto: Any, stream: AsyncIterator[bytes], out: Outcome) -> AsyncIterator[bytes]:
        """5b. a stream: each chunk relayed unchanged through the protocol's ``usage_events`` (what the
        proxy's Pump reads a stream with), which sets ``out.usage``; the text read from the chunks
        kept; a broken upstream ends it with the protocol's error event."""
        kept: list[bytes] = []
        try:
            async for chunk in proto.usage_events(stream, out):
                kept.append(chunk)
                yield chunk
        except StreamBroke as exc:
            out.status, out.error = 502, str(exc)
            yield proto.stream_error(str(exc))
        finally:
            out.text = proto.stream_text(kept)
