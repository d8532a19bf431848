"""The embedded default: `hybridllm serve` and `hybridllm chat` with no router or model arguments
use the router shipped in the package for the default local pair (qwen2.5-0.5b | qwen2.5-1.5b,
assembled from PyPI packages), offline."""

import json
import os
import subprocess
import sys

import numpy as np
import openai
import pytest

from hybridllm import read_table
from hybridllm.backends.packages import LOCAL_MODELS
from hybridllm.model.router import SHIPPED_ROUTER, Router, default_router_dir

from .conftest import REPO
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # the default local pair of real models

CHAT = [sys.executable, "-m", "hybridllm.cli", "chat"]


def _no_router_env() -> dict[str, str]:
    """The environment a fresh user has: no HYBRIDLLM_ROUTER pointing somewhere else."""
    return {k: v for k, v in os.environ.items() if k != "HYBRIDLLM_ROUTER"} | {"HYBRIDLLM_NO_PROGRESS": "1"}


def test_the_shipped_router_is_the_default_pairs(monkeypatch):
    monkeypatch.delenv("HYBRIDLLM_ROUTER", raising=False)
    assert default_router_dir() == SHIPPED_ROUTER
    r = Router(SHIPPED_ROUTER)
    assert (r.small, r.large) == ("qwen2.5-0.5b", "qwen2.5-1.5b")
    assert set(LOCAL_MODELS) >= {r.small, r.large}
    # small enough to ship: the encoder is not in it (its static table ships once, in hybridllm.features)
    assert sum(p.stat().st_size for p in SHIPPED_ROUTER.iterdir()) < 5_000_000
    s = r.score(["What is 2 + 3?", "Which option is correct? A. x B. y"])
    assert s.shape == (2,) and s.min() >= 0 and s.max() <= 1


def test_the_shipped_router_decides_as_the_release_did():
    """Every row of the default pair's test split, at the default point and at every named knob:
    the same score and the same model as the release that wrote the router (recorded by
    scripts/shipped_decisions.py at the commit the file names), though the router is now read as a
    fleet of two from its version-1 artifact and routes with the static encoder shipped in the
    package."""
    want = json.loads((REPO / "tests" / "data" / "shipped_decisions.json").read_text())
    rows = {r["id"]: r for r in read_table(REPO / "data" / "default-pair" / "split" / "test.jsonl")}
    assert list(rows) == want["ids"] and len(rows) == 214
    r = Router(SHIPPED_ROUTER)
    prompts = [rows[i]["prompt"] for i in want["ids"]]
    # float32 scores as the release wrote them, to a few units in the last place: the matrix products' sums
    # run in another order on another CPU's kernels (AVX-512 against AVX2); the decisions, exactly
    assert r.score(prompts) == pytest.approx(np.array(want["scores"]), rel=0, abs=1e-6)
    for point in want["decisions"]:
        decisions = r.route_batch(prompts, **point["knob"])
        assert decisions[0].threshold == point["threshold"], point["knob"]
        assert [d.model for d in decisions] == point["models"], point["knob"]


def test_serve_with_no_arguments_answers_with_a_real_local_model(cache_env):
    port = free_port()
    env = _no_router_env() | {"HYBRIDLLM_PORT": str(port)}
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


def test_chat_with_no_arguments_but_the_question(cache_env):
    p = subprocess.run(
        [*CHAT, "What is 2+3? Reply with the number.", "--max-tokens", "8", "--temperature", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_no_router_env(),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "5" in p.stdout
    head = [x for x in p.stderr.splitlines() if "answers (score" in x]
    assert len(head) == 1 and head[0].split()[0] in ("qwen2.5-0.5b", "qwen2.5-1.5b") and "threshold" in head[0]
    # the knob flags work with the default too: everything to the large model
    p = subprocess.run(
        [*CHAT, "Say hi.", "--max-tokens", "4", "--cost-advantage", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_no_router_env(),
    )
    assert p.returncode == 0 and "qwen2.5-1.5b answers" in p.stderr


def test_no_router_anywhere_is_a_one_line_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", "serve"],
        capture_output=True,
        text=True,
        env={"HYBRIDLLM_ROUTER": str(tmp_path / "nope"), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: no router at")
