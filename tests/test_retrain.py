"""Retraining from traffic (hybridllm.model.retrain, `hybridllm retrain`): rows from the outcomes log
with their weights, the recent held-out slice never trained on, the gate that promotes only a
measurably better challenger, and the atomic promotion of a router slot.

Traffic is real MMLU-Pro rows (the two conftest models' real scores) written as a server writes its
outcomes log; a "poisoned" stretch swaps the two models' scores, the way a broken judge would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hybridllm.errors import UsageError
from hybridllm.model.retrain import (
    RetrainOptions,
    promote,
    prompt_key,
    retrain,
    split_recent,
    traffic_rows,
    weighted,
)
from hybridllm.stages.outcomes import OutcomesLog, read_outcomes
from hybridllm.tables.format import TableError

from .conftest import LARGE, MMLU, SMALL
from .helpers.cli import run


def _mmlu(skip: int, n: int) -> list[dict]:
    rows = sorted((json.loads(line) for line in MMLU.open()), key=lambda r: len(r["prompt"]))
    return rows[skip : skip + n]


STEM = {"math", "physics", "chemistry", "engineering", "computer science"}


def _by_subject(row: dict) -> tuple[float, float]:
    """A stand-in judge with a rule a router can learn: the small model fails STEM questions and
    answers the rest as well as the large one."""
    return (0.0 if row["meta"]["category"] in STEM else 1.0), 1.0


def _mmlu_scores(row: dict) -> tuple[float, float]:
    return row["quality"][SMALL][0], row["quality"][LARGE][0]


def _write_log(path: Path, rows: list[dict], poisoned: int = 0, weight: float = 20.0, judge=_mmlu_scores) -> Path:
    """An outcomes log as a server writes it: a request record and its shadow pair per request,
    scored by ``judge``; the first ``poisoned`` pairs carry the two models' scores swapped."""
    log = OutcomesLog(path)
    for i, r in enumerate(rows):
        qs, ql = judge(r)
        if i < poisoned:
            qs, ql = ql, qs
        req = {"type": "request", "id": r["id"], "model": LARGE, "prompt": r["prompt"]}
        shadow = {"type": "shadow", "id": r["id"], "served": LARGE, "other": SMALL, "q": {SMALL: qs, LARGE: ql},
                  "scores": [0.5], "weight": weight}  # fmt: skip
        log.append(req, shadow)
    log.close()
    return path


def test_rows_keep_log_order_and_weights_and_the_held_out_slice_is_the_most_recent(tmp_path):
    rows = _mmlu(400, 50)
    log = _write_log(tmp_path / "o.jsonl", rows)
    with log.open("a") as fh:  # a feedback-only request: one model's score, not a training row
        fh.write(json.dumps({"type": "request", "id": "fb-only", "model": SMALL, "prompt": "hi"}) + "\n")
        fh.write(json.dumps({"type": "feedback", "id": "fb-only", "score": 1.0}) + "\n")
    got, skipped = traffic_rows(read_outcomes(log), [SMALL, LARGE])
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    assert skipped["missing_model_scores"] == 1
    assert {r["meta"]["weight"] for r in got} == {20.0}
    train, held, dropped = split_recent(got, 0.2)
    assert [r["id"] for r in held] == [r["id"] for r in rows[-10:]] and dropped == 0
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    # weights relative to the lightest: a pair drawn at a third of the rate counts three times
    got[0]["meta"]["weight"], got[1]["meta"]["weight"] = 60.0, 2000.0
    copies = weighted(got[:3])
    assert [r["id"] for r in copies].count(got[0]["id"]) == 3
    assert [r["id"] for r in copies].count(got[1]["id"]) == 20  # capped: one pair never swamps the table


def test_a_prompt_the_gate_holds_out_never_trains_the_challenger(tmp_path):
    """Traffic repeats prompts: an earlier request with a held-out request's prompt (a string or
    the same message list) is dropped from training, so the gate never scores a seen prompt."""
    rows = _mmlu(400, 30)
    rows[3]["prompt"] = rows[-1]["prompt"]  # the same text asked again later
    msgs = [{"role": "user", "content": "same conversation"}]
    rows[5]["prompt"], rows[-2]["prompt"] = msgs, [dict(m) for m in msgs]
    got, _ = traffic_rows(read_outcomes(_write_log(tmp_path / "o.jsonl", rows)), [SMALL, LARGE])
    train, held, dropped = split_recent(got, 0.2)
    assert len(held) == 6 and dropped == 2 and len(train) == 22
    assert {r["id"] for r in train}.isdisjoint({rows[3]["id"], rows[5]["id"]})
    held_prompts = {prompt_key(r["prompt"]) for r in held}
    assert not any(prompt_key(r["prompt"]) in held_prompts for r in train)


def test_feedback_replaces_the_served_models_judge_score_only_when_asked(tmp_path):
    rows = _mmlu(400, 3)
    log = _write_log(tmp_path / "o.jsonl", rows)
    with log.open("a") as fh:
        fh.write(json.dumps({"type": "feedback", "id": rows[0]["id"], "score": 0.25}) + "\n")
    records = read_outcomes(log)
    plain, _ = traffic_rows(records, [SMALL, LARGE])
    replaced, _ = traffic_rows(records, [SMALL, LARGE], feedback="replace")
    assert plain[0]["quality"][LARGE] == [rows[0]["quality"][LARGE][0]]
    assert replaced[0]["quality"][LARGE] == [0.25]
    assert replaced[0]["quality"][SMALL] == plain[0]["quality"][SMALL]


@pytest.mark.slow
def test_a_challenger_trained_on_a_broken_judges_pairs_is_not_promoted(tmp_path, router_dir, cache_env):
    """400 pairs whose scores a broken judge swapped, then 100 true ones: the challenger learns the
    wrong lesson, the gate sees it on the recent true pairs, and the champion stays."""
    rows = _mmlu(400, 500)
    log = _write_log(tmp_path / "o.jsonl", rows, poisoned=400)
    res = retrain(log, router_dir, tmp_path / "challenger", options=RetrainOptions(n_boot=300))
    assert res.rows["held_out"] == 100 and res.rows["train"] == 400
    assert res.gate.metric == "apgr"
    assert res.gate.challenger < res.gate.champion
    assert res.gate.promote is False and "champion stays" in res.gate.reason
    report = json.loads(res.report.read_text())
    assert report["gate"]["promote"] is False and report["rows"]["held_out"] == 100
    assert set(report["gate"]["at_knob"]) == {"champion", "challenger"}


@pytest.mark.slow
def test_the_cli_promotes_a_better_challenger_into_the_slot_atomically(tmp_path, router_dir, cache_env):
    """A champion trained on a broken judge's scores (the rule inverted) is beaten by one trained on
    the traffic's true scores: the gate's interval clears 0 and the slot is repointed; the old
    artifact is untouched."""
    from hybridllm import TrainOptions, train_router
    from hybridllm.model.head import HeadConfig

    bad_rows = _mmlu(0, 400)
    for r in bad_rows:
        qs, _ = _by_subject(r)
        r["quality"] = {SMALL: [1.0 - qs], LARGE: [1.0]}
    opts = TrainOptions(small=SMALL, large=LARGE, head=HeadConfig(members=2, epochs=5, extra=["log_tokens"]))
    train_router(bad_rows, opts, tmp_path / "v0", show_progress=False)
    slot = tmp_path / "current"
    os.symlink("v0", slot)
    log = _write_log(tmp_path / "o.jsonl", _mmlu(400, 700), judge=_by_subject)
    proc = run("retrain", str(slot), str(log), "--output", str(tmp_path / "v1"), "--promote", str(slot),
               "--n-boot", "300")  # fmt: skip
    shown = json.loads(proc.stdout)
    assert shown["promote"] is True and shown["diff_ci95"][0] > 0, proc.stderr
    assert slot.resolve() == (tmp_path / "v1").resolve()
    assert (tmp_path / "v0" / "config.json").is_file()
    assert "promoted" in proc.stderr


def test_bad_input_is_one_line_naming_the_place(tmp_path, router_dir):
    log = tmp_path / "o.jsonl"
    log.write_text('{"type": "request", "id": "a", "model": "m"}\nnot json\n')
    with pytest.raises(TableError, match=r"o\.jsonl:2: not a JSON record"):
        retrain(log, router_dir, tmp_path / "c")
    few = _write_log(tmp_path / "few.jsonl", _mmlu(400, 30))
    with pytest.raises(TableError, match="needs >= 20 held out"):
        retrain(few, router_dir, tmp_path / "c")
    with pytest.raises(UsageError, match="holdout"):
        RetrainOptions(holdout=1.5)
    proc = run("retrain", str(router_dir), str(few), "--output", str(tmp_path / "c"), "--feedback", "maybe", ok=False)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "feedback" in proc.stderr


def test_promote_refuses_a_plain_directory_and_a_non_router(tmp_path, router_dir):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match="not a router slot"):
        promote(plain, router_dir)
    with pytest.raises(UsageError, match="not a router directory"):
        promote(tmp_path / "slot", tmp_path)
    target = promote(tmp_path / "slot", router_dir)
    assert (tmp_path / "slot").resolve() == target == Path(router_dir).resolve()
