"""Model backends behind one interface. This module: any OpenAI-compatible HTTP endpoint (vLLM,
llama.cpp server, Ollama, OpenAI) through async httpx.

Why retries live here and not in callers: collecting thousands of samples always meets a 429 or a
502 somewhere; a collect run must ride through them (with backoff, honouring Retry-After) and fail
loudly only when an endpoint is really down or the request itself is wrong (4xx other than 408/429).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HybridLLMError
from .specs import parse_spec, read_key, redact_url

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}

# receives each piece of text as the model produces it (``generate(..., on_text=...)``): an answer
# at a few tokens/s on a CPU is read as it comes, not after a silent minute
OnText = Callable[[str], None]


class BackendError(HybridLLMError, RuntimeError):
    """An upstream call failed for good (after retries, or on a non-retryable error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Sample:
    """One sampled response with what it cost."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    finish_reason: str | None = None


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    stop: list[str] | None = None

    def body(self) -> dict[str, Any]:
        b: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            b["seed"] = self.seed
        if self.stop:
            b["stop"] = self.stop
        return b


@dataclass
class HTTPBackend:
    """``MODEL@BASE_URL``: chat (default) or completion endpoint of an OpenAI-compatible server."""

    model: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)  # never printed
    endpoint: str = "chat"
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 0.5
    _client: Any = field(default=None, init=False, repr=False)
    _sem: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

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

    async def __aenter__(self) -> HTTPBackend:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=self.timeout_s, limits=limits)
        self._sem = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _request(self, prompt: str | list[dict[str, Any]], params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body = {"model": self.model, **params.body()}
        if self.endpoint == "completion":
            if not isinstance(prompt, str):
                raise ValueError(f"backend {self.model}: the completion endpoint needs a string prompt")
            return "/completions", {**body, "prompt": prompt}
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return "/chat/completions", {**body, "messages": messages}

    async def generate(
        self, prompt: str | list[dict[str, Any]], params: SamplingParams, on_text: OnText | None = None
    ) -> Sample:
        """One sample, retried on transient failures with exponential backoff and jitter. With
        ``on_text`` the answer is streamed (SSE) and handed over piece by piece; a stream that breaks
        after its first piece is not retried (the caller has already shown part of it)."""
        import httpx

        if self._client is None or self._sem is None:
            raise RuntimeError("use the backend inside 'async with'")
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
                        resp = await self._client.post(path, json=body)
                        if resp.status_code == 200:
                            return self._parse(resp, time.perf_counter() - t0)
                    else:
                        async with self._client.stream("POST", path, json=body) as resp:
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
                    piece = _piece(choice, self.endpoint == "chat")
                    if piece:
                        parts.append(piece)
                        on_text(piece)
                    finish = choice.get("finish_reason") or finish
        except (ValueError, AttributeError, TypeError) as exc:
            raise BackendError(f"{self.where}: malformed stream ({exc})", 502) from None
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise BackendError(f"{self.where}: stream broke ({type(exc).__name__})", 502) from None
        return Sample(
            "".join(parts),
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            time.perf_counter() - t0,
            finish,
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


class _CpuBudget:
    """The CPU cores of this process, shared by the in-process models of one event loop: a model
    decoding with ``n`` threads holds ``n`` cores. With the default (every core per model) local
    models take turns, since two decoding at once would fight over the same cores. With fewer
    threads each (``collect --local-threads``), models that fit decode side by side: worth it on a
    many-core machine, where llama.cpp gains little from its last threads, but not on the 2-core
    one this was measured on (0.5B and 1.5B, 6 samples each: 8.6 tokens/s in all taking turns with
    2 threads, 6.2 side by side with 1; they share the memory bandwidth, and the faster one then
    leaves its core idle)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = max(1, min(n, self.total))
        async with self.cond:
            await self.cond.wait_for(lambda: self.free >= n)
            self.free -= n
        try:
            yield
        finally:
            async with self.cond:
                self.free += n
                self.cond.notify_all()


_CPU_BUDGETS: dict[int, _CpuBudget] = {}


def _piece(choice: dict[str, Any], chat: bool) -> str | None:
    """The new text of one streamed choice (OpenAI's chunk shape, which llama-cpp-python shares)."""
    return (choice.get("delta") or {}).get("content") if chat else choice.get("text")


def _as_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _as_text(prompt: str | list[dict[str, Any]]) -> str:
    """A completion-mode (base) model gets the turns' contents, one per line."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def _assembly_bar(name: str) -> Any:
    """A byte progress bar for the one-time assembly of a named model from its part packages
    (1.1 GB for the 1.5B model); created on the first callback, so a cached model shows nothing."""
    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            from tqdm.auto import tqdm

            disable = os.environ.get("HYBRIDLLM_NO_PROGRESS") == "1"
            bar.append(tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {name}", disable=disable))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return update


@dataclass
class LocalBackend:
    """A GGUF model run in-process by llama-cpp-python (extra ``[local]``): a named local model
    (``qwen2.5-0.5b``, ``qwen2.5-1.5b``, ``gemma-3-270m``) or a path to a ``.gguf`` file.

    llama.cpp contexts are not thread-safe, so calls are serialised; generation runs in a worker
    thread so an event loop (collect, serve) stays responsive."""

    spec: str
    n_ctx: int = 2048
    n_threads: int | None = None
    chat: bool | None = None
    _llm: Any = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)
    _cpu: _CpuBudget | None = field(default=None, init=False, repr=False)
    _loop_id: int | None = field(default=None, init=False, repr=False)
    _decoder: Any = field(default=None, init=False, repr=False)

    @property
    def threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def load(self) -> Any:
        if self._llm is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise BackendError(
                    "local models need llama-cpp-python: pip install 'hybridllm[local]' "
                    "(builds from source, ~6 min; CMAKE_ARGS=-DGGML_NATIVE=OFF for portable binaries)"
                ) from None
            from .models import LOCAL_MODELS, model_path

            if self.spec in LOCAL_MODELS:
                path = model_path(self.spec, progress=_assembly_bar(self.spec))
                if self.chat is None:
                    self.chat = LOCAL_MODELS[self.spec].chat
            else:
                path = Path(self.spec).expanduser()
                if not path.is_file():
                    raise BackendError(f"local model {self.spec!r}: not a known name and no such .gguf file")
            self._llm = Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
            if self.chat is None:
                self.chat = True
        return self._llm

    async def __aenter__(self) -> LocalBackend:
        await asyncio.to_thread(self.load)
        return self

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Exclusive use of this model's llama.cpp context (not thread-safe) and of the cores it
        decodes with (see :class:`_CpuBudget`), for the running event loop."""
        loop_id = id(asyncio.get_running_loop())
        if self._loop_id != loop_id:
            self._loop_id, self._lock = loop_id, asyncio.Lock()
            self._cpu = _CPU_BUDGETS.setdefault(loop_id, _CpuBudget(os.cpu_count() or 1))
        assert self._lock is not None and self._cpu is not None
        async with self._lock, self._cpu.hold(self.threads):
            yield

    async def __aexit__(self, *exc: object) -> None:
        return None

    def generate_sync(
        self, prompt: str | list[dict[str, Any]], params: SamplingParams, on_text: OnText | None = None
    ) -> Sample:
        llm = self.load()
        # A sample must depend on (prompt, params, seed) only. llama-cpp-python keeps the last
        # prompt's KV cells and, on a repeated prefix, re-evaluates just its final token, in a batch
        # of one whose rounding differs from the full prompt's batch: at T > 0 the same seed then
        # gives another sample (measured with Gemma), and a resumed `collect` would not reproduce
        # the uninterrupted run. Forgetting the cache costs one prompt evaluation per sample.
        llm.reset()
        kw: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
            "stop": params.stop,
        }
        t0 = time.perf_counter()
        if self.chat:
            call = functools.partial(llm.create_chat_completion, messages=_as_messages(prompt), **kw)
        else:
            call = functools.partial(llm.create_completion, prompt=_as_text(prompt), **kw)
        if on_text is not None:
            return self._stream(call, t0, on_text)
        out = call()
        choice = out["choices"][0]
        text = (choice["message"]["content"] or "") if self.chat else choice["text"]
        usage = out.get("usage") or {}
        return Sample(
            text,
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            time.perf_counter() - t0,
            choice.get("finish_reason"),
        )

    def _stream(self, call: Callable[..., Any], t0: float, on_text: OnText) -> Sample:
        """llama-cpp-python's stream: one chunk per generated token (no usage in it, so tokens are
        counted as chunks with text)."""
        parts: list[str] = []
        finish = None
        for chunk in call(stream=True):
            choice = chunk["choices"][0]
            piece = _piece(choice, bool(self.chat))
            if piece:
                parts.append(piece)
                on_text(piece)
            finish = choice.get("finish_reason") or finish
        return Sample("".join(parts), None, len(parts), time.perf_counter() - t0, finish)

    async def generate(
        self, prompt: str | list[dict[str, Any]], params: SamplingParams, on_text: OnText | None = None
    ) -> Sample:
        async with self.slot():
            return await asyncio.to_thread(self.generate_sync, prompt, params, on_text)

    def generate_many_sync(self, items: Sequence[tuple[str | list[dict[str, Any]], SamplingParams]]) -> list[Sample]:
        """Decode several samples together (see :mod:`hybridllm.batched`); each gets the batch's
        wall time as its latency, since that is how long it took to produce."""
        from .batched import BatchedDecoder, BatchRequest, chat_prompt_tokens

        llm = self.load()
        n = len(items)
        if self._decoder is None or self._decoder.n_seq < n:
            self._decoder = BatchedDecoder(llm, n_seq=n, n_ctx=self.n_ctx * n, n_threads=self.n_threads)
        reqs = []
        for prompt, params in items:
            if self.chat:
                toks = chat_prompt_tokens(llm, _as_messages(prompt))
            else:
                toks = llm.tokenize(_as_text(prompt).encode("utf-8"), add_bos=True, special=True)
            reqs.append(BatchRequest(toks, params))
        t0 = time.perf_counter()
        out = self._decoder.generate(reqs)
        wall = time.perf_counter() - t0
        return [Sample(r.text, r.prompt_tokens, r.completion_tokens, wall, r.finish_reason) for r in out]

    async def generate_many(self, items: Sequence[tuple[str | list[dict[str, Any]], SamplingParams]]) -> list[Sample]:
        async with self.slot():
            return await asyncio.to_thread(self.generate_many_sync, items)


def make_backend(
    spec: str, api_key_env: str | None = None, local_threads: int | None = None, **http_kw: Any
) -> HTTPBackend | LocalBackend:
    """SPEC: ``MODEL@BASE_URL`` (HTTP), a named local model, or a path to a ``.gguf`` file.
    ``api_key_env``: the variable holding this model's key (HTTP only; never shared between models).
    ``local_threads``: CPU threads for a local model (default: all cores)."""
    parsed = parse_spec(spec)
    if parsed.base_url is not None:
        return HTTPBackend.from_spec(spec, api_key_env=api_key_env, **http_kw)
    if api_key_env:
        raise ValueError(f"model {spec!r} runs in-process: an API key ({api_key_env}) is not sent to it")
    return LocalBackend(spec, n_threads=local_threads)
