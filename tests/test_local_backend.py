"""The in-process GGUF backend with the tiny Gemma 3 270M fixture (a base model: completion mode)."""

import asyncio
import os

import pytest

from hybridllm.backends import BackendError, LocalBackend, SamplingParams
from hybridllm.models import LOCAL_MODELS, LocalModel, ModelError, model_path


def test_fixture_model_is_assembled_once_and_verified(cache_env):
    p = model_path("gemma-3-270m")
    assert p.stat().st_size == LOCAL_MODELS["gemma-3-270m"].size
    mtime = os.stat(p).st_mtime_ns
    from hybridllm import models

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
