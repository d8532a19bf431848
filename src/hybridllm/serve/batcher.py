"""Micro-batching of routing decisions: requests that arrive together share one encoder pass, run
in a worker thread so the event loop never blocks on the router.

A batch that fails is scored again one request at a time, so a request that makes the router raise
fails alone; its neighbours get their scores.
"""

from __future__ import annotations

import asyncio
from typing import Any


class MicroBatcher:
    def __init__(self, router: Any, window_s: float = 0.0) -> None:
        self.router = router
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
        it is scored at once, without the hops through the queue and the batching task."""
        if alone and self.queue.empty():
            return self.router.score([text])[0]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((text, fut))
        return await fut

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
                if len(texts) == 1:
                    # alone: score here (about 0.3 ms), sparing the hop to a thread and back; with
                    # company, a thread lets the event loop serve other requests meanwhile
                    scores: list[Any] = list(self.router.score(texts))
                else:
                    scores = list(await asyncio.to_thread(self.router.score, texts))
            except Exception:
                scores = await asyncio.to_thread(self._score_each, texts)
            for (_, fut), s in zip(items, scores, strict=True):
                if fut.done():
                    continue
                if isinstance(s, BaseException):
                    fut.set_exception(s)
                else:
                    fut.set_result(s)
