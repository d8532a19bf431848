"""Any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, Ollama, OpenAI) through async httpx.

Why :meth:`HTTPBackend.generate` retries and :meth:`HTTPBackend.forward` does not: collecting
thousands of samples always meets a 429 or a 502 somewhere, and a collect run must ride through them
(with backoff, honouring Retry-After), failing loudly only when an endpoint is really down or the
request itself is wrong (4xx other than 408/429). The proxy instead has a client waiting: it makes
one attempt within a total deadline (not per read: an upstream that drips a byte at a time must not
hold a request forever) and falls back to another model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..specs import parse_spec, read_key, redact_url
from ._base import Backend
from ._types import (
    Answer,
    BackendError,
    Failure,
    OnText,
    Prompt,
    Sample,
    SamplingParams,
    StreamBroke,
    as_messages,
    piece,
    remaining,
    within,
)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_PATHS = {"chat": "/chat/completions", "completion": "/completions"}


@dataclass
class HTTPBackend(Backend):
    """``MODEL@BASE_URL``: chat (default) or completion endpoint of an OpenAI-compatible server.
    ``concurrency``: requests in flight from :meth:`generate` (and the connection pool's size);
    ``None`` leaves both to httpx's defaults (the proxy: 100 connections, 20 kept alive; a larger
    pool measured more CPU per request, since httpcore scans its connections on every request)."""

    model: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)  # sent to this endpoint only, never printed
    endpoint: str = "chat"
    concurrency: int | None = 8
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 0.5
    name: str | None = None  # what the proxy and its messages call this model (default: ``model``)
    _client: Any = field(default=None, init=False, repr=False)
    _sem: Any = field(default=None, init=False, repr=False)

    @classmethod
    def from_spec(cls, spec: str, api_key_env: str | None = None, **kw: Any) -> HTTPBackend:
        parsed = parse_spec(spec)
        if parsed.base_url is None:
            raise ValueError(f"backend spec {redact_url(spec)!r}: expected MODEL@http(s)://HOST/v1")
        return cls(model=parsed.model, base_url=parsed.base_url, api_key=read_key(parsed.model, api_key_env), **kw)

    @property
    def where(self) -> str:
        """``model@url`` for messages, credentials in the URL masked."""
        return f"{self.model}@{redact_url(self.base_url)}"

    @property
    def identity(self) -> str:
        return redact_url(f"{self.model}@{self.base_url}")

    @property
    def has_key(self) -> bool:
        return bool(self.api_key)

    async def __aenter__(self) -> HTTPBackend:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        kw: dict[str, Any] = {}
        if self.concurrency is not None:
            kw["limits"] = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._sem = asyncio.Semaphore(self.concurrency)
        else:
            self._sem = contextlib.nullcontext()
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout_s, **kw)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _live(self) -> Any:
        if self._client is None:
            raise RuntimeError("use the backend inside 'async with'")
        return self._client

    def _request(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body = {"model": self.model, **params.body()}
        if self.endpoint == "completion":
            if not isinstance(prompt, str):
                raise ValueError(f"backend {self.model}: the completion endpoint needs a string prompt")
            return _PATHS["completion"], {**body, "prompt": prompt}
        return _PATHS["chat"], {**body, "messages": as_messages(prompt)}

    # -- samples (collect, chat) ------------------------------------------------------------------

    async def generate(self, prompt: Prompt, params: SamplingParams, on_text: OnText | None = None) -> Sample:
        """One sample, retried on transient failures with exponential backoff and jitter. With
        ``on_text`` the answer is streamed (SSE) and handed over piece by piece; a stream that breaks
        after its first piece is not retried (the caller has already shown part of it)."""
        import httpx

        client = self._live()
        path, body = self._request(prompt, params)
        if on_text is not None:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * (2**attempt) * (0.5 + random.random())
            try:
                async with self._sem:
                    t0 = time.perf_counter()
                    if on_text is None:
                        resp = await client.post(path, json=body)
                        if resp.status_code == 200:
                            return self._parse(resp, time.perf_counter() - t0)
                    else:
                        async with client.stream("POST", path, json=body) as resp:
                            if resp.status_code == 200:
                                return await self._read_stream(resp, t0, on_text)
                            await resp.aread()
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = f"{type(exc).__name__}: {exc}".strip()
            else:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in RETRY_STATUS:
                    raise BackendError(f"{self.where}{path}: {last}", resp.status_code)
                retry_after = resp.headers.get("retry-after")
                if retry_after:
                    with contextlib.suppress(ValueError):
                        wait = max(wait, min(float(retry_after), 60.0))
            if attempt < self.max_retries:
                await asyncio.sleep(wait)
        raise BackendError(f"{self.where}{path}: gave up after {self.max_retries + 1} tries ({last})")

    async def _read_stream(self, resp: Any, t0: float, on_text: OnText) -> Sample:
        """Server-sent events of a chat or completion stream, pieces handed to ``on_text``."""
        import httpx

        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish = None
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = piece(choice, self.endpoint == "chat")
                    if text:
                        parts.append(text)
                        on_text(text)
                    finish = choice.get("finish_reason") or finish
        except (ValueError, AttributeError, TypeError) as exc:
            raise BackendError(f"{self.where}: malformed stream ({exc})", 502) from None
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise BackendError(f"{self.where}: stream broke ({type(exc).__name__})", 502) from None
        return Sample(
            "".join(parts), usage.get("prompt_tokens"), usage.get("completion_tokens"), time.perf_counter() - t0, finish
        )

    def _parse(self, resp: Any, latency: float) -> Sample:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{self.where}: malformed response body ({exc})", 502) from None
        usage = data.get("usage") or {}
        return Sample(
            text, usage.get("prompt_tokens"), usage.get("completion_tokens"), latency, choice.get("finish_reason")
        )

    # -- relay (the proxy) ------------------------------------------------------------------------

    async def forward(self, kind: str, body: dict[str, Any], stream: bool) -> Answer | Failure:
        import httpx

        client = self._live()
        deadline = time.monotonic() + self.timeout_s
        try:
            req = client.build_request("POST", _PATHS[kind], json=body)
            resp = await within(client.send(req, stream=True), remaining(deadline))
        except asyncio.TimeoutError:
            return Failure(504, f"upstream {self.who} did not answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Failure(502, f"upstream {self.who} unreachable: {type(exc).__name__}")
        ok = False
        try:
            if resp.status_code >= 500 or resp.status_code == 429:
                try:
                    detail = (await within(resp.aread(), min(remaining(deadline), 5.0)))[:300]
                except (asyncio.TimeoutError, httpx.HTTPError):
                    detail = b""
                return Failure(
                    429 if resp.status_code == 429 else 502,
                    f"upstream {self.who} answered {resp.status_code}: {detail.decode('utf-8', 'replace')}",
                    resp.headers.get("retry-after"),
                )
            ctype = resp.headers.get("content-type", "")
            if stream and resp.status_code == 200:
                if not ctype.startswith("text/event-stream"):
                    return Failure(
                        502, f"upstream {self.who} answered a stream request with {ctype or 'no content type'}"
                    )
                ok = True
                return Answer(200, stream=self._relay(resp, deadline))
            try:
                data = await within(resp.aread(), remaining(deadline))
            except asyncio.TimeoutError:
                return Failure(504, f"upstream {self.who} did not finish within {self.timeout_s:g} s")
            except httpx.HTTPError as exc:
                return Failure(502, f"upstream {self.who} broke off: {type(exc).__name__}")
            try:
                payload = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return Failure(502, f"upstream {self.who} sent a malformed body")
            return Answer(resp.status_code, data=data, payload=payload)
        finally:
            if not ok:
                await resp.aclose()

    async def _relay(self, resp: Any, deadline: float) -> AsyncIterator[bytes]:
        """Upstream SSE bytes as they come, within the attempt's deadline; a client disconnect
        cancels this generator and closes the upstream call."""
        import httpx

        it = resp.aiter_raw().__aiter__()
        try:
            while True:
                try:
                    chunk = await within(it.__anext__(), remaining(deadline))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise StreamBroke(f"upstream {self.who} did not finish within {self.timeout_s:g} s") from None
                except httpx.HTTPError as exc:
                    raise StreamBroke(f"upstream {self.who} failed mid-stream: {type(exc).__name__}") from None
                yield chunk
        finally:
            await resp.aclose()

    async def probe(self, timeout_s: float = 3.0) -> dict[str, Any]:
        """``GET /models`` answered 200 within the timeout."""
        import httpx

        try:
            r = await within(self._live().get("/models"), timeout_s)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"no answer within {timeout_s:g} s"}
        except httpx.HTTPError as exc:
            return {"ok": False, "error": f"unreachable ({type(exc).__name__})"}
        return {"ok": r.status_code == 200, "status": r.status_code}
