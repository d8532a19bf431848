"""The CLI end to end, as a user runs it (subprocesses), on a real slice of ../shared/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import LARGE, SMALL
from .helpers.cli import run

pytestmark = pytest.mark.slow  # the CLI in subprocesses, training a router


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, cache_env, mmlu_slice):
    out = tmp_path_factory.mktemp("cli") / "router"
    proc = run(
        "train",
        str(mmlu_slice),
        "--small",
        SMALL,
        "--large",
        LARGE,
        "--output",
        str(out),
        "--labels",
        "prob",
        "--max-length",
        "128",
        "--members",
        "2",
        "--epochs",
        "8",
        "--seed",
        "3",
        "--no-knn",
    )
    assert "saved router to" in proc.stdout
    # --no-knn: no memory member, so a version-1 artifact that older readers load unchanged
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format_version"] == 3 and cfg["head"]["knn"] is False and "knn" not in cfg["head"]["training"]
    return out


def test_evaluate_writes_contract_json_predictions_and_plot(artifact, mmlu_slice, tmp_path):
    j, p, png = tmp_path / "r.json", tmp_path / "p.jsonl", tmp_path / "c.png"
    proc = run(
        "evaluate",
        str(artifact),
        str(mmlu_slice),
        "--json",
        str(j),
        "--predictions",
        str(p),
        "--plot",
        str(png),
    )
    assert "router" in proc.stdout and "oracle" in proc.stdout
    rep = json.loads(j.read_text())
    assert {"n", "small", "large", "Q_small", "Q_large", "router", "random", "oracle"} <= set(rep)
    assert rep["n"] == 400 and rep["small"] == SMALL and rep["large"] == LARGE
    assert set(rep["router"]["quality_drop_at_cost_advantage"]) == {"10", "20", "40", "60"}
    assert set(rep["oracle"]["cost_advantage_at_quality_drop"]) == {"0", "0.5", "1", "2", "5"}
    assert rep["random"]["apgr"] == pytest.approx(0.5)
    assert len(rep["router"]["curve"]["quality"]) == 401
    preds = [json.loads(line) for line in p.read_text().splitlines()]
    assert len(preds) == 400 and set(preds[0]) == {"id", "score"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_and_save_changes_default(artifact, mmlu_slice, tmp_path):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(artifact, d)
    proc = run("calibrate", str(d), str(mmlu_slice), "--cost-advantage", "40", "--save")
    point = json.loads(proc.stdout)
    assert abs(point["cost_advantage"] - 40) < 2
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["default_operating_point"] == {"kind": "cost_advantage", "value": 40.0}
    proc = run("calibrate", str(d), str(mmlu_slice), "--max-quality-drop", "2")
    assert json.loads(proc.stdout)["quality_drop"] <= 2


def test_route_prints_decision(artifact):
    d = json.loads(run("route", str(artifact), "What is 2+2?", "--threshold", "0").stdout)
    assert d["model"] == SMALL and d["threshold"] == 0
    d = json.loads(run("route", str(artifact), "What is 2+2?", "--cost-advantage", "0").stdout)
    assert d["model"] == LARGE
    d = json.loads(run("route", str(artifact), "What is 2+2?").stdout)
    assert d["knob"].startswith("default")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["route", "{art}", "x", "--threshold", "0.2", "--cost-advantage", "3"], "at most one quality knob"),
        (
            ["train", "{bad}", "--small", "a", "--large", "b", "--output", "{tmp}/o"],
            "bad.jsonl:2: quality.a[0]",
        ),
        (
            ["train", "{slice}", "--small", SMALL, "--large", "nope", "--output", "{tmp}/o"],
            "no row has quality",
        ),
        (["evaluate", "{tmp}", "{slice}"], "not a router artifact"),
        (["calibrate", "{art}", "{slice}"], "exactly one of"),
        (
            ["train", "{slice}", "--small", "a", "--large", "b", "--output", "{tmp}/o", "--labels", "x"],
            "Invalid value",
        ),
    ],
)
def test_errors_are_one_line_and_nonzero(artifact, mmlu_slice, tmp_path, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "1", "prompt": "x", "quality": {"a": [1], "b": [0]}}\n'
        '{"id": "2", "prompt": "y", "quality": {"a": ["x"], "b": [0]}}\n'
    )
    fmt = {"art": str(artifact), "bad": str(bad), "slice": str(mmlu_slice), "tmp": str(tmp_path)}
    proc = run(*[a.format(**fmt) for a in args], ok=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]


def test_chat_answers_through_the_router(artifact):
    from .helpers.fake_openai import FakeOpenAI

    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: f"small: {p}"
        l_up.reply = lambda p: f"large: {p}"
        args = [
            "chat",
            "What is 2+2?",
            "--router",
            str(artifact),
            "--small",
            f"s@{s_up.url}",
            "--large",
            f"l@{l_up.url}",
        ]
        p = run(*args, "--threshold", "0")
        assert p.stdout.strip() == "small: What is 2+2?" and SMALL in p.stderr and "threshold 0.000" in p.stderr
        assert s_up.requests[-1]["stream"] is True  # the answer is streamed to the terminal as it comes
        p = run(*args, "--cost-advantage", "0")
        assert p.stdout.strip() == "large: What is 2+2?" and LARGE in p.stderr
        inter = subprocess.run(
            [sys.executable, "-m", "hybridllm.cli", *args[:1], *args[2:], "--threshold", "0"],
            input="first q\nsecond q\n\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert inter.returncode == 0 and "small: first q" in inter.stdout and "small: second q" in inter.stdout


def test_version_and_help_in_pipeline_order():
    assert run("--version").stdout.strip().startswith("hybridllm ")
    helptext = run("--help").stdout
    order = ["collect", "score", "stats", "split", "train", "evaluate", "crossval", "calibrate", "route", "serve"]
    positions = [helptext.index(f" {c} ") for c in order]
    assert positions == sorted(positions)
    version = next(line for line in helptext.splitlines() if "--version" in line)
    assert "<bool>" not in version and "print the version and exit" in version  # a flag takes no value
    usage = run("train", "--no-such-option", ok=False)
    assert usage.returncode == 2 and usage.stderr.startswith("error: No such option: --no-such-option")


def test_metric_choices_match_the_library():
    from hybridllm.cli._common import Metric
    from hybridllm.stages.score import available_metrics

    assert sorted(m.value for m in Metric) == available_metrics()
    proc = run("score", "x.jsonl", "--metric", "bleu", "--output", "y.jsonl", ok=False)
    assert proc.returncode != 0 and "exact-match" in proc.stderr and "judge" in proc.stderr


def test_select_choices_match_the_library():
    from hybridllm.cli._common import Select
    from hybridllm.model.head_fit import SELECTION_METRICS

    assert [s.value for s in Select] == list(SELECTION_METRICS)


def test_every_option_is_described():
    """No option of any command without a help text (the defaults alone do not say what a knob does)."""
    from typer.main import get_command

    from hybridllm.cli import app

    root = get_command(app)
    missing = [
        f"{name} {p.opts[0]}"
        for name, cmd in root.commands.items()
        for p in cmd.params
        if getattr(p, "opts", None) and p.opts[0].startswith("--") and p.opts[0] != "--help" and not p.help
    ]
    assert missing == []


def test_progress_in_a_log_file_is_whole_lines(tmp_path):
    """Not a terminal: occasional complete lines, no carriage-return frames."""
    from .helpers.fake_openai import FakeOpenAI

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"what is {i}+1?"}) + "\n" for i in range(30)))
    with FakeOpenAI() as up:
        proc = subprocess.run(
            [sys.executable, "-m", "hybridllm.cli", "collect", str(prompts), "--model", f"a=m@{up.url}",
             "--samples", "2", "--output", str(tmp_path / "t.jsonl")],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HYBRIDLLM_NO_PROGRESS": "0"},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "collect: 60/60 sample (100%)" in proc.stderr


def test_chat_without_upstreams_says_what_it_needs(tmp_path, artifact):
    proc = run("chat", "hi", "--router", str(artifact), ok=False)
    assert proc.returncode != 0 and "give --small and --large" in proc.stderr


def test_train_with_head_features(mmlu_slice, cache_env, tmp_path):
    """--features log_tokens,head_embed: the router also reads the prompt's first words alone, a
    block of its inputs that appended text cannot move."""
    import numpy as np

    from hybridllm import Router
    from hybridllm.features.featurize import HEAD_WORDS, featurize

    out = tmp_path / "r"
    run("train", str(mmlu_slice), "--small", SMALL, "--large", LARGE, "--output", str(out),
        "--features", "log_tokens,head_embed", "--members", "2")  # fmt: skip
    router = Router(out)
    assert router.extra == ["log_tokens", "head_embed"]
    prompt = " ".join(f"word{i}" for i in range(HEAD_WORDS)) + " What is the capital of France?"
    x = featurize(router.encoder, [prompt, prompt + " (A) Paris (B) Rome (C) Oslo (D) Bern"], router.extra)
    dim = router.encoder.dim
    assert x.shape[1] == 2 * dim + 1
    assert np.array_equal(x[0, dim + 1 :], x[1, dim + 1 :]) and not np.array_equal(x[0, :dim], x[1, :dim])
    d = json.loads(run("route", str(out), "What is 2+2?").stdout)
    assert d["model"] in (SMALL, LARGE) and 0 <= d["score"] <= 1
    bad = run("train", str(mmlu_slice), "--small", SMALL, "--large", LARGE, "--output", str(tmp_path / "x"),
              "--features", "log_tokens,colour", ok=False)  # fmt: skip
    assert bad.returncode != 0 and "--features: expected some of log_tokens, head_embed" in bad.stderr
