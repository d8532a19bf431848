"""Micro-batching of routing decisions: requests that arrive together share one encoder pass.

A batch is scored on the event loop itself while batches are quick to score (the static encoder: a
few milliseconds for dozens of prompts, where the hop to a thread and back cost more than it saved,
since the scoring holds the interpreter lock for much of its time anyway), and in a worker thread
once they are not (a transformer encoder), so a slow router never stalls the other connections.

A batch that fails is scored again one request at a time, so a request that makes the router raise
fails alone; its neighbours get their scores.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

#: a batch expected to take longer than this is scored in a worker thread
INLINE_MAX_S = 0.01
#: a prompt's fixed scoring cost in characters: the static router spends about as long on a prompt's
#: set-up as on 500 more characters (0.27 ms + 0.53 us per character, measured on GSM8K, MMLU-Pro
#: and 16,000-character prompts)
FIXED_CHARS = 500


def _size(texts: list[str]) -> int:
    """What a batch costs to score, in characters (each prompt's own plus its fixed cost)."""
    return sum(map(len, texts)) + FIXED_CHARS * len(texts)


class MicroBatcher:
    def __init__(self, router: Any, window_s: float = 0.0) -> None:
        self.router = router
        # running estimate of the scoring time per character (see _size); until a batch is
        # measured, batches go to the thread. Per character, not per prompt: a burst
        # of long prompts after many short ones is then expected to be slow, and goes to the thread
        self.per_char_s = INLINE_MAX_S
        self._measured = False
        self.window_s = window_s  # 0: no waiting; what arrives while a batch is scored forms the next
        self.queue: asyncio.Queue[tuple[str, asyncio.Future[Any]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def score(self, text: str, alone: bool = False) -> Any:
        """The router's score of ``text``: a float (two models) or an array, one per scored model.
        ``alone``: the caller knows no other request is in flight, so nothing could share a batch;
        it is scored at once, without the hops through the queue and the batching task, unless
        it is expected to be slow (then the batching task sends it to the thread)."""
        if alone and self.queue.empty() and self._quick([text]):
            t0 = time.perf_counter()
            score = self.router.score([text])[0]
            self._learn([text], time.perf_counter() - t0)
            return score
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((text, fut))
        return await fut

    def _quick(self, texts: list[str]) -> bool:
        """Whether scoring ``texts`` is expected to take at most INLINE_MAX_S (then on the loop)."""
        return _size(texts) * self.per_char_s <= INLINE_MAX_S

    def _learn(self, texts: list[str], seconds: float) -> None:
        """Update the per-character estimate from a scored batch (a lone prompt pays fixed costs a
        batch shares, so its figure errs on the side of the thread)."""
        first, self._measured = not self._measured, True
        now = seconds / _size(texts)
        self.per_char_s = now if first else 0.8 * self.per_char_s + 0.2 * now

    def _score_each(self, texts: list[str]) -> list[Any]:
        out: list[Any] = []
        for t in texts:
            try:
                out.append(self.router.score([t])[0])
            except Exception as exc:  # kept with its own request
                out.append(exc)
        return out

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            await asyncio.sleep(self.window_s)  # 0 still lets already-runnable requests enqueue
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            texts = [t for t, _ in items]
            try:
                t0 = time.perf_counter()
                if self._quick(texts):
                    scores: list[Any] = list(self.router.score(texts))
                else:
                    scores = list(await asyncio.to_thread(self.router.score, texts))
                self._learn(texts, time.perf_counter() - t0)
            except Exception:
                scores = await asyncio.to_thread(self._score_each, texts)
            for (_, fut), s in zip(items, scores, strict=True):
                if fut.done():
                    continue
                if isinstance(s, BaseException):
                    fut.set_exception(s)
                else:
                    fut.set_result(s)
