"""The in-process GGUF backend with the tiny Gemma 3 270M fixture (a base model: completion mode)."""

import asyncio
import os
import time

import pytest

from hybridllm.backends import BackendError, LocalBackend, SamplingParams
from hybridllm.backends.packages import LOCAL_MODELS, LocalModel, ModelError, model_path

pytestmark = pytest.mark.slow  # real local models (llama.cpp)


def test_fixture_model_is_assembled_once_and_verified(cache_env):
    p = model_path("gemma-3-270m")
    assert p.stat().st_size == LOCAL_MODELS["gemma-3-270m"].size
    mtime = os.stat(p).st_mtime_ns
    from hybridllm.backends import packages as models

    models._VERIFIED.clear()  # a new process: verifies the hash again, but does not re-assemble
    assert model_path("gemma-3-270m") == p and os.stat(p).st_mtime_ns == mtime


def test_missing_part_package_says_which_pip_install(monkeypatch, cache_env):
    fake = LocalModel("nope", "nope.gguf", ("no_such_part_pkg",), ("no-such-part-pkg==1.0",), 1, "0" * 64)
    monkeypatch.setitem(LOCAL_MODELS, "nope", fake)
    with pytest.raises(ModelError, match=r"pip install no-such-part-pkg==1\.0"):
        model_path("nope")


def test_local_generation_is_real_and_seeded(cache_env):
    async def go():
        async with LocalBackend("gemma-3-270m", n_ctx=512) as b:
            p = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=16, seed=7)
            a = await b.generate("The capital of France is", p)
            again = await b.generate("The capital of France is", p)
            other = await b.generate("The capital of France is", SamplingParams(temperature=0.8, max_tokens=16, seed=8))
            return a, again, other

    a, again, other = asyncio.run(go())
    assert a.text.strip() and a.completion_tokens and 0 < a.completion_tokens <= 16
    assert a.prompt_tokens and a.prompt_tokens >= 5
    assert a.text == again.text  # same seed, same sample
    assert a.latency_s > 0
    assert isinstance(other.text, str)


def test_unknown_local_spec():
    with pytest.raises(BackendError, match=r"no such \.gguf file"):
        LocalBackend("/nonexistent/model.gguf").load()


def _many(items, n_ctx=512):
    async def go():
        async with LocalBackend("gemma-3-270m", n_ctx=n_ctx) as b:
            return await b.generate_many(items)

    return asyncio.run(go())


def test_batched_samples_are_seeded_per_sequence(cache_env):
    """Sequences in one batch must not leak into each other: equal seeds give equal samples even
    when decoded side by side, other seeds give other samples, every sample respects its limits."""
    prompt = "The capital of France is"
    same = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=24, seed=11)
    got = _many(
        [(prompt, same), (prompt, same), (prompt, SamplingParams(temperature=0.9, max_tokens=24, seed=12))]
        + [(prompt, SamplingParams(temperature=0.9, max_tokens=24, seed=s)) for s in (13, 14, 15)]
    )
    assert got[0].text == got[1].text and got[0].text.strip()
    assert len({g.text for g in got[1:]}) >= 3
    assert all(0 < g.completion_tokens <= 24 and g.prompt_tokens >= 5 for g in got)
    assert len({g.latency_s for g in got}) == 1  # the batch's wall time


def test_batched_mixed_prompts_and_stop(cache_env):
    greedy = SamplingParams(temperature=0.0, max_tokens=20)
    a, b, a2 = _many([("One, two, three,", greedy), ("The opposite of hot is", greedy), ("One, two, three,", greedy)])
    assert a.text == a2.text and a.text != b.text
    assert "four" in a.text.lower() or "4" in a.text  # a real model continuing a real sequence
    (s,) = _many([("One, two, three,", SamplingParams(temperature=0.0, max_tokens=20, stop=[","]))])
    assert "," not in s.text and s.finish_reason == "stop" and s.completion_tokens < 20
    # a stop string spanning several tokens, found in the window of the newest pieces
    mark = a.text.strip()[2:11]
    (m,) = _many([("One, two, three,", SamplingParams(temperature=0.0, max_tokens=20, stop=["zzz", mark]))])
    assert m.finish_reason == "stop" and m.text == a.text[: a.text.index(mark)]


def test_prompt_prefix_shared_by_the_whole_batch_is_evaluated_once():
    from hybridllm.backends._batched import _prompt_entries

    entries, last_of = _prompt_entries({(1, 2, 3, 4): [0, 1], (1, 2, 5): [2]})
    assert entries == [
        (1, 0, (0, 1, 2), False),
        (2, 1, (0, 1, 2), False),
        (3, 2, (0, 1), False),
        (4, 3, (0, 1), True),
        (5, 2, (2,), True),
    ]
    assert last_of == {3: [0, 1], 4: [2]}
    # a prompt that is a prefix of another keeps its last token to itself (its own logits)
    entries, last_of = _prompt_entries({(1, 2): [0], (1, 2, 3): [1]})
    assert entries == [(1, 0, (0, 1), False), (2, 1, (0,), True), (2, 1, (1,), False), (3, 2, (1,), True)]
    assert last_of == {1: [0], 3: [1]}
    # one prompt: nothing to share with
    assert _prompt_entries({(7, 8): [0, 1, 2]}) == ([(7, 0, (0, 1, 2), False), (8, 1, (0, 1, 2), True)], {1: [0, 1, 2]})


def test_batched_prompts_with_a_shared_prefix_decode_as_they_would_alone(cache_env):
    """The shared prefix's KV cells serve every prompt: each continues as when decoded alone. Only
    the first words are compared: batched matrix products round differently, so a greedy near-tie
    further on may go the other way (seen: 'It is the capital' vs 'It is the largest')."""
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    prompts = ["The capital of France is", "The capital of Spain is", "The capital of Italy is the city of"]
    together = _many([(p, greedy) for p in prompts])
    alone = [_many([(p, greedy)])[0] for p in prompts]
    assert [g.text.split()[:5] for g in together] == [g.text.split()[:5] for g in alone]
    assert len({g.text for g in together}) == 3
    assert [g.prompt_tokens for g in together] == [g.prompt_tokens for g in alone]


def test_batched_context_too_small_is_a_clear_error(cache_env):
    with pytest.raises(ValueError, match="KV cells"):
        _many([("Hello", SamplingParams(max_tokens=400))] * 2, n_ctx=128)


def test_batched_collect_resumes_to_the_same_table(cache_env, tmp_path):
    """A decode group is journaled in one write and decoded deterministically, so a run that dies
    after its first group and is resumed writes the same table as an uninterrupted run."""
    from hybridllm.stages.collect import collect_async
    from hybridllm.tables.format import read_table

    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(["One, two,", "Paris is", "Water is", "Dogs are"])]
    params = SamplingParams(temperature=0.8, max_tokens=10)

    def run(out, on_sample=None):
        b = {"tiny": LocalBackend("gemma-3-270m", n_ctx=256)}
        return asyncio.run(collect_async(rows, b, out, 3, params, seed=5, on_sample=on_sample, batch=4))

    ref_rows, _ = run(tmp_path / "ref.jsonl")

    class Crash(Exception):
        pass

    seen = []

    def crash_after_first_group(rec):
        seen.append(rec)
        if len(seen) == 4:
            raise Crash

    with pytest.raises(Crash):
        run(tmp_path / "t.jsonl", crash_after_first_group)
    assert all(r["batch"] == 4 for r in seen)
    _, stats = run(tmp_path / "t.jsonl")
    assert stats.resumed == 4 and stats.requested == 8
    assert read_table(tmp_path / "t.jsonl") == read_table(tmp_path / "ref.jsonl") == ref_rows


def test_streamed_local_answer_is_the_same_sample(cache_env):
    """Streamed or not, first call or after the same prompt was cached: one seed, one sample."""
    pieces: list[str] = []

    async def go():
        async with LocalBackend("gemma-3-270m", n_ctx=512) as b:
            p = SamplingParams(temperature=0.8, max_tokens=16, seed=21)
            return await b.generate("The capital of Italy is", p), await b.generate(
                "The capital of Italy is", p, on_text=pieces.append
            )

    whole, streamed = asyncio.run(go())
    assert len(pieces) > 1 and "".join(pieces) == streamed.text == whole.text
    assert 0 < streamed.completion_tokens <= 16


def test_cpu_budget_lets_models_share_cores_only_when_they_fit():
    from hybridllm.backends import _CpuBudget

    async def go():
        budget, log = _CpuBudget(2), []

        async def job(name, n):
            async with budget.hold(n):
                log.append(f"+{name}")
                await asyncio.sleep(0.05)
                log.append(f"-{name}")

        await asyncio.gather(job("a", 1), job("b", 1))
        both = list(log)
        log.clear()
        await asyncio.gather(job("a", 2), job("b", 1))
        return both, log, budget.free

    both, turns, free = asyncio.run(go())
    assert both == ["+a", "+b", "-a", "-b"]  # one core each: side by side
    assert turns == ["+a", "-a", "+b", "-b"]  # a holds both cores: b waits
    assert free == 2


def test_local_models_take_turns_with_all_cores_and_overlap_with_one_each(cache_env):
    """Two in-process models: with every core each (the default) they decode one after the other;
    with one thread each on a machine of 2+ cores (CI has 2), side by side."""
    params = SamplingParams(temperature=0.0, max_tokens=48)

    async def elapsed(threads):
        a = LocalBackend("gemma-3-270m", n_ctx=512, n_threads=threads)
        b = LocalBackend("gemma-3-270m", n_ctx=512, n_threads=threads)
        async with a, b:
            t0 = time.perf_counter()
            got = await asyncio.gather(a.generate("One, two, three,", params), b.generate("The sky is", params))
            return time.perf_counter() - t0, sum(g.latency_s for g in got)

    wall, busy = asyncio.run(elapsed(None))
    assert wall >= 0.95 * busy  # taking turns: the wall time is both generations end to end
    wall, busy = asyncio.run(elapsed(1))
    assert wall < 0.75 * busy  # side by side
