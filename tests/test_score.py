"""Scoring metrics on real examples with hand-checked expected values."""

import json

import pytest

from hybridllm.stages.score import (
    choice,
    embedding_similarity_batch,
    exact_match,
    extract_choice,
    extract_final_number,
    rouge_l,
    score_rows,
)
from hybridllm.tables.format import TableError

from .conftest import SHARED


def gsm8k_rows(n=50):
    with (SHARED / "gsm8k" / "test.jsonl").open() as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def test_gsm8k_reference_solutions_score_one_and_wrong_numbers_zero():
    rows = gsm8k_rows()
    assert all(exact_match(r["meta"]["solution"], r) == 1.0 for r in rows)
    # the worked solution with its final answer changed must score 0
    assert all(exact_match(r["meta"]["solution"].rsplit("####", 1)[0] + "#### 99999", r) == 0.0 for r in rows)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Janet sells 9 eggs, 9 * 2 = 18. The answer is $18.", "18"),
        ("So she makes \\boxed{18} dollars.", "18"),
        ("16 - 3 - 4 = 9 eggs; 9 * 2 = $18 per day", "18"),
        ("The total is 1,234.50 dollars", "1234.5"),
        ("#### 72\nextra 5 at the end", "72"),
        ("no numbers here", None),
    ],
)
def test_final_number_extraction(response, expected):
    assert extract_final_number(response) == expected


def test_exact_match_is_numeric():
    row = {"id": "x", "prompt": "p", "reference": "18"}
    assert exact_match("The answer is 18.00", row) == 1.0
    assert exact_match("The answer is 18.5", row) == 0.0
    assert exact_match("it is 180", row) == 0.0


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("Let's think step by step. ... The answer is (E).", "E"),
        ("Answer: C", "C"),
        ("B) because the sun is a star", "B"),
        ("After eliminating A and D, the answer is (h)", "H"),
        ("I am not sure.", None),
    ],
)
def test_choice_extraction(response, letter):
    assert extract_choice(response) == letter


def test_choice_metric_on_real_mmlu_key():
    row = {"id": "mmlu-pro-1986", "prompt": "...", "reference": "E"}
    assert choice("the answer is (E)", row) == 1.0
    assert choice("the answer is (D)", row) == 0.0


def test_rouge_l_hand_checked():
    row = {"id": "r", "prompt": "p", "reference": "the cat sat on the mat"}
    assert rouge_l("the cat sat on the mat", row) == pytest.approx(1.0)
    # LCS of "the cat sat" vs the reference = 3 tokens: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l("the cat sat", row) == pytest.approx(2 / 3)
    assert rouge_l("dogs bark loudly", row) == 0.0


def test_score_rows_fills_quality_and_needs_reference():
    rows = [{"id": "a", "prompt": "p", "reference": "3", "responses": {"s": ["1+2=3", "4"], "l": ["#### 3"]}}]
    out = score_rows(rows, "exact-match")
    assert out[0]["quality"] == {"s": [1.0, 0.0], "l": [1.0]}
    assert "quality" not in rows[0]  # input rows are not mutated
    with pytest.raises(TableError, match="reference: missing"):
        score_rows([{"id": "b", "prompt": "p", "responses": {"s": ["x"]}}], "exact-match")
    with pytest.raises(ValueError, match="unknown metric"):
        score_rows(rows, "bleu")


@pytest.mark.slow
def test_embedding_similarity_orders_paraphrase_above_unrelated(cache_env):
    row = {"id": "e", "prompt": "p", "reference": "Paris is the capital of France."}
    same, para, other = embedding_similarity_batch(
        [
            ("Paris is the capital of France.", row),
            ("France's capital city is Paris.", row),
            ("Photosynthesis converts light into chemical energy.", row),
        ]
    )
    assert same == pytest.approx(1.0, abs=1e-5)
    assert 0.7 < para < 1.0 and other < 0.3
    out = score_rows(
        [{**row, "responses": {"m": ["Paris is the capital of France.", "bananas"]}}], "embedding-similarity"
    )
    assert out[0]["quality"]["m"][0] == pytest.approx(1.0, abs=1e-5) and out[0]["quality"]["m"][1] < 0.5


def test_judge_over_a_real_http_backend_parses_and_retries():
    from hybridllm.backends import HTTPBackend

    from .helpers.fake_judge import graded, verdict
    from .helpers.fake_openai import FakeOpenAI

    replies = {"good": iter([10]), "bad": iter([None, 1]), "mid": iter([5])}  # None: a reply without a verdict

    def judge(prompt):
        rating = next(replies[graded(prompt, "response")])
        return "hmm, hard to say" if rating is None else verdict(prompt, rating)

    with FakeOpenAI() as up:
        up.reply = judge
        row = {"id": "j", "prompt": "What is 2+2?", "reference": "4", "responses": {"m": ["good", "bad", "mid"]}}
        out = score_rows([row], "judge", judge=HTTPBackend.from_spec(f"judge@{up.url}", backoff_s=0.01))
        assert out[0]["quality"]["m"] == pytest.approx([1.0, 0.0, 4 / 9])
        assert all(b["temperature"] == 0.0 for b in up.requests) and len(up.requests) == 4
        assert graded(up.requests[0]["messages"][0]["content"], "prompt") == "What is 2+2?"
        up.reply = lambda prompt: "no number at all"
        with pytest.raises(ValueError, match="judge gave no VERDICT line"):
            score_rows([row], "judge", judge=HTTPBackend.from_spec(f"judge@{up.url}", backoff_s=0.01))


@pytest.mark.parametrize(
    ("tail", "expected"),
    [  # endings of real Qwen2.5-Coder-0.5B answers to gsm8k-test-0 (reference 18) from data/gsm8k-qwen
        (
            "7. Calculate the total revenue Janet makes every day:\n   \\[\n   \\boxed{18}\n   \\]",
            1.0,
        ),
        ("6. **Write the final answer:**\n   The final answer is:\n   \\[\n   \\boxed{26}\n   \\]", 0.0),
        ("print(total_revenue)\n```\n```output\n18\n```\nThe total revenue ... is \\(\\boxed{18}\\).", 1.0),
    ],
)
def test_exact_match_on_real_local_model_answers(tail, expected):
    assert exact_match(tail, {"id": "gsm8k-test-0", "prompt": "p", "reference": "18"}) == expected


@pytest.mark.slow
def test_custom_rubric_from_the_cli(tmp_path):
    """`score --metric judge --rubric FILE`: the judge sees the user's rubric, filled in; a rubric
    with a typo in a placeholder is refused before any judge call."""
    from hybridllm.stages.judge import judge_prompt
    from hybridllm.tables.format import read_table, write_table

    from .helpers.cli import run
    from .helpers.fake_judge import graded, nonce, verdict
    from .helpers.fake_openai import FakeOpenAI

    table = tmp_path / "t.jsonl"
    write_table([{"id": "a", "prompt": "Name a prime.", "responses": {"m": ["7", "8"]}}], table)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Is {response} a prime number? Question was: {prompt}. Answer {{Rating: N}} from 1 to 10.")
    with FakeOpenAI() as up:
        up.reply = lambda p: verdict(p, 10 if graded(p, "response") == "7" else 1)
        run("score", str(table), "--metric", "judge", "--judge", f"j@{up.url}", "--rubric", str(rubric),
            "--output", str(tmp_path / "s.jsonl"))  # fmt: skip
        sent = [b["messages"][0]["content"] for b in up.requests]
        assert read_table(tmp_path / "s.jsonl")[0]["quality"]["m"] == [1.0, 0.0]
        # the user's rubric, its placeholders filled with the data blocks, inside the judge protocol
        assert sorted(graded(s, "response") for s in sent) == ["7", "8"]
        assert all(s == judge_prompt(rubric.read_text(), "Name a prime.", graded(s, "response"), "", nonce(s))
                   for s in sent)  # fmt: skip
        assert "a prime number? Question was: " in sent[0] and "Answer {Rating: N} from 1 to 10." in sent[0]
        up.requests.clear()
        rubric.write_text("Grade {answer} for {prompt}")
        bad = run("score", str(table), "--metric", "judge", "--judge", f"j@{up.url}", "--rubric", str(rubric),
                  "--output", str(tmp_path / "x.jsonl"), ok=False)  # fmt: skip
        assert bad.returncode == 1 and up.requests == []
        assert bad.stderr.strip() == f"error: {rubric}: rubric: unknown placeholder {{answer}}; use {{prompt}}, " + (
            "{reference}, {response} (a literal brace is {{ or }})"
        )
