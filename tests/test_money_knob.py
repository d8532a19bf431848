"""The budget knob in money (routing/money_knob.py) and a session's move priced uncached by the budget
hold (routing/live.Hold): pure numbers, a synthetic stream whose answer lengths the artifact's
costs do not know."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hybridllm.routing.knob import resolve_point
from hybridllm.routing.live import Hold
from hybridllm.routing.money import CostModel, Price, cost
from hybridllm.routing.money_knob import MoneyBudget, money_rows, row_shares
from hybridllm.routing.policy import CalibrationError, Fleet, choose, sweep

FLEET = Fleet(("small", "large"), (1.0, 10.0), "large")
PRICES = [Price(1.0, 2.0), Price(10.0, 20.0)]  # a tenth in and out: the artifact's costs 1 and 10
SMALL_ANSWER, LARGE_ANSWER = 300, 100  # the small model is the chatty one on this traffic


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def traffic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores [n, 1], the two models' quality [n, 2] and prompt tokens [n] of a synthetic stream."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, 1))
    q_small = (rng.random(n) < 0.3 + 0.6 * scores[:, 0]).astype(float)
    q_large = np.maximum(q_small, (rng.random(n) < 0.8).astype(float))
    return scores, np.stack([q_small, q_large], axis=1), rng.integers(20, 60, n)


@pytest.fixture(scope="module")
def calibration() -> list[dict[str, Any]]:
    scores, quality, _ = traffic(4000, 1)
    return sweep(scores, quality, FLEET)


def learnt(n: int = 10, prompt: int = 40, prices: list[Price] = PRICES) -> CostModel:
    money = CostModel(prices)
    answers = (SMALL_ANSWER, LARGE_ANSWER)
    for _ in range(n):
        for m in (0, 1):
            money.after(m, usage(prompt, answers[m]), float(prompt))
    return money


def test_a_rows_shares_come_from_the_row_or_for_two_models_from_its_cost_advantage() -> None:
    assert row_shares({"shares": [70.0, 30.0], "cost_advantage": 1.0}, 2) == [70.0, 30.0]
    assert row_shares({"cost_advantage": 25.0}, 2) == [25.0, 75.0]  # an artifact of format 1
    assert row_shares({"cost_advantage": 25.0}, 3) is None
    assert row_shares({"shares": [1.0, 2.0]}, 3) is None


def test_money_rows_weigh_the_shares_by_each_models_typical_cost(calibration) -> None:
    rows = money_rows(calibration, np.array([1.0, 4.0]), 1)
    for r, c in zip(rows, calibration, strict=True):
        assert r["cost"] == pytest.approx((c["shares"][0] * 1.0 + c["shares"][1] * 4.0) / 4.0)
        assert r["threshold"] == c["threshold"] and r["quality_drop"] == c["quality_drop"]
    assert money_rows(calibration, np.array([1.0, 0.0]), 1) == []  # a free reference: no share of it
    assert money_rows(calibration, np.array([np.nan, 4.0]), 1) == []


def test_until_every_model_has_answered_enough_the_budget_is_in_the_artifacts_costs(calibration) -> None:
    money = learnt(n=9)
    knob = MoneyBudget(FLEET, calibration, money)
    thr, row, why = knob.resolve(40)
    assert (thr, row) == resolve_point(calibration, {}, budget=40)[:2]
    assert why == "budget=40% in the artifact's costs (money after 10 answers of each model)"
    money.after(0, usage(40, SMALL_ANSWER), 40.0)
    assert "in the artifact's costs" in knob.resolve(40)[2]  # the large model still has 9
    money.after(1, usage(40, LARGE_ANSWER), 40.0)
    thr, row, why = knob.resolve(40)
    assert knob.source == "money" and why == "budget=40% in money on this traffic (20 answers)"
    assert row is not None and row["cost"] <= 40 and thr != resolve_point(calibration, {}, budget=40)[0]


def test_a_fleet_without_costs_resolves_in_money_at_the_lengths_assumed_so_far(calibration) -> None:
    pair = Fleet(("small", "large"), (1.0, 2.0), "large", costs_given=False)
    knob = MoneyBudget(pair, calibration, CostModel(PRICES))
    _, row, why = knob.resolve(40)
    assert knob.source == "assumed" and why.startswith("budget=40% in money at assumed lengths")
    # the default lengths: the same answer from both models, so the prices' ratio (a tenth) decides
    expected = [r for r in money_rows(calibration, CostModel(PRICES).typical(), 1) if r["cost"] <= 40 + 1e-9]
    best = min(expected, key=lambda r: (r["quality_drop"], r["cost"]))
    assert row is not None and row["cost"] == pytest.approx(best["cost"])
    with pytest.raises(CalibrationError, match="budget needs the models' costs"):
        resolve_point(calibration, {}, budget=40, costs_given=False)  # what it was without prices


def test_a_resolution_is_cached_until_the_typical_costs_move(calibration) -> None:
    money = learnt()
    knob = MoneyBudget(FLEET, calibration, money, every=5)
    first = knob.resolve(30)
    for _ in range(10):  # the same lengths: the costs do not move, the cached resolution stands
        money.after(0, usage(40, SMALL_ANSWER), 40.0)
    assert knob.resolve(30) is first
    for _ in range(200):  # the small model turns terse: its requests cost less, the budget buys more of it
        money.after(0, usage(40, 20), 40.0)
    again = knob.resolve(30)
    assert again is not first and again[1] is not None and first[1] is not None
    assert again[1]["shares"][0] < first[1]["shares"][0] or again[0] != first[0]
    assert knob.state()["source"] == "money" and knob.state()["relative_cost"][1] == 1.0


@pytest.mark.parametrize("bad", [-1.0, 100.5, float("nan")])
def test_a_budget_out_of_range_is_refused(calibration, bad: float) -> None:
    with pytest.raises(CalibrationError, match=r"budget must be within 0\.\.100"):
        MoneyBudget(FLEET, calibration, learnt()).resolve(bad)


def test_prices_for_another_fleet_are_refused(calibration) -> None:
    with pytest.raises(CalibrationError, match="prices for 3 models"):
        MoneyBudget(FLEET, calibration, CostModel([*PRICES, PRICES[0]]))


@pytest.mark.parametrize("budget", [30.0, 50.0])
def test_a_stream_spends_its_budget_in_money_where_the_artifact_costs_miss_it(calibration, budget: float) -> None:
    """Each request priced from its usage (prompt tokens that vary, each model's own answer length):
    the money knob's threshold spends the budget of always-reference within 2 points, the artifact's
    costs' threshold overspends (it takes the chatty small model for a tenth of the large one)."""
    scores, _, prompts = traffic(4000, 2)  # another draw of the calibration's traffic
    money = CostModel(PRICES)
    knob = MoneyBudget(FLEET, calibration, money)
    warm = 0
    while knob.resolve(budget)[2].find("in money") < 0:  # learnt from the answers as they come
        picked = int(choose(scores[warm : warm + 1], FLEET, knob.resolve(budget)[0])[0])
        money.after(picked, usage(int(prompts[warm]), (SMALL_ANSWER, LARGE_ANSWER)[picked]), float(prompts[warm]))
        warm += 1
    assert warm < 200

    def share(threshold: float) -> float:
        picked = choose(scores, FLEET, threshold)
        answers = (SMALL_ANSWER, LARGE_ANSWER)
        spent = [cost(usage(int(p), answers[m]), PRICES[m]) or 0.0 for p, m in zip(prompts, picked, strict=True)]
        ref = [cost(usage(int(p), LARGE_ANSWER), PRICES[1]) or 0.0 for p in prompts]
        return 100 * sum(spent) / sum(ref)

    in_money = share(knob.resolve(budget)[0])
    static = share(resolve_point(calibration, {}, budget=budget)[0])
    assert abs(in_money - budget) <= 2.0, in_money
    assert static - budget > 6.0, static


# --- a session's move, priced by the budget hold ---------------------------------------------------


CACHED = [PRICES[0], Price(10.0, 20.0, cached=1.0)]  # the large model's cached prompt tokens at a tenth


def held(calibration) -> Hold:
    money = learnt(n=20, prices=CACHED)
    for _ in range(20):  # the large model reads 30 of a prompt's tokens from its cache
        money.after(1, usage(40, LARGE_ANSWER, cached=30), 40.0)
    return Hold("budget", 30, FLEET, calibration, money=money)


def test_a_moved_turn_is_priced_uncached_on_its_model_and_always_reference_keeps_the_cache(calibration) -> None:
    hold = held(calibration)
    money = hold.money
    assert money is not None and money.cached[1] > 0
    cached, uncached = money.before(40.0), money.before(40.0, cached_tokens=0.0)
    kept = hold._open[hold.observe([0.1], 1, 40.0)]
    moved = hold._open[hold.observe([0.1], 1, 40.0, moved=True)]
    assert kept.costs[1] == pytest.approx(cached[1]) and kept.ref == pytest.approx(cached[1])
    assert moved.costs[1] == pytest.approx(uncached[1]) and uncached[1] > cached[1]
    assert moved.ref == pytest.approx(cached[1])  # the spend's measure: the conversation always on the reference
    assert moved.premium == pytest.approx(uncached[1] - cached[1])
    # the move's re-read is spent beyond always-reference: the two requests' spend is above 100 %
    assert hold.realised() == pytest.approx(100 * (cached[1] + uncached[1]) / (2 * cached[1]))


def test_a_moved_turn_settled_from_its_usage_keeps_the_re_read_out_of_always_reference(calibration) -> None:
    hold = held(calibration)
    ticket = hold.observe([0.1], 1, 40.0, moved=True)
    e = hold._open[ticket]
    premium = e.premium
    assert hold.settle(ticket, usage(40, LARGE_ANSWER))  # the provider read it all uncached
    answered = cost(usage(40, LARGE_ANSWER), CACHED[1])
    assert answered is not None
    assert e.costs[1] == pytest.approx(answered) and e.ref == pytest.approx(answered - premium)
    assert hold.realised() == pytest.approx(100 * answered / (answered - premium))
