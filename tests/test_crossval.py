"""Cross-validation: every row scored once, by a router that never saw it."""

import json
import re

import numpy as np
import pytest

from hybridllm.model.crossval import cross_validate
from hybridllm.model.fit import TrainOptions, train_router
from hybridllm.model.router import Router
from hybridllm.tables.format import TableError, read_table, split_rows

from .conftest import LARGE, SMALL
from .helpers.cli import run

pytestmark = pytest.mark.slow  # trains a router per fold


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


def test_a_table_too_small_for_its_folds_is_refused_before_any_training(mmlu_slice):
    """30 rows in 5 folds once trained folds for 9-41 s, then failed with "too few rows to train (19
    train, 3 validation)". Now the folds are checked first (no fold starts) and the error says what
    to change; a fold count it offers passes the same check."""
    opts = TrainOptions(small=SMALL, large=LARGE)
    started: list[str] = []
    with pytest.raises(TableError) as refused:
        cross_validate(read_table(mmlu_slice)[:30], opts, folds=5, progress=started.append)
    msg = str(refused.value)
    assert started == []  # refused before the first fold began
    assert msg.startswith("30 rows are too few for 5-fold cross-validation: fold ")
    assert ">= 10 training and >= 5 validation rows" in msg and "no fold count from 2 to 20 works" in msg
    assert "5 folds need a table of at least 32 rows" in msg

    rows = read_table(mmlu_slice)[:40]  # too few for 5 folds, enough for more, smaller ones
    with pytest.raises(TableError) as refused:
        cross_validate(rows, opts, folds=5, progress=started.append)
    assert started == []
    offered = re.search(r"; --folds (\d+) works with these rows;", str(refused.value))
    assert offered is not None, refused.value
    folds = int(offered.group(1))

    class Began(Exception):
        pass

    def stop(line: str) -> None:
        raise Began(line)

    with pytest.raises(Began, match=f"fold 1/{folds}: train on"):  # past the check, the first fold begins
        cross_validate(rows, opts, folds=folds, progress=stop)


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
