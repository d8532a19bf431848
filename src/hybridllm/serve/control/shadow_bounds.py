"""What bounds the shadow checks' work (docs/control.md): the replayed body (one answer, capped
output), the size of a prompt that may be drawn, the per-minute ceiling shared fairly across client
keys, and the judge's token count per shadow pair.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

#: fields a replay never carries: a stream (the shadow reads one whole answer), the completions
#: API's server-side ``best_of`` (billed for every candidate)
_DROPPED = ("stream", "stream_options", "best_of")
#: how long a key counts as active after its last draw (the ceiling is shared among active keys)
ACTIVE_S = 60.0
#: a key's bucket holds this many seconds of its share (what it may take at once)
BURST_S = 10.0


def replay_body(body: dict[str, Any], kind: str, max_tokens: int) -> dict[str, Any]:
    """The body a shadow call sends: the client's, with ``n`` = 1, no stream and no ``best_of``,
    the output capped at ``max_tokens`` (``max_tokens`` and ``max_completion_tokens`` each set to
    the smaller of the client's and the cap; ``max_tokens`` = the cap when the client set neither),
    and a completions batch (a list of prompts) cut to its first prompt, the one whose answer the
    judge reads. Everything else (tools, tool_choice, temperature, seed...) is the client's."""
    out = {k: v for k, v in body.items() if k not in _DROPPED}
    out["n"] = 1
    given = False
    for field in ("max_tokens", "max_completion_tokens"):
        v = out.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out[field] = min(v, max_tokens)
            given = True
        elif field in out:
            out[field] = max_tokens  # a value the upstream would reject or read as "no limit": the cap
            given = True
    if not given:
        out["max_tokens"] = max_tokens
    prompt = out.get("prompt")
    if kind == "completion" and isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        out["prompt"] = prompt[0]
    return out


def body_chars(value: Any, limit: int) -> int:
    """The characters of every string in ``value`` (a request body: messages, prompt, tools), the
    objects' keys and the numbers' digits too (a tool schema's property names are prompt all the
    same), counted until they pass ``limit`` (a 900 kB prompt is not walked to its end)."""
    total = 0
    for s in _strings(value):
        total += len(s)
        if total > limit:
            break
    return total


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        else:
            yield v if isinstance(v, str) else str(v)


class FairCeiling:
    """The shadow calls' per-minute ceiling, shared equally by the client keys that had a request
    drawn in the last minute (the key ``None`` stands for traffic without keys): each such key has its
    own token bucket, refilled at ``per_minute`` / (active keys) and holding ``BURST_S`` seconds of
    that share. A key alone gets the whole ceiling; a key that floods empties its own bucket, never
    another's. Pending shadow calls are shared the same way: a key may hold at most
    ``max_pending`` / (active keys + 1) of them, so a newcomer always finds room."""

    def __init__(self, per_minute: int, max_pending: int) -> None:
        self.per_minute, self.max_pending = per_minute, max_pending
        self._seen: dict[str | None, float] = {}  # key -> its last draw (monotonic)
        self._tokens: dict[str | None, float] = {}
        self._filled: dict[str | None, float] = {}
        self.pending: dict[str | None, int] = {}

    def active(self, now: float) -> int:
        for k in [k for k, t in self._seen.items() if now - t > ACTIVE_S]:
            del self._seen[k]
            self._tokens.pop(k, None)
            self._filled.pop(k, None)
        return max(1, len(self._seen))

    def take(self, key: str | None, calls: int) -> str | None:
        """Take ``calls`` shadow calls for ``key``: None when it may, else the skip's reason
        (``ceiling``: the key's share of the per-minute ceiling is used; ``busy``: its share of the
        pending calls)."""
        now = time.monotonic()
        self._seen[key] = now
        n = self.active(now)
        rate = self.per_minute / 60 / n
        burst = max(1.0, rate * BURST_S)
        tokens = self._tokens.get(key, burst) + (now - self._filled.get(key, now)) * rate
        tokens = min(burst, tokens)
        self._tokens[key], self._filled[key] = tokens, now
        if tokens < calls:
            return "ceiling"
        if self.pending.get(key, 0) + calls > max(calls, self.max_pending // (n + 1)):
            return "busy"
        self._tokens[key] = tokens - calls
        self.pending[key] = self.pending.get(key, 0) + calls
        return None

    def done(self, key: str | None, calls: int) -> None:
        left = self.pending.get(key, 0) - calls
        if left > 0:
            self.pending[key] = left
        else:
            self.pending.pop(key, None)


class CallSlots:
    """``--shadow-concurrency``: at most ``n`` shadow calls under way at once. A drawn request holds
    one slot per model it asks (``--shadow-sides``: one for a pair, up to M − 1 for a fleet; at most
    ``n``) until its answers are judged; requests get their slots in the order they asked."""

    def __init__(self, n: int) -> None:
        self.n = self.free = n
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, calls: int) -> AsyncIterator[None]:
        k = min(max(1, calls), self.n)
        if self._waiting or self.free < k:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((k, fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # granted as it was cancelled: hand the slots on
                    self._give(k)
                else:  # still waiting (or passed over by _wake): the slots behind it may fit now
                    if (k, fut) in self._waiting:
                        self._waiting.remove((k, fut))
                    self._wake()
                raise
        else:
            self.free -= k
        try:
            yield
        finally:
            self._give(k)

    def _give(self, k: int) -> None:
        self.free += k
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            k, fut = self._waiting[0]
            if fut.done():  # cancelled while it waited
                self._waiting.popleft()
                continue
            if k > self.free:
                return
            self._waiting.popleft()
            self.free -= k
            fut.set_result(None)


#: the judge's token counts of the shadow pair being scored (set by the shadow task, appended by
#: :class:`MeteredJudge`; each task of a pair's ``gather`` shares its list)
judge_usage: contextvars.ContextVar[list[tuple[int, int]] | None] = contextvars.ContextVar("judge_usage", default=None)


class MeteredJudge:
    """A judge backend whose every answer's token counts go to :data:`judge_usage` (so a shadow
    pair knows what judging it cost); everything else is the backend's."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def generate(self, prompt: Any, params: Any, on_text: Any = None) -> Any:
        sample = await self._backend.generate(prompt, params, on_text)
        got = judge_usage.get()
        if got is not None:
            pin, pout = getattr(sample, "prompt_tokens", None), getattr(sample, "completion_tokens", None)
            got.append((pin if isinstance(pin, int) else -1, pout if isinstance(pout, int) else -1))
        return sample
