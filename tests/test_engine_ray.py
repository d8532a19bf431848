"""The Ray engine against the in-process engine on a local Ray instance (ray.init(num_cpus=2)):
same tables, same features, same scores; and resume after the driver is killed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hybridllm.backends import SamplingParams, make_backend
from hybridllm.tables.format import read_table, write_table

from .conftest import SHARED
from .helpers.cli import collect_cmd
from .helpers.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow  # a local Ray instance

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster(cache_env):
    # after cache_env: Ray's workers inherit the environment the instance starts with
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture
def upstream():
    with FakeOpenAI() as f:
        yield f


def gsm8k(n):
    with (SHARED / "gsm8k" / "test.jsonl").open() as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def ray_opts(tmp_path, **kw):
    from hybridllm.engine.jobs import RayOptions

    return RayOptions(
        workers=2, shard_rows=kw.pop("shard_rows", 7), work_dir=tmp_path / "shards", show_progress=False, **kw
    )


def test_collect_on_ray_equals_in_process(ray_cluster, upstream, tmp_path):
    import asyncio

    from hybridllm.engine.jobs import collect_ray
    from hybridllm.stages.collect import collect_async, format_prompt

    rows = gsm8k(30)
    specs = {"small": f"tiny@{upstream.url}", "large": f"big@{upstream.url}"}
    params = SamplingParams(temperature=0.8, max_tokens=32)
    template, system = "Q: {prompt}", "Be brief."
    sent = [format_prompt(r, template, system) for r in rows]
    backends = {n: make_backend(s, concurrency=4) for n, s in specs.items()}
    local, _ = asyncio.run(collect_async(sent, backends, tmp_path / "local.jsonl", 3, params, seed=3, keep=rows))

    def on_ray_run():
        out = tmp_path / "ray.jsonl"
        return collect_ray(
            rows, specs, out, 3, params, 3, ray_opts(tmp_path), template, backend_kw={"concurrency": 2}, system=system
        )

    on_ray, stats = on_ray_run()
    assert stats.shards == 5 and stats.resumed == 0 and stats.items == 30
    assert on_ray == local
    assert read_table(tmp_path / "ray.jsonl") == read_table(tmp_path / "local.jsonl")
    assert on_ray[0]["responses"]["small"][0].startswith("echo:Q: Janet")
    # the store is what makes a rerun free: nothing is requested again
    before = len(upstream.requests)
    again, stats = on_ray_run()
    assert again == local and stats.resumed == 5 and len(upstream.requests) == before


def test_ray_store_refuses_other_settings(ray_cluster, upstream, tmp_path):
    from hybridllm.engine.jobs import EngineError, collect_ray

    rows = gsm8k(4)
    specs = {"small": f"tiny@{upstream.url}"}
    collect_ray(rows, specs, tmp_path / "t.jsonl", 1, SamplingParams(max_tokens=8), 0, ray_opts(tmp_path))
    with pytest.raises(EngineError, match=r"other settings \(params differ\)"):
        collect_ray(rows, specs, tmp_path / "t.jsonl", 1, SamplingParams(max_tokens=9), 0, ray_opts(tmp_path))


def test_score_on_ray_equals_in_process(ray_cluster, tmp_path):
    from hybridllm.engine.jobs import score_ray
    from hybridllm.stages.score import score_rows

    rows = gsm8k(20)
    for i, r in enumerate(rows):  # real GSM8K references; responses right, wrong and unparseable
        a = [f"so #### {r['reference']}", "#### 0", "no idea"][i % 3 :]
        r["responses"] = {"a": a, "b": [r["meta"]["solution"]]}
    on_ray, stats = score_ray(rows, "exact-match", ray_opts(tmp_path))
    assert on_ray == score_rows(rows, "exact-match")
    assert stats.shards == 3 and sum(sum(r["quality"]["b"]) for r in on_ray) == 20


def test_embedding_pass_and_training_on_ray_equal_in_process(ray_cluster, mmlu_slice, tmp_path):
    from hybridllm.engine.jobs import featurize_ray
    from hybridllm.features.featurize import featurize, make_encoder
    from hybridllm.model.fit import DEFAULT_EXTRA, TrainOptions, train_router

    rows = read_table(mmlu_slice)
    texts = [r["prompt"] for r in rows[:300]]
    local = featurize(make_encoder("static"), texts, DEFAULT_EXTRA)
    on_ray, stats = featurize_ray(texts, "static", 256, DEFAULT_EXTRA, ray_opts(tmp_path, shard_rows=64))
    assert stats.shards == 5 and on_ray.shape == local.shape == (300, 385)
    np.testing.assert_allclose(on_ray, local, rtol=0, atol=1e-6)

    from .conftest import LARGE, SMALL

    def fz(t):
        return featurize_ray(t, "static", 256, DEFAULT_EXTRA, ray_opts(tmp_path / "train", shard_rows=128))[0]

    opts = TrainOptions(small=SMALL, large=LARGE, labels="det", encoder="static")
    a = train_router(rows, opts, tmp_path / "a", show_progress=False)
    b = train_router(rows, opts, tmp_path / "b", show_progress=False, featurizer=fz)
    np.testing.assert_allclose(a.val_scores, b.val_scores, atol=1e-5)
    assert a.config["validation_metrics"] == b.config["validation_metrics"]


def test_evaluate_on_ray_equals_in_process(ray_cluster, mmlu_slice, tmp_path):
    from hybridllm.engine.jobs import router_scores_ray
    from hybridllm.model.evaluation import evaluate_router
    from hybridllm.model.fit import TrainOptions, train_router
    from hybridllm.model.router import Router

    from .conftest import LARGE, SMALL

    rows = read_table(mmlu_slice)
    train_router(rows, TrainOptions(small=SMALL, large=LARGE, labels="det"), tmp_path / "r", show_progress=False)
    router = Router(tmp_path / "r")
    ev_local = evaluate_router(router, rows)
    local, s_local = ev_local.report, ev_local.scores

    def scorer(prompts):
        return router_scores_ray(tmp_path / "r", prompts, ray_opts(tmp_path, shard_rows=100))[0]

    ev_ray = evaluate_router(router, rows, scorer=scorer)
    on_ray, s_ray = ev_ray.report, ev_ray.scores
    np.testing.assert_allclose(s_ray, s_local, atol=1e-6)
    assert on_ray == local
    # a router over three models: one score per scored model and prompt, on Ray as in process
    from hybridllm.model.head import HeadConfig

    from .conftest import THREE, THREE_COSTS

    opts = TrainOptions(models=THREE, costs=THREE_COSTS, head=HeadConfig(members=1, epochs=2, extra=["log_tokens"]))
    train_router(rows, opts, tmp_path / "r3", show_progress=False)
    prompts = [r["prompt"] for r in rows[:150]]
    got = router_scores_ray(tmp_path / "r3", prompts, ray_opts(tmp_path / "three", shard_rows=100))[0]
    want = Router(tmp_path / "r3").score(prompts)
    assert got.shape == want.shape == (150, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)


def ray_collect_cmd(prompts, upstream, output, ray_args=()):
    return collect_cmd(prompts, upstream, output, samples=2, concurrency=2, extra=["--max-tokens", "16", *ray_args])


def test_kill_the_driver_then_resume(ray_cluster, upstream, tmp_path):
    """A driver killed with SIGKILL mid-job leaves whole shards only; the rerun sends only the
    missing shards and the table equals the in-process engine's."""
    rows = gsm8k(40)
    prompts = tmp_path / "p.jsonl"
    write_table(rows, prompts)
    ref = tmp_path / "ref.jsonl"
    subprocess.run(ray_collect_cmd(prompts, upstream, ref), check=True, capture_output=True, timeout=120)
    n_ref = len(upstream.requests)
    assert n_ref == 40 * 2 * 2
    upstream.delay = 0.1  # 4 tasks of 2 in flight: ~2 shards a second
    out, work = tmp_path / "ray.jsonl", tmp_path / "shards"
    ray_args = [
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster,
        "--workers",
        "2",
        "--shard-rows",
        "4",
        "--work-dir",
        str(work),
    ]
    env = {**os.environ, "HYBRIDLLM_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        ray_collect_cmd(prompts, upstream, out, ray_args),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    while len(list(work.glob("part-*.parquet"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in work.glob("part-*.parquet"))
    assert 2 <= len(written) < 10 and not out.exists(), written
    time.sleep(2)  # tasks of the dead driver are cancelled by Ray; shards they finish are whole files
    written = {p.name for p in work.glob("part-*.parquet")}
    upstream.delay = 0.0
    n_before = len(upstream.requests)
    res = subprocess.run(
        ray_collect_cmd(prompts, upstream, out, ray_args), env=env, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(written)} resumed" in res.stdout
    resent = {r["messages"][0]["content"] for r in upstream.requests[n_before:]}
    assert len(upstream.requests) - n_before == (10 - len(written)) * 4 * 2 * 2  # only the missing shards
    done_prompts = {r["prompt"] for p in written for r in rows[int(p[5:10]) * 4 : int(p[5:10]) * 4 + 4]}
    assert not (resent & done_prompts)
    assert read_table(out) == read_table(ref)


def run_cli(*args, timeout=300):
    res = subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYBRIDLLM_NO_PROGRESS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_cli_score_train_evaluate_with_engine_ray(ray_cluster, mmlu_slice, tmp_path):
    """The commands users type: each stage with --engine ray gives what it gives without."""
    from .conftest import LARGE, SMALL

    ray_args = ["--engine", "ray", "--ray-address", ray_cluster, "--workers", "2", "--shard-rows", "64"]
    rows = gsm8k(12)
    for r in rows:
        r["responses"] = {"m": [f"#### {r['reference']}", "#### 1"]}
    write_table(rows, tmp_path / "resp.jsonl")
    run_cli("score", tmp_path / "resp.jsonl", "--metric", "exact-match", "--output", tmp_path / "s_local.jsonl")
    run_cli(
        "score",
        tmp_path / "resp.jsonl",
        "--metric",
        "exact-match",
        "--output",
        tmp_path / "s_ray.jsonl",
        *ray_args,
        "--work-dir",
        tmp_path / "score-shards",
    )
    assert read_table(tmp_path / "s_ray.jsonl") == read_table(tmp_path / "s_local.jsonl")

    common = ["--small", SMALL, "--large", LARGE, "--labels", "det"]
    run_cli("train", mmlu_slice, *common, "--output", tmp_path / "r_local")
    res = run_cli("train", mmlu_slice, *common, "--output", tmp_path / "r_ray", *ray_args)
    # 400 rows = 337 train + 63 validation; each train prompt also embedded in 2 filler-augmented copies
    assert "ray embedding pass: 1074 texts" in res.stderr
    va = json.loads((tmp_path / "r_local" / "config.json").read_text())["validation_metrics"]
    vb = json.loads((tmp_path / "r_ray" / "config.json").read_text())["validation_metrics"]
    assert va == vb
    run_cli("evaluate", tmp_path / "r_ray", mmlu_slice, "--json", tmp_path / "e_local.json")
    run_cli("evaluate", tmp_path / "r_ray", mmlu_slice, "--json", tmp_path / "e_ray.json", *ray_args)
    assert json.loads((tmp_path / "e_ray.json").read_text()) == json.loads((tmp_path / "e_local.json").read_text())
    res = subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", "evaluate", tmp_path / "r_ray", mmlu_slice, "--work-dir", tmp_path],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "--work-dir need --engine ray" in res.stderr


def test_collect_with_a_local_model_in_an_actor_pool(ray_cluster, tmp_path):
    """Local GGUF backends run in actors (the model loads once per actor, with the CPUs Ray gave
    it); the table equals the in-process engine's for the same seeds."""
    import asyncio

    from hybridllm.backends import LocalBackend
    from hybridllm.engine.jobs import collect_ray
    from hybridllm.stages.collect import collect_async

    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(["One, two,", "Paris is", "Water is", "Dogs are"])]
    params = SamplingParams(temperature=0.8, max_tokens=8)
    local, _ = asyncio.run(
        collect_async(rows, {"tiny": LocalBackend("gemma-3-270m", n_threads=1)}, tmp_path / "l.jsonl", 2, params, 9)
    )
    on_ray, stats = collect_ray(
        rows, {"tiny": "gemma-3-270m"}, tmp_path / "r.jsonl", 2, params, 9, ray_opts(tmp_path, shard_rows=2)
    )
    assert stats.shards == 2 and stats.items == 4  # prompts
    assert stats.tokens == sum(sum(r["meta"]["completion_tokens"]["tiny"]) for r in local) > 0
    assert on_ray == local and all(len(r["responses"]["tiny"]) == 2 for r in on_ray)
