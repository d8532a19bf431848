"""What the fake upstreams of the Messages and Responses protocols share: a real HTTP server (uvicorn
on 127.0.0.1, a free port, in a thread) that records each request's raw body, parsed body and
headers, and consumes a queue of faults, one per request."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .net import free_port


class FakeUpstream:
    """Subclasses add their routes to ``self.app`` and answer through :meth:`take`. ``faults``:
    ``"429"``, ``"500"``, ``"529"``, ``"400"``, ``"echo-key"`` (a 400 quoting the key headers it
    got), ``"sleep:S"``, ``"midstream"`` (the stream dies after its fourth event), each consumed by
    one request."""

    def __init__(self) -> None:
        self.faults: deque[str] = deque()
        self.raw: list[bytes] = []  # each request's body as it arrived
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # each request's headers (names lower-case)
        self.sent: list[list[str]] = []  # each stream's events as sent
        self.stream_delay = 0.0
        self.app = FastAPI()
        self.app.get("/v1/models")(self._models)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def reset(self) -> None:
        """Forget the last test's faults and stream delay (a module-scoped fake serves many tests)."""
        self.faults.clear()
        self.stream_delay = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Any:
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
        self.headers.append(dict(request.headers))
        return {"object": "list", "data": [{"id": "fake", "object": "model", "type": "model"}]}

    def error(self, status: int, message: str) -> JSONResponse:
        """The protocol's error body (subclasses)."""
        raise NotImplementedError

    async def take(self, request: Request) -> tuple[dict[str, Any], JSONResponse | None, bool]:
        """Record the request; (body, a fault's response or None, whether the stream dies midway)."""
        raw = await request.body()
        body = json.loads(raw)
        self.raw.append(raw)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if not self.faults:
            return body, None, False
        f = self.faults.popleft()
        if f == "midstream":
            return body, None, True
        if f.startswith("sleep:"):
            await asyncio.sleep(float(f.split(":")[1]))
            return body, None, False
        if f == "echo-key":  # a 400 that quotes the credentials it was sent (as some upstreams do)
            said = f"bad request from {request.headers.get('x-api-key')} / {request.headers.get('authorization')}"
            return body, self.error(400, said), False
        messages = {"429": "rate limited", "500": "boom", "529": "overloaded", "400": "bad request"}
        headers = {"retry-after": "0"} if f == "429" else None
        resp = self.error(int(f), messages[f])
        if headers:
            resp.headers.update(headers)
        return body, resp, False

    async def paced(self, events: list[str], midstream: bool) -> Any:
        """The events of a stream, ``stream_delay`` apart; ``midstream``: the connection dies after
        the fourth event."""
        sent: list[str] = []
        self.sent.append(sent)
        for i, ev in enumerate(events):
            if midstream and i == 4:
                raise RuntimeError("upstream died mid-stream")
            sent.append(ev)
            yield ev
            await asyncio.sleep(self.stream_delay)


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event as both APIs write them: its name, then its JSON data."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
