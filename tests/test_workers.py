"""`hybridllm serve --workers 2`: several processes on one port that route alike and add up."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hybridllm import default_router_dir

from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # `hybridllm serve` with several worker processes

SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"


def _chat(port: int, text: str) -> httpx.Response:
    body = {"model": "hybrid", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    # a new connection per request, so the kernel hands them to either worker
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)


def test_two_workers_share_metrics_knob_and_dashboard(tmp_path):
    port = free_port()
    n = 120
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        args = ["--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}"]
        log = (tmp_path / "serve.log").open("wb")
        with running_serve([*args, "--workers", "2", "--port", str(port)], port, log=log, timeout=120):
            base = f"http://127.0.0.1:{port}"
            with ThreadPoolExecutor(16) as pool:
                got = list(pool.map(lambda i: _chat(port, f"What is {i} + {i}?"), range(n)))
            assert all(r.status_code == 200 for r in got)
            # identical routing in every worker: the same prompt gets the same score wherever it lands
            same = [_chat(port, "Prove that there are infinitely many primes.") for _ in range(8)]
            assert len({r.headers["x-hybridllm-score"] for r in same}) == 1
            metrics = httpx.get(f"{base}/metrics").text
            answered = sum(
                float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("hybridllm_requests_total{")
            )
            assert answered == n + 8  # every worker's counts, added up
            # the knob set through one worker holds in all of them, from the next request on
            assert httpx.post(f"{base}/dashboard/knob", json={"model": "hybrid-t-0"}).status_code == 200
            after = [_chat(port, "Prove that there are infinitely many primes.") for _ in range(12)]
            assert {r.headers["x-hybridllm-model"] for r in after} == {SMALL}
            # the dashboard adds up the workers' live windows (each publishes twice a second)
            deadline = time.time() + 5
            while (data := httpx.get(f"{base}/dashboard/data").json())["requests"] != n + 20:
                assert time.time() < deadline, data["requests"]
                time.sleep(0.2)
            assert data["router"]["knob"] == "hybrid-t-0" and data["by_model"][SMALL] >= 12
        log.close()
    lines = [json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines() if x.startswith('{"id"')]
    assert len(lines) == n + 20 and len({x["worker"] for x in lines}) == 2  # both workers answered
