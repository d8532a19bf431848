"""`evaluate` a user can trust: the saved operating point realised on the table, baselines,
bootstrap intervals, and a warning when the table cannot separate the router from random."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridllm import Router, default_router_dir
from hybridllm.evaluate.bootstrap import bootstrap_pair
from hybridllm.evaluate.metrics import evaluate_scores, expected_quality
from hybridllm.evaluate.report import breakdown_by_meta, prompt_lengths
from hybridllm.tables.format import read_table

from .conftest import REPO
from .helpers.cli import run

pytestmark = pytest.mark.slow  # the CLI in subprocesses

TEST_SPLIT = REPO / "data/default-pair/split/test.jsonl"


def test_evaluate_json_on_the_default_pair_has_operating_point_and_intervals(tmp_path, cache_env):
    j = tmp_path / "r.json"
    proc = run("evaluate", str(default_router_dir()), str(TEST_SPLIT), "--json", str(j), "--bootstrap", "400")
    assert "operating point max_quality_drop=1%" in proc.stdout and f"wrote {j}" in proc.stderr
    rep = json.loads(j.read_text())
    router = Router(default_router_dir())
    rows = read_table(TEST_SPLIT)
    scores = router.score([r["prompt"] for r in rows])
    qs, ql = expected_quality(rows, router.small, router.large)
    op = rep["operating_point"]
    # the realised point is what the saved threshold does on this table, recomputed here
    small = scores >= op["threshold"]
    assert op["realised"]["cost_advantage"] == pytest.approx(small.mean() * 100)
    q = np.where(small, qs, ql).mean()
    assert op["realised"]["quality_drop"] == pytest.approx((ql.mean() - q) / ql.mean() * 100)
    assert op["promised"]["cost_advantage"] is not None and op["knob"] == "max_quality_drop=1%"
    ci = rep["ci95"]
    lo, hi = ci["apgr"]
    assert lo < rep["router"]["apgr"] < hi and hi - lo > 0.01
    assert ci["router_minus_random_apgr"] == pytest.approx([lo - 0.5, hi - 0.5])
    for k, (a, b) in ci["cost_advantage_at_quality_drop"].items():
        assert a <= b and 0 <= a <= 100, k
    ca_lo, ca_hi = ci["operating_point"]["cost_advantage"]
    assert ca_lo <= op["realised"]["cost_advantage"] <= ca_hi
    assert set(rep["baselines"]) == {"shorter_prompts_to_small", "longer_prompts_to_small"}
    # the two length baselines are one ordering reversed: their areas sum to 1 (ties aside)
    b = rep["baselines"]
    assert b["shorter_prompts_to_small"]["apgr"] + b["longer_prompts_to_small"]["apgr"] == pytest.approx(1, abs=0.02)


def test_a_table_too_small_to_separate_router_from_random_is_warned(tmp_path, cache_env):
    rows = read_table(TEST_SPLIT)[:12]
    small_table = tmp_path / "tiny.jsonl"
    small_table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    j = tmp_path / "r.json"
    proc = run("evaluate", str(default_router_dir()), str(small_table), "--json", str(j), "--bootstrap", "200")
    rep = json.loads(j.read_text())
    assert rep["warnings"] and "too few to separate the router from random" in rep["warnings"][0]
    assert "warning:" in proc.stderr and rep["ci95"]["router_minus_random_apgr"][0] <= 0


def test_bootstrap_interval_covers_the_truth_for_a_constant_router():
    """A router with one score for every query is random routing: its APGR is 0.5 on every
    resample, so the interval is [0.5, 0.5]; an informative score moves the interval above 0.5."""
    rng = np.random.default_rng(3)
    qs = (rng.random(300) < 0.4).astype(float)
    ql = (rng.random(300) < 0.7).astype(float)
    flat = bootstrap_pair(np.full(300, 0.3), qs, ql, n_boot=200)
    assert flat.ci95["apgr"] == pytest.approx([0.5, 0.5])
    good = bootstrap_pair(qs - ql + rng.normal(0, 0.3, 300), qs, ql, n_boot=200)
    assert good.ci95["apgr"][0] > 0.6 and good.band.shape == (3, 101)
    assert np.all(good.band[0] <= good.band[2])


def test_breakdown_by_meta_field_matches_per_group_evaluation():
    rows = read_table(TEST_SPLIT)
    router = Router(default_router_dir())
    scores = router.score([r["prompt"] for r in rows])
    qs, ql = expected_quality(rows, router.small, router.large)
    parts = breakdown_by_meta(rows, scores, qs, ql, 0.9)
    assert "category" in parts and "solution" not in parts  # free text is not a breakdown
    for e in parts["category"]:
        idx = [i for i, r in enumerate(rows) if str((r.get("meta") or {}).get("category")) == e["value"]]
        assert e["n"] == len(idx)
        rep = evaluate_scores(scores[idx], qs[idx], ql[idx], with_curve=False)
        assert e["apgr"] == rep["router"]["apgr"]
        assert e["operating_point"]["cost_advantage"] == pytest.approx(np.mean(scores[idx] >= 0.9) * 100)
    assert len(prompt_lengths(rows)) == len(rows)
