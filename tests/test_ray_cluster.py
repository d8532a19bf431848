"""The Ray engine against a cluster started with ``ray start --head`` (a separate set of processes,
workers in their own directories), driven by the CLI with relative paths from another directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybridllm.model.router import SHIPPED_ROUTER

from .helpers.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow  # a Ray cluster

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(RAY), "start", "--head", "--port", "0", "--num-cpus", "2", "--include-dashboard=false"]
    proc = subprocess.run(start, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        yield
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYBRIDLLM_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


def test_relative_paths_work_on_a_real_cluster(cluster, tmp_path):
    shutil.copytree(SHIPPED_ROUTER, tmp_path / "router")
    rows = [json.loads(x) for x in (REPO / "data/default-pair/split/test.jsonl").read_text().splitlines()[:30]]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = cli(tmp_path, "evaluate", "router", "t.jsonl", "--engine", "ray", "--ray-address", "auto", "--json", "e.json")
    assert got.returncode == 0, got.stderr[-3000:]
    local = cli(tmp_path, "evaluate", "router", "t.jsonl", "--json", "l.json")
    assert local.returncode == 0, local.stderr[-2000:]
    ray_apgr = json.loads((tmp_path / "e.json").read_text())["router"]["apgr"]
    assert ray_apgr == pytest.approx(json.loads((tmp_path / "l.json").read_text())["router"]["apgr"], abs=1e-9)

    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(5)))
    with FakeOpenAI() as up:
        args = ["collect", "p.jsonl", "--model", f"a=m@{up.url}", "--output", "out/t.jsonl", "--samples", "2"]
        got = cli(tmp_path, *args, "--engine", "ray", "--ray-address", "auto")
        assert got.returncode == 0, got.stderr[-3000:]
        assert len(up.requests) == 10
    table = [json.loads(x) for x in (tmp_path / "out/t.jsonl").read_text().splitlines()]
    assert [len(r["responses"]["a"]) for r in table] == [2] * 5


def test_worker_failure_is_one_line(cluster, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "1", "prompt": "q"}) + "\n")
    # a local model file that exists on the driver but is not a GGUF: the worker fails to load it
    (tmp_path / "bad.gguf").write_bytes(b"not a model")
    args = ["collect", "p.jsonl", "--model", "a=bad.gguf", "--output", "t.jsonl", "--samples", "1"]
    got = cli(tmp_path, *args, "--engine", "ray", "--ray-address", "auto")
    assert got.returncode == 1
    last = got.stderr.strip().splitlines()[-1]
    assert last.startswith("error: collect failed on a Ray worker:"), got.stderr[-2000:]
    assert "Traceback" not in got.stderr


def test_unusable_work_dir_is_refused_before_the_job(cluster, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "1", "prompt": "q"}) + "\n")
    (tmp_path / "file").write_text("x")
    args = ["collect", "p.jsonl", "--model", "a=m@http://127.0.0.1:9/v1", "--output", "t.jsonl"]
    got = cli(tmp_path, *args, "--engine", "ray", "--ray-address", "auto", "--work-dir", "file/shards")
    assert got.returncode == 1 and "work directory not usable" in got.stderr
