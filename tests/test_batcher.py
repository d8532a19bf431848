"""The router's micro-batcher: quick batches are scored on the event loop, slow ones in a thread,
and a prompt that makes the router raise fails alone."""

import asyncio
import threading
import time

import pytest

from hybridllm.serve.batcher import INLINE_MAX_S, MicroBatcher, _size


class TimedRouter:
    """Takes ``per_prompt_s`` per prompt plus ``per_char_s`` per character (the static router:
    about 0.27 ms + 0.53 us per character)."""

    def __init__(self, per_prompt_s: float, per_char_s: float = 0.0) -> None:
        self.per_prompt_s, self.per_char_s = per_prompt_s, per_char_s
        self.threads: list[tuple[int, int]] = []  # (batch size, thread)

    def score(self, texts):
        self.threads.append((len(texts), threading.get_ident()))
        if any(t == "bad" for t in texts):
            raise ValueError("unreadable")
        time.sleep(self.per_prompt_s * len(texts) + self.per_char_s * sum(map(len, texts)))
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
    assert batches[-1] == loop_thread and _size(["x" * (i + 1) for i in range(8)]) * b.per_char_s < INLINE_MAX_S


def test_a_burst_of_long_prompts_goes_to_the_thread():
    """The estimate is per character: after many short prompts scored on the loop, eight prompts of
    16,000 characters (~70 ms here) are expected to be slow and go to the thread (a per-prompt
    estimate learnt on the short ones would put them on the loop, stalling every connection), and
    so does a lone long prompt."""
    router = TimedRouter(0.00027, 0.53e-6)
    loop_thread = threading.get_ident()

    async def main():
        b = MicroBatcher(router)
        b.start()
        try:
            for _ in range(3):
                await asyncio.gather(*(b.score("x" * 10) for _ in range(8)))
            assert router.threads[-1] == (8, loop_thread)  # short batches: on the loop
            long = ["y" * 16_000] * 8
            assert await asyncio.gather(*(b.score(t) for t in long)) == [16_000.0] * 8
            assert router.threads[-1][0] == 8 and router.threads[-1][1] != loop_thread
            assert await b.score("z" * 10, alone=True) == 10.0  # a short lone prompt: on the loop
            assert router.threads[-1] == (1, loop_thread)
            assert await b.score("y" * 16_000 * 3, alone=True) == 48_000.0  # a long one: the thread
            assert router.threads[-1][0] == 1 and router.threads[-1][1] != loop_thread
        finally:
            await b.stop()

    asyncio.run(main())


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
