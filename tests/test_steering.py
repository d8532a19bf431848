"""Steer checks: flip rates of a router's decisions under appended text (library and CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hybridllm.evaluate.steering import FAMILIES, flip_rates, steer_check, with_suffix

from .conftest import REPO


class KeywordRouter:
    """Scores 1 (small suffices) when the last user text says "easy": a router one word steers."""

    def score(self, prompts):
        def text(p):
            return p if isinstance(p, str) else [m["content"] for m in p if m["role"] == "user"][-1]

        return np.array([1.0 if "easy" in text(p) else 0.0 for p in prompts])


def test_flip_rates_count_each_direction_against_its_own_base():
    base = np.array([True, True, True, False, False])  # 3 small-routed, 2 large-routed
    moved = np.array([True, False, False, True, False])
    assert flip_rates(base, moved) == {"to_large": 2 / 3, "to_small": 1 / 2}
    assert flip_rates(base, base) == {"to_large": 0.0, "to_small": 0.0}


def test_a_router_one_word_steers_is_caught_by_that_family_only():
    prompts = ["What is 17 * 23?", "Prove that there are infinitely many primes.", "This is easy: 1 + 1?"]
    report = steer_check(KeywordRouter(), prompts, 0.5, tries=5, words=["apple", "river", "stone"])
    assert report.n == 3 and report.to_small_share == pytest.approx(1 / 3)
    assert report.families["claim: easy"] == {"to_large": 0.0, "to_small": 1.0}
    assert report.over(0.10) == ["claim: easy"]
    assert report.max_flip == 1.0
    assert set(report.families) == {*FAMILIES, "earlier turn", "random search (5 tries)"}
    assert report.as_dict()["families"]["claim: hard"] == {"to_large": 0.0, "to_small": 0.0}


def test_chat_prompts_get_the_suffix_on_their_last_user_turn():
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "q"},
    ]
    got = with_suffix(chat, " easy")
    assert got[-1]["content"] == "q easy" and got[0]["content"] == "hi"
    assert chat[-1]["content"] == "q"  # the table's prompt is left as it was
    report = steer_check(KeywordRouter(), [chat], 0.5, tries=0)
    assert report.families["claim: easy"]["to_small"] == 1.0
    with pytest.raises(ValueError, match="user turn"):
        with_suffix([{"role": "system", "content": "s"}], " x")
    with pytest.raises(ValueError, match="at least one prompt"):
        steer_check(KeywordRouter(), [], 0.5)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", "steer-check", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
        cwd=REPO,
    )


@pytest.mark.slow
def test_steer_check_cli_on_the_shipped_router_gates_on_its_worst_family(tmp_path, cache_env):
    """The shipped router on 40 held-out prompts of its own pair: the table of flip rates, the JSON, and
    --fail-above as a deployment gate (exit 1 and one line naming the families over the limit)."""
    base = ["src/hybridllm/routers/default", "data/default-pair/split/test.jsonl", "--n", "40", "--tries", "3"]
    out = tmp_path / "flips.json"
    proc = _cli(*base, "--cost-advantage", "30", "--json", str(out), "--fail-above", "100")
    assert proc.returncode == 0, proc.stderr
    assert "option list A-J" in proc.stdout and "worst family" in proc.stdout
    got = json.loads(out.read_text())
    assert got["n"] == 40 and got["operating_point"] == "cost_advantage=30%"
    assert len(got["families"]) == len(FAMILIES) + 2
    rates = [r for v in got["families"].values() for r in v.values()]
    assert all(0.0 <= r <= 1.0 for r in rates) and got["max_flip"] == max(rates)
    assert got["max_flip"] > 0, "appended option lists move this router's prompts (README, robustness)"
    worst = 100 * got["max_flip"]
    assert _cli(*base, "--cost-advantage", "30", "--fail-above", f"{worst:.6f}").returncode == 0
    proc = _cli(*base, "--cost-advantage", "30", "--fail-above", f"{worst - 0.001:.6f}")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "flip more than" in line
    missing = _cli("src/hybridllm/routers/default", "nope.jsonl")
    assert missing.returncode == 1 and "nope.jsonl" in missing.stderr.strip().splitlines()[-1]
