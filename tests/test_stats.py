"""`hybridllm stats`: the figures a table gives before any router is trained."""

import json

import pytest

from hybridllm.evaluate.stats import group_key, table_stats
from hybridllm.tables.format import read_table

from .conftest import LARGE, MMLU, SMALL
from .helpers.cli import run

ROWS = [
    # small samples, large samples: hand-checked below
    {"id": "gsm8k-test-1", "prompt": "a", "quality": {"s": [1, 0, 1], "l": [1, 1, 1]}, "meta": {"cat": "x"}},
    {"id": "gsm8k-test-2", "prompt": "b", "quality": {"s": [0, 0, 0], "l": [1, 1, 0]}, "meta": {"cat": "x"}},
    {"id": "mmlu-pro-7", "prompt": "c", "quality": {"s": [1, 1, 1], "l": [0, 0, 1]}, "meta": {"cat": "y"}},
    {"id": "mmlu-pro-9", "prompt": "d", "quality": {"l": [1, 1, 1]}},  # no small: skipped for the pair
]


def test_hand_checked_figures():
    r = table_stats(ROWS, "s", "l", by="id-prefix")
    assert r["models"]["s"] == {
        "rows": 3,
        "samples": 9,
        "quality": pytest.approx(5 / 9),
        "query_quality": pytest.approx((2 / 3 + 0 + 1) / 3),
        "completion_tokens": None,
    }
    assert r["models"]["l"]["rows"] == 4 and r["models"]["l"]["quality"] == pytest.approx(9 / 12)  # 3 + 2 + 1 + 3 of 12
    p = r["pair"]
    assert (p["n"], p["skipped"]) == (3, 1)
    assert p["Q_small"] == pytest.approx(5 / 9) and p["Q_large"] == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)
    # det: first samples 1>=1, 0>=1, 1>=0 → 2/3. prob, pairs (a, b) with s_a >= l_b: row 1 3+0+3 of 9,
    # row 2 (s all 0, l = 1,1,0) 1+1+1 of 9, row 3 (s all 1) 9 of 9
    assert p["small_good_enough_det"] == pytest.approx(2 / 3)
    assert p["small_good_enough_prob"] == pytest.approx((6 / 9 + 3 / 9 + 1) / 3)
    assert p["small_strictly_better"] == pytest.approx(1 / 3)  # only row 3 (1 > 1/3)
    # oracle order: row 3 (+2/3), row 1 (-1/3), row 2 (-2/3). Q with k rows at small: 6/9, 8/9, 7/9, 5/9,
    # so QD ≤ 0 holds up to k = 2 → 66.7 %
    assert p["oracle"]["cost_advantage_at_quality_drop"]["0"] == pytest.approx(200 / 3)
    assert set(r["groups"]) == {"gsm8k-test", "mmlu-pro"}
    assert r["groups"]["mmlu-pro"]["n"] == 2 and r["groups"]["mmlu-pro"]["pair"]["n"] == 1


def test_group_keys():
    assert group_key(ROWS[0], "meta.cat") == "x"
    assert group_key(ROWS[3], "meta.cat") == "(none)"
    assert group_key({"id": "abc"}, "id-prefix") == "abc"
    assert group_key({"id": "q_12"}, "id-prefix") == "q"


@pytest.mark.slow
def test_cli_on_real_table(tmp_path):
    out = tmp_path / "s.json"
    proc = run("stats", str(MMLU), "--small", SMALL, "--large", LARGE, "--by", "meta.category", "--json", str(out))
    rep = json.loads(out.read_text())
    rows = read_table(MMLU)
    assert rep["n"] == len(rows) == 12032
    assert rep["pair"]["Q_large"] == pytest.approx(sum(r["quality"][LARGE][0] for r in rows) / len(rows))
    math = [r for r in rows if r["meta"]["category"] == "math"]
    assert rep["groups"]["math"]["models"][SMALL]["quality"] == pytest.approx(
        sum(r["quality"][SMALL][0] for r in math) / len(math)
    )
    assert f"Q_small {rep['pair']['Q_small']:.4f}" in proc.stdout and "by meta.category" in proc.stdout


@pytest.mark.slow
def test_cli_needs_both_pair_models():
    proc = run("stats", str(MMLU), "--small", SMALL, ok=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --small and --large go together"


@pytest.mark.slow
def test_journal_of_a_running_collection(tmp_path):
    """A journal is read without touching it (its collection may still be writing): the torn last
    line is ignored, batched samples share their batch's wall time."""
    j = tmp_path / "t.jsonl.journal.jsonl"
    recs = [
        {"_settings": {"samples": 2}},
        {"id": "a", "model": "s", "k": 0, "text": "x", "completion_tokens": 10, "latency_s": 2.0},
        {"id": "a", "model": "l", "k": 0, "text": "x", "completion_tokens": 30, "latency_s": 6.0, "batch": 2},
        {"id": "a", "model": "l", "k": 1, "text": "y", "completion_tokens": 50, "latency_s": 6.0, "batch": 2},
    ]
    body = "".join(json.dumps(r) + "\n" for r in recs) + '{"id": "b", "mod'
    j.write_text(body)
    out = tmp_path / "j.json"
    proc = run("stats", str(j), "--json", str(out))
    assert j.read_text() == body  # not truncated
    rep = json.loads(out.read_text())["models"]
    assert rep["s"] == {"samples": 1, "completion_tokens": 10, "seconds": 2.0, "tokens_per_s": 5.0}
    assert rep["l"] == {"samples": 2, "completion_tokens": 80, "seconds": 6.0, "tokens_per_s": pytest.approx(80 / 6)}
    assert "collection in progress" in proc.stdout
