"""The embedded default: `hybridllm serve` with no arguments serves the default local pair
(qwen2.5-0.5b | qwen2.5-1.5b, assembled from PyPI packages) behind a router, offline."""

import json

import openai
import pytest

from hybridllm.models import LOCAL_MODELS
from hybridllm.table import read_table

from .conftest import LARGE, SMALL
from .procs import running_serve
from .test_serve import _free_port


@pytest.fixture(scope="module")
def local_pair_router(cache_env, mmlu_slice, tmp_path_factory):
    """A router whose pair is the default local pair, trained on real outcomes (MMLU-Pro, two
    models' correctness renamed to the local names): what `HYBRIDLLM_ROUTER` points serve at."""
    from hybridllm.train import TrainOptions, train_router

    rows = []
    for r in read_table(mmlu_slice):
        q = r["quality"]
        rows.append(dict(r, quality={"qwen2.5-0.5b": q[SMALL], "qwen2.5-1.5b": q[LARGE]}))
    out = tmp_path_factory.mktemp("router") / "local-pair"
    train_router(rows, TrainOptions(small="qwen2.5-0.5b", large="qwen2.5-1.5b", labels="det"), out, show_progress=False)
    return out


def test_serve_with_no_arguments_answers_with_a_real_local_model(local_pair_router, tmp_path):
    assert set(LOCAL_MODELS) >= {"qwen2.5-0.5b", "qwen2.5-1.5b"}
    port = _free_port()
    env = {"HYBRIDLLM_ROUTER": str(local_pair_router), "HYBRIDLLM_PORT": str(port)}
    with running_serve([], port, env=env, timeout=240) as proc:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=240)
        r = c.chat.completions.with_raw_response.create(
            model="hybrid",
            messages=[{"role": "user", "content": "What is 2+3? Reply with the number."}],
            max_tokens=8,
            temperature=0,
        )
        answer = r.parse()
        assert r.headers["x-hybridllm-model"] in ("qwen2.5-0.5b", "qwen2.5-1.5b")
        assert 0 <= float(r.headers["x-hybridllm-score"]) <= 1
        assert "5" in answer.choices[0].message.content  # a real model answering, not an echo
        assert answer.usage.completion_tokens <= 8
        for forced in ("small", "large"):  # both local models load and answer
            r = c.chat.completions.with_raw_response.create(
                model=forced, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0
            )
            assert r.headers["x-hybridllm-model"] == {"small": "qwen2.5-0.5b", "large": "qwen2.5-1.5b"}[forced]
            assert r.parse().choices[0].message.content.strip()
        models = {m.id for m in c.models.list().data}
        assert {"hybrid", "qwen2.5-0.5b", "qwen2.5-1.5b"} <= models
    log = proc.stdout.read().decode()
    assert "routing qwen2.5-0.5b | qwen2.5-1.5b on http://127.0.0.1:" in log
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert [x["model"] for x in lines][-2:] == ["qwen2.5-0.5b", "qwen2.5-1.5b"]


def test_no_router_anywhere_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", "serve"],
        capture_output=True,
        text=True,
        env={"HYBRIDLLM_ROUTER": str(tmp_path / "nope"), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: no router at")
