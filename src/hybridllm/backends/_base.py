"""The one interface every model backend offers, to ``collect``/``chat`` and to the proxy alike."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from ._types import Answer, Failure, OnText, Prompt, Sample, SamplingParams


class Backend(ABC):
    """A model behind one interface. Use inside ``async with`` (opens the HTTP client or loads the
    weights). Two ways in:

    - :meth:`generate` draws one sample (with retries for an HTTP endpoint; streamed piece by
      piece with ``on_text``): what collect, score-with-a-judge and chat use;
    - :meth:`forward` sends a client's OpenAI request body once, within ``timeout_s`` in all, and
      returns the answer to relay unchanged (or a :class:`Failure` to fall back from): what the proxy
      uses.
    """

    model: str
    timeout_s: float
    name: str | None
    #: runs in this process (weights loaded here) rather than behind an HTTP endpoint
    in_process: bool = False
    #: :meth:`generate_many` decodes a group together (not one request after another)
    batched: bool = False
    #: the protocol the proxy relays to it: ``chat`` (:meth:`forward`), or ``messages`` /
    #: ``responses`` (:meth:`forward_raw`, an HTTP upstream only)
    api: str = "chat"

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the model runs, for messages and banners (credentials masked)."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """What a resumed collect run must find unchanged (journal settings)."""

    @property
    def who(self) -> str:
        """The name in messages: the router's name for the model, else the model sent upstream."""
        return self.name or self.model

    @property
    def has_key(self) -> bool:
        return False

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    async def generate(self, prompt: Prompt, params: SamplingParams, on_text: OnText | None = None) -> Sample: ...

    async def generate_many(self, items: Sequence[tuple[Prompt, SamplingParams]]) -> list[Sample]:
        """Several samples; a backend that cannot decode them together runs them side by side."""
        return list(await asyncio.gather(*(self.generate(p, s) for p, s in items)))

    @abstractmethod
    async def forward(self, kind: str, body: dict[str, Any], stream: bool) -> Answer | Failure:
        """One attempt at a client's request (``kind``: ``chat`` or ``completion``; ``body`` already
        names this backend's model)."""

    async def forward_raw(
        self, kind: str, data: bytes, stream: bool, headers: Mapping[str, str] | None = None
    ) -> Answer | Failure:
        """One attempt at a client's request of protocol ``kind`` given as its body's bytes (relayed
        as they are); a backend that does not speak ``kind`` answers a :class:`Failure` and sends
        nothing."""
        return Failure(502, f"upstream {self.who} does not speak the {kind} API: not sent")

    @abstractmethod
    async def probe(self, timeout_s: float = 3.0) -> dict[str, Any]:
        """Readiness: ``{"ok": bool, ...}``."""
