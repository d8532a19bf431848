"""Cost in money with prompt caching, the estimates that price a request on every model, and the
budget hold in money (routing/money.py, routing/estimates.spend_curve, routing/live.Hold)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hybridllm.errors import UsageError
from hybridllm.routing.estimates import spend_curve
from hybridllm.routing.live import Hold
from hybridllm.routing.money import (
    MAX_COUNT,
    MAX_LEARNED,
    CostModel,
    Price,
    cost,
    estimate_prompt_tokens,
    table_lengths,
    usage_tokens,
)
from hybridllm.routing.policy import Fleet, choose, sweep
from hybridllm.tables.registry import Registry, RegistryError

SMALL, LARGE = Price(0.10, 0.40, 0.025), Price(2.00, 8.00, 0.50)


def usage(prompt: object, completion: object, cached: object = None) -> dict[str, object]:
    u: dict[str, object] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


# --- cost ------------------------------------------------------------------------------------------
def test_cost_prices_cached_prompt_tokens_at_the_cached_price() -> None:
    # 1,000 prompt tokens of which 800 cached, 100 completion: 200 * 2 + 800 * 0.5 + 100 * 8 per 1M
    assert cost(usage(1000, 100, 800), LARGE) == pytest.approx((200 * 2.0 + 800 * 0.5 + 100 * 8.0) / 1e6)
    assert cost(usage(1000, 100), LARGE) == pytest.approx((1000 * 2.0 + 100 * 8.0) / 1e6)
    # no price_cached_in: cached tokens at the prompt price
    plain = Price(2.0, 8.0)
    assert cost(usage(1000, 100, 800), plain) == cost(usage(1000, 100), plain)
    assert usage_tokens(usage(1000, 100, 800)) == (1000, 800, 100)


@pytest.mark.parametrize(
    "details",
    [None, "800", 800, [800], {"cached_tokens": "800"}, {"cached_tokens": 800.0}, {"cached_tokens": True},
     {"cached_tokens": -5}, {"cached_tokens": 1001}, {"cached_tokens": MAX_COUNT + 1}, {}],
)  # fmt: skip
def test_a_malformed_cached_count_prices_the_prompt_in_full(details: object) -> None:
    u = {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": details}
    assert usage_tokens(u) == (1000, 0, 100)
    assert cost(u, LARGE) == pytest.approx((1000 * 2.0 + 100 * 8.0) / 1e6)


@pytest.mark.parametrize(
    "u",
    [None, [], "usage", 12, {}, {"prompt_tokens": 10}, {"completion_tokens": 10}, usage("10", 5), usage(10, 5.0),
     usage(True, 5), usage(10, False), usage(-1, 5), usage(10, -3), usage(MAX_COUNT + 1, 5), usage(10, 10**30),
     usage(float("nan"), 5), usage(10, float("inf")), usage(None, None), usage({"n": 1}, 5)],
)  # fmt: skip
def test_a_usage_without_both_counts_is_no_count(u: object) -> None:
    assert usage_tokens(u) is None
    assert cost(u, LARGE) is None


def test_zero_counts_cost_nothing() -> None:
    assert cost(usage(0, 0, 0), LARGE) == 0.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, True, "1"])
def test_a_price_must_be_a_finite_number(bad: object) -> None:
    with pytest.raises(UsageError, match="finite number"):
        Price(bad, 1.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="cached"):
        Price(1.0, 1.0, bad)  # type: ignore[arg-type]


def test_models_file_price_cached_in(tmp_path) -> None:
    f = tmp_path / "models.toml"
    f.write_text("[models.a]\nprice_in = 2.0\nprice_out = 8.0\nprice_cached_in = 0.5\n[models.b]\ncost = 3\n")
    reg = Registry.load(f)
    assert Price.of(reg.models["a"]) == Price(2.0, 8.0, 0.5)
    assert Price.of(reg.models["b"]) == Price(3.0, 3.0, None)
    f.write_text("[models.a]\ncost = 1\nprice_cached_in = 0.5\n")
    with pytest.raises(RegistryError, match=r"models\.toml:\d+: models\.a: .*price_cached_in needs price_in"):
        Registry.load(f)
    f.write_text("[models.a]\nprice_in = 1\nprice_out = 1\nprice_cached_in = -1\n")
    with pytest.raises(RegistryError, match=r"models\.a\.price_cached_in"):
        Registry.load(f)


# --- the estimates ---------------------------------------------------------------------------------
def test_prompt_estimate_reads_texts_tools_and_tool_calls_not_images() -> None:
    text = "x" * 400
    one = estimate_prompt_tokens({"messages": [{"role": "user", "content": text}]})
    assert one == pytest.approx(100 + 4 + 8)
    assert estimate_prompt_tokens(text) == pytest.approx(one)
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:" + "A" * 10**5}}]
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": parts}]}) == pytest.approx(one)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": text}], "tools": tools}) > one
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f"}}]}
    two = estimate_prompt_tokens({"messages": [{"role": "user", "content": text}, call]})
    assert two > one + 4
    assert estimate_prompt_tokens({"prompt": ["ab" * 200, "cd" * 200]}) == pytest.approx(200 + 4 + 8)


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": "hi"}, {"messages": [1, None, "x"]}, {"messages": [{"content": {"a": 1}}]},
     {"messages": [{"content": [1, {"type": "text", "text": 5}]}]}, {"prompt": [1, 2]}, {"prompt": None},
     {"tools": {"a": object()}}],
)  # fmt: skip
def test_prompt_estimate_of_hostile_bodies_is_a_number(body: dict) -> None:
    got = estimate_prompt_tokens(body)
    assert math.isfinite(got) and got >= 0


def test_cost_model_before_and_after_a_call() -> None:
    m = CostModel([SMALL, LARGE], answer_tokens=[100.0, None])
    before = m.before(1000)
    # no usage seen: the estimate's prompt as it is, nothing cached, the seeded / default answer
    assert before[0] == pytest.approx((1000 * 0.10 + 100 * 0.40) / 1e6)
    assert before[1] == pytest.approx((1000 * 2.0 + 256 * 8.0) / 1e6)
    got = m.after(0, usage(1200, 50, 1000), prompt_estimate=1000)
    assert got is not None
    assert got[0] == pytest.approx(cost(usage(1200, 50, 1000), SMALL))
    # the reference's cost of the same request: its prompt, the same prefix cached, the same answer length
    assert got[1] == pytest.approx(cost(usage(1200, 50, 1000), LARGE))
    # learnt: a running mean seeded as 50 answers of 100 tokens, the prompt ratio 1.2, 1,000 cached
    assert m.answer[0] == pytest.approx((50 * 100 + 50) / 51)
    assert m.prompt_ratio[0] == pytest.approx(1.2) and m.cached[0] == pytest.approx(1000)
    # a model never seen keeps its default answer; its prompt ratio is its own (1 until it answers)
    assert m.answer[1] == 256 and m.prompt_ratio[1] == 1.0


def test_cost_model_pairs_teach_the_other_models_answer_on_the_served_requests() -> None:
    m = CostModel([SMALL, LARGE], prior=1.0)
    for _ in range(300):  # on the requests the small model is routed, the large one answers twice as long
        m.pair(0, usage(100, 50), 1, usage(100, 100))
    assert m.ratio(1, 0) == pytest.approx(2.0, rel=0.01)
    assert m.ratio(0, 1) == 1.0  # the other direction is not what these requests tell
    got = m.after(0, usage(100, 50), prompt_estimate=100)
    assert got is not None and got[1] == pytest.approx(cost(usage(100, 100), LARGE), rel=0.01)


def test_cost_model_survives_hostile_usage() -> None:
    m = CostModel([SMALL, LARGE])
    state = (m.answer.copy(), m.prompt_ratio.copy(), m.cached.copy())
    for u in (None, "x", usage(-1, 5), usage(1, True), usage(MAX_COUNT + 5, 1)):
        assert m.after(0, u, 100) is None
        m.pair(0, u, 1, usage(1, 1))
    assert all(np.array_equal(a, b) for a, b in zip(state, (m.answer, m.prompt_ratio, m.cached), strict=True))
    # a huge but countable answer is charged as reported, and moves the typical answer by a bounded step
    got = m.after(0, usage(10, MAX_COUNT), prompt_estimate=float("nan"))
    assert got is not None and got[0] == pytest.approx(cost(usage(10, MAX_COUNT), SMALL))
    assert m.answer[0] <= MAX_LEARNED and np.all(np.isfinite(m.before(10)))
    assert m.prompt_ratio[0] == 1.0  # a NaN estimate teaches nothing
    m.after(1, usage(10**9, 1), prompt_estimate=1.0)  # an absurd ratio is clamped
    assert m.prompt_ratio[1] <= 16.0
    with pytest.raises(UsageError, match="one per model"):
        CostModel([SMALL, LARGE], answer_tokens=[1.0])
    with pytest.raises(UsageError, match="2x2"):
        CostModel([SMALL, LARGE], ratios=np.array([[1.0, 0.0], [1.0, 1.0]]))


def test_table_lengths() -> None:
    rows: list[dict[str, Any]] = [
        {"meta": {"completion_tokens": {"s": [10, 20, 30], "l": [40, 40, 40]}}},
        {"meta": {"completion_tokens": {"s": [100, "x", None], "l": [True, -1]}}},  # junk counts skipped
        {"meta": {}}, {"meta": "x"}, {},
    ]  # fmt: skip
    lengths, ratios = table_lengths(rows, ["s", "l", "absent"])
    assert lengths[0] == pytest.approx(160 / 4) and lengths[1] == pytest.approx(40) and lengths[2] is None
    assert ratios[1, 0] == pytest.approx(40 / 20) and ratios[0, 1] == pytest.approx(0.5) and ratios[2, 0] == 1.0


# --- the spend curve -------------------------------------------------------------------------------
def test_spend_curve_is_the_policy_priced_request_by_request() -> None:
    rng = np.random.default_rng(0)
    fleet = Fleet(("a", "b", "c"), (1.0, 3.0, 10.0), "c")
    scores, costs = rng.random((300, 2)), rng.random((300, 3)) * [1, 3, 10]
    grid = np.r_[np.unique(scores), 0.0, 0.5, 1.000001]
    got = spend_curve(scores, costs, fleet.ref, grid)
    for t, v in zip(grid, got, strict=True):
        pick = choose(scores, fleet, float(t))
        assert v == pytest.approx(costs[np.arange(300), pick].sum() / costs[:, 2].sum() * 100)
    assert np.isnan(spend_curve(scores, np.zeros((300, 3)), 2, grid)).all()


# --- the hold in money -----------------------------------------------------------------------------
def varied_stream(n: int, seed: int) -> list[tuple[float, int, int, int]]:
    """(score, prompt tokens, small's answer, large's answer) per request: short questions (a few
    answer tokens) the router scores high, long ones (hundreds) it scores low, their mix moving from
    20 % long to 60 % long half-way: a request's cost varies with its prompt and its answer."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        long = rng.random() < (0.2 if i < n // 2 else 0.6)
        score = float(rng.uniform(0.0, 0.75) if long else rng.uniform(0.45, 1.0))
        prompt = int(rng.integers(100, 600) if long else rng.integers(50, 300))
        small = int(rng.integers(150, 450) if long else rng.integers(1, 10))
        large = int(small * rng.uniform(0.9, 1.3)) if long else int(rng.integers(1, 10))
        out.append((score, prompt, small, large))
    return out


def hold_on(stream: list[tuple[float, int, int, int]], money: CostModel | None, target: float) -> np.ndarray:
    """The stream through a budget hold: per request (true cost served, true cost on the reference)."""
    fleet = Fleet(("small", "large"), ((3 * 0.10 + 0.40) / 4, (3 * 2.0 + 8.0) / 4), "large")
    rng = np.random.default_rng(9)
    val = rng.random((400, 1))
    cal = sweep(val, np.ones((400, 2)), fleet)
    hold = Hold("budget", target, fleet, cal, money=money)
    out = []
    for score, prompt, l_small, l_large in stream:
        pick = int(choose(np.array([[score]]), fleet, hold.threshold)[0])
        u = [usage(prompt + 512, l_small, 512), usage(prompt + 512, l_large, 512)]
        ticket = hold.observe([score], pick, prompt_tokens=prompt * 1.1 + 512)
        hold.settle(ticket, u[pick])
        out.append((cost(u[pick], (SMALL, LARGE)[pick]), cost(u[1], LARGE)))
    assert hold.state()["unit"] == ("money" if money is not None else "relative cost")
    return np.array(out)


def windows(spent: np.ndarray, warmup: int = 400, size: int = 200) -> np.ndarray:
    return np.array([
        spent[s : s + size, 0].sum() / spent[s : s + size, 1].sum() * 100
        for s in range(warmup, len(spent) - size + 1, size)
    ])  # fmt: skip


@pytest.mark.parametrize("target", [30.0, 50.0])
def test_the_hold_keeps_the_money_share_within_2pp_in_most_windows(target: float) -> None:
    stream = varied_stream(4400, seed=int(target))
    # the large model's answers are 1.1 times the small one's on a prompt: what a routing table tells
    seeded = CostModel([SMALL, LARGE], ratios=np.array([[1.0, 1 / 1.1], [1.1, 1.0]]))
    spent = hold_on(stream, seeded, target)
    money = windows(spent)
    assert np.mean(np.abs(money - target) <= 2.0) >= 0.9, money.round(1)
    assert spent[400:, 0].sum() / spent[400:, 1].sum() * 100 == pytest.approx(target, abs=1.0)
    # the same stream held in relative costs misses in money: what the money hold is for
    relative = windows(hold_on(stream, None, target))
    assert np.mean(np.abs(relative - target) <= 2.0) < 0.5, relative.round(1)


def test_hold_money_contract() -> None:
    unpriced = Fleet.pair("small", "large")
    cal = sweep(
        np.random.default_rng(0).random((50, 1)), np.ones((50, 2)), Fleet(("small", "large"), (1.0, 2.0), "large")
    )
    with pytest.raises(UsageError, match="needs the models' costs"):
        Hold("budget", 30, unpriced, cal)
    hold = Hold("budget", 30, unpriced, cal, money=CostModel([SMALL, LARGE]))  # prices are the costs
    assert hold.horizon == 5.0
    with pytest.raises(UsageError, match="prices for 3 models"):
        Hold("budget", 30, unpriced, cal, money=CostModel([SMALL, LARGE, LARGE]))
    t = hold.observe([0.9], 0, prompt_tokens=100)
    before = hold.realised()
    assert hold.settle(t, usage(-1, 1)) is False  # no count: the estimate before the call stands
    assert hold.realised() == before and hold.settle(t, usage(120, 10)) is False  # one settlement a ticket
    t = hold.observe([0.9], 0, prompt_tokens=100)
    assert hold.settle(t, usage(120, 10)) is True
    assert hold.settle(t, usage(120, 10)) is False
    # a fallback answered on the reference: its usage is priced there, and the spend counts it
    t = hold.observe([0.9], 0, prompt_tokens=100)
    low = hold.realised()
    assert hold.settle(t, usage(120, 10), model=1) is True and hold.realised() > low
    assert hold.settle(10**9, usage(1, 1)) is False  # a ticket never given
    # a hold not in money takes the same calls and ignores the usage
    share = Hold("cost_advantage", 30, unpriced, cal, money=CostModel([SMALL, LARGE]))
    assert share.money is None and share.settle(share.observe([0.9], 0), usage(1, 1)) is False
