"""What flows through a backend: sampling parameters in; a :class:`Sample` (collect, chat) or an
:class:`Answer`/:class:`Failure` (the proxy's relay) out; and the deadline helper both paths use."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hybridllm.errors import HybridLLMError

# receives each piece of text as the model produces it (``generate(..., on_text=...)``): an answer
# at a few tokens/s on a CPU is read as it comes, not after a silent minute
OnText = Callable[[str], None]

Prompt = str | list[dict[str, Any]]


class BackendError(HybridLLMError, RuntimeError):
    """An upstream call failed for good (after retries, or on a non-retryable error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class StreamBroke(HybridLLMError):
    """A relayed stream failed after it started: the proxy ends it with an error event."""


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
class Answer:
    """A relayed answer: a whole JSON body (bytes as they came, plus the parsed payload for usage)
    or an open SSE stream."""

    status: int
    data: bytes | None = None
    payload: Any = None
    stream: AsyncIterator[bytes] | None = None


@dataclass
class Failure:
    """A relay attempt that failed; the caller may fall back to another backend. ``status`` is what a
    client gets if nothing else answers: 502, 504 or the upstream's 429."""

    status: int
    message: str
    retry_after: str | None = None


def remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


async def within(awaitable: Any, seconds: float) -> Any:
    """``awaitable`` or ``asyncio.TimeoutError`` after ``seconds``. On Python 3.11+ a timer on the
    running task (``asyncio.timeout``), not a task per call as ``wait_for`` makes: this sits on
    every proxied request's path."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


def as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def piece(choice: dict[str, Any], chat: bool) -> str | None:
    """The new text of one streamed choice (OpenAI's chunk shape, which llama-cpp-python shares)."""
    return (choice.get("delta") or {}).get("content") if chat else choice.get("text")
