"""Cross-validation: every row scored once, by a router that never saw it."""

import json

import numpy as np
import pytest

from hybridllm.model.crossval import cross_validate
from hybridllm.model.fit import TrainOptions, train_router
from hybridllm.model.router import Router
from hybridllm.tables.format import TableError, read_table, split_rows

from .conftest import LARGE, SMALL
from .test_cli import run


def test_out_of_fold_scores_come_from_the_other_folds(mmlu_slice, cache_env, tmp_path):
    rows = read_table(mmlu_slice)
    opts = TrainOptions(small=SMALL, large=LARGE)
    res = cross_validate(rows, opts, folds=3, salt="t")
    assert [r["id"] for r in res.rows] == [r["id"] for r in rows]  # table order, every row once
    assert res.report["n"] == len(rows) and len(res.report["per_fold"]) == 3
    assert sum(p["n"] for p in res.report["per_fold"]) == len(rows)
    # fold 1, rebuilt by hand: trained on folds 0 and 2 with seed + 1, it gives the same scores
    parts = split_rows(rows, [1 / 3] * 3, "t")
    train_router([*parts[0], *parts[2]], TrainOptions(small=SMALL, large=LARGE, seed=1), tmp_path / "r1")
    by_id = dict(zip([r["id"] for r in res.rows], res.scores, strict=True))
    expect = Router(tmp_path / "r1").score([r["prompt"] for r in parts[1]])
    np.testing.assert_allclose([by_id[r["id"]] for r in parts[1]], expect, rtol=1e-6)
    # the pooled metrics are the section-5 metrics of the pooled scores
    assert res.report["router"]["apgr"] is not None and res.report["oracle"]["apgr"] > res.report["router"]["apgr"]
    # the default point out of fold: each row decided at the threshold of the router that did not see it
    thr = {f: p["operating_point"]["threshold"] for f, p in enumerate(res.report["per_fold"])}
    fold_of = {r["id"]: f for f, part in enumerate(split_rows(rows, [1 / 3] * 3, "t")) for r in part}
    small = [by_id[r["id"]] >= thr[fold_of[r["id"]]] for r in res.rows]
    op = res.report["operating_point"]
    assert op["realised"]["cost_advantage"] == pytest.approx(np.mean(small) * 100)
    assert op["knob"] == "max_quality_drop=1%" and "ci95" in res.report and "baselines" in res.report


def test_too_many_folds_is_a_clear_error(mmlu_slice):
    rows = read_table(mmlu_slice)[:3]
    with pytest.raises(TableError, match="cannot fill 5 folds"):
        cross_validate(rows, TrainOptions(small=SMALL, large=LARGE), folds=5)
    with pytest.raises(ValueError, match="at least 2"):
        cross_validate(rows, TrainOptions(small=SMALL, large=LARGE), folds=1)


def test_cli(mmlu_slice, cache_env, tmp_path):
    rep_path, pred = tmp_path / "cv.json", tmp_path / "oof.jsonl"
    proc = run(
        "crossval", str(mmlu_slice), "--small", SMALL, "--large", LARGE, "--folds", "2",
        "--json", str(rep_path), "--predictions", str(pred), "--plot", str(tmp_path / "cv.png"),
    )  # fmt: skip
    rep = json.loads(rep_path.read_text())
    assert rep["folds"] == 2 and rep["n"] == 400 and set(rep) >= {"router", "random", "oracle", "per_fold"}
    ids = [json.loads(line)["id"] for line in pred.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 400
    assert (tmp_path / "cv.png").stat().st_size > 10_000
    assert "2-fold cross-validation" in proc.stdout and "per-fold APGR" in proc.stdout
    assert "each fold router's own, out of fold" in proc.stdout and rep["operating_point"]["realised"]
