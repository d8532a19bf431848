"""The router's micro-batcher: quick batches are scored on the event loop, slow ones in a thread,
and a prompt that makes the router raise fails alone."""

import asyncio
import threading
import time

import pytest

from hybridllm.serve.batcher import INLINE_MAX_S, MicroBatcher


class TimedRouter:
    def __init__(self, per_prompt_s: float) -> None:
        self.per_prompt_s = per_prompt_s
        self.threads: list[tuple[int, int]] = []  # (batch size, thread)

    def score(self, texts):
        self.threads.append((len(texts), threading.get_ident()))
        if any(t == "bad" for t in texts):
            raise ValueError("unreadable")
        time.sleep(self.per_prompt_s * len(texts))
        return [float(len(t)) for t in texts]


async def _rounds(router, rounds: int, size: int, bad: bool = False):
    b = MicroBatcher(router)
    b.start()
    try:
        out = []
        for _ in range(rounds):
            texts = [("bad" if bad and i == 3 else "x" * (i + 1)) for i in range(size)]
            out.append(await asyncio.gather(*(b.score(t) for t in texts), return_exceptions=True))
        return out, b
    finally:
        await b.stop()


def test_quick_batches_run_on_the_loop_after_the_first():
    router = TimedRouter(0.0)
    loop_thread = threading.get_ident()
    out, b = asyncio.run(_rounds(router, 3, 8))
    assert out[-1] == [float(i + 1) for i in range(8)]
    batches = [t for n, t in router.threads if n > 1]
    assert batches[0] != loop_thread  # unmeasured: the thread
    assert batches[-1] == loop_thread and b.per_prompt_s < INLINE_MAX_S / 8


def test_slow_batches_stay_in_a_thread():
    router = TimedRouter(INLINE_MAX_S)  # a batch of 8 takes 8x the inline limit
    loop_thread = threading.get_ident()
    asyncio.run(_rounds(router, 3, 8))
    assert [t for n, t in router.threads if n > 1 and t == loop_thread] == []


@pytest.mark.parametrize("per_prompt_s", [0.0, INLINE_MAX_S])
def test_a_prompt_that_makes_the_router_raise_fails_alone(per_prompt_s):
    out, _ = asyncio.run(_rounds(TimedRouter(per_prompt_s), 2, 8, bad=True))
    for got in out:
        assert isinstance(got[3], ValueError)
        assert [g for i, g in enumerate(got) if i != 3] == [float(i + 1) for i in range(8) if i != 3]
