"""The budget knob in money on the request path (docs/control.md, "Budget in money"): a per-request
``hybrid-budget-X`` on a server whose models are all priced spends X % of always-reference in money,
measured from the upstreams' usage, where the artifact's costs miss it; an unpriced server resolves
as before; a session's move is priced with its history re-read uncached. Real HTTP upstreams
(tests/helpers/fake_openai), the proxy in process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from hybridllm import Router, read_table
from hybridllm.model.artifact import save_config
from hybridllm.model.recalibrate import recalibrate
from hybridllm.routing.money import Price, cost, estimate_prompt_tokens
from hybridllm.routing.policy import NEVER
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.control.hold import TICKET
from hybridllm.serve.hooks import BaseHook, RequestContext

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.proxy import InProcess, upstream

#: the artifact's costs: 1 and 10, as the models' prices per token read (the small model a tenth
#: of the large one's, in and out)
PRICES = {SMALL: Price(1.0, 2.0), LARGE: Price(10.0, 20.0)}
#: on this traffic the small model is the chatty one: three times the large model's answer, so a
#: request costs it about a quarter of the large model's, not a tenth
SMALL_ANSWER, LARGE_ANSWER = 300, 100
BUDGET = 40.0
#: the stated tolerance (docs/control.md): on traffic like the calibration's, within 2 points
TOLERANCE = 2.0


@pytest.fixture(scope="module")
def costed_dir(router_dir: Path, mmlu_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's router with the models' costs (1 and 10) as ``hybridllm train --cost`` writes
    them, calibrated on the MMLU-Pro slice (``hybridllm calibrate --save``)."""
    d = tmp_path_factory.mktemp("costed") / "r"
    shutil.copytree(router_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["fleet"] = {"models": [SMALL, LARGE], "costs": [1.0, 10.0], "reference": LARGE}
    save_config(d, cfg)
    _, calibrated, _ = recalibrate(Router(d), read_table(mmlu_slice), max_quality_drop=1)
    save_config(d, calibrated)
    return d


@pytest.fixture(scope="module")
def costed(costed_dir: Path) -> Router:
    return Router(costed_dir)


@pytest.fixture(scope="module")
def prompts(mmlu_slice: Path) -> list[str]:
    """The calibration's prompts: traffic like the calibration's."""
    return [r["prompt"] for r in read_table(mmlu_slice)]


def words(n: int) -> str:
    return " ".join(["tok"] * n)


def serve(router: Any, s_up: FakeOpenAI, l_up: FakeOpenAI, hooks: tuple[BaseHook, ...] = (), **opts: Any) -> InProcess:
    small = upstream(SMALL, s_up.url, "s-model", timeout_s=5.0)
    large = upstream(LARGE, l_up.url, "l-model", timeout_s=5.0)
    return InProcess(create_app(router, small, large, options=ServeOptions(**opts), hooks=hooks))


def ask(proxy: InProcess, model: str, *messages: dict[str, Any], **headers: str) -> httpx.Response:
    r = proxy.http.post("/v1/chat/completions", json={"model": model, "messages": list(messages)}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def spent(answers: list[httpx.Response]) -> float:
    """What these answers cost in money, from their usage, each at the price of the model that answered."""
    return sum(cost(r.json()["usage"], PRICES[r.headers["x-hybridllm-model"]]) or 0.0 for r in answers)


def test_a_budget_in_money_spends_its_share_of_always_reference_where_the_artifact_costs_miss_it(costed, prompts):
    name = f"hybrid-budget-{BUDGET:g}"
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply, l_up.reply = (lambda p: words(SMALL_ANSWER)), (lambda p: words(LARGE_ANSWER))
        with serve(costed, s_up, l_up, prices=PRICES) as priced:
            # until every model has answered 10 requests, the knob resolves in the artifact's costs
            first = ask(priced, name, user(prompts[0]))
            warm = []
            for p in prompts[1:]:
                warm.append(ask(priced, name, user(p)))
                if "in money on this traffic" in warm[-1].headers["x-hybridllm-reason"]:
                    break
            before = [r.headers["x-hybridllm-model"] for r in [first, *warm[:-1]]]  # answered before it
            counts = [before.count(SMALL), before.count(LARGE)]
            money = [ask(priced, name, user(p)) for p in prompts]  # the measured pass: all in money
            always_ref = [ask(priced, LARGE, user(p)) for p in prompts]
            state = priced.http.app.state.knob.money.state()  # type: ignore[attr-defined]
        with serve(costed, s_up, l_up) as unpriced:  # no prices: the artifact's costs, as shipped
            static = [ask(unpriced, name, user(p)) for p in prompts]
    assert "in the artifact's costs (money after 10 answers of each model)" in first.headers["x-hybridllm-reason"]
    # in money from the request after the one that gave the last model its 10th answer
    assert min(counts) == 10 and len(warm) < len(prompts) - 1 and state["source"] == "money"
    assert all("in money on this traffic" in r.headers["x-hybridllm-reason"] for r in money)
    reference = spent(always_ref)
    money_share, static_share = 100 * spent(money) / reference, 100 * spent(static) / reference
    assert abs(money_share - BUDGET) <= TOLERANCE, money_share
    # the artifact's costs take the small model for a tenth of the large one: it sends fewer requests
    # to the small model than the budget allows in money, and the chatty small model's answers overspend
    assert static_share - BUDGET > 3 * TOLERANCE, static_share
    to_small = [sum(r.headers["x-hybridllm-model"] == SMALL for r in rs) for rs in (money, static)]
    assert to_small[0] > to_small[1]


def test_an_unpriced_server_resolves_a_budget_as_before(costed, router):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        with serve(costed, s_up, l_up) as proxy:
            got = ask(proxy, "hybrid-budget-40", user("What is 2 + 2?"))
            knob = proxy.http.app.state.knob  # type: ignore[attr-defined]
        with serve(router, s_up, l_up) as pair:  # a router trained without costs: a budget means nothing
            refused = pair.http.post(
                "/v1/chat/completions", json={"model": "hybrid-budget-40", "messages": [user("What is 2 + 2?")]}
            )
            listed = [m["id"] for m in pair.http.get("/v1/models").json()["data"]]
    threshold, reason = costed.threshold(budget=40)
    assert knob.money is None and got.headers["x-hybridllm-reason"] == reason == "budget=40%"
    assert float(got.headers["x-hybridllm-threshold"]) == pytest.approx(threshold, abs=1e-6)
    assert refused.status_code == 400 and "budget needs the models' costs" in refused.json()["error"]["message"]
    assert "hybrid-budget-30" not in listed and "hybrid-ca-20" in listed


def test_a_priced_pair_without_costs_takes_a_budget_in_money(router):
    prices = {SMALL: Price(1.0, 2.0), LARGE: Price(10.0, 20.0)}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up, prices=prices) as proxy:
        got = ask(proxy, "hybrid-budget-40", user("What is 2 + 2?"))
        body = {"model": "hybrid", "messages": [user("What is 2 + 2?")], "hybridllm": {"budget": 40}}
        field = proxy.http.post("/v1/chat/completions", json=body)
        listed = [m["id"] for m in proxy.http.get("/v1/models").json()["data"]]
    reason = got.headers["x-hybridllm-reason"]
    assert reason.startswith("budget=40% in money at assumed lengths"), reason
    assert field.status_code == 200 and field.headers["x-hybridllm-reason"] == reason
    assert "hybrid-budget-30" in listed


class _Estimates(BaseHook):
    """Records, before each held request's call, the hold's estimate of it (after the hold's hook)
    and what the server's cost model says it costs on each model with and without its cache."""

    def __init__(self) -> None:
        self.hold: Any = None
        self.seen: list[dict[str, Any]] = []

    async def before_call(self, ctx: RequestContext) -> None:
        ticket = ctx.get(TICKET)
        if ticket is None:
            return
        e, money = self.hold._open[ticket], self.hold.money
        prompt = estimate_prompt_tokens(ctx.body or {})
        self.seen.append({"picked": e.picked, "costs": e.costs.copy(), "ref": e.ref, "cached": money.before(prompt),
                          "uncached": money.before(prompt, cached_tokens=0.0)})  # fmt: skip


def test_a_session_moved_to_another_model_is_priced_with_its_history_uncached(router):
    prices = {SMALL: Price(1.0, 2.0), LARGE: Price(10.0, 20.0, cached=1.0)}
    probe = _Estimates()
    sid = {"x-session-id": "conv-7"}
    history = [user("Tell me about the history of the printing press in Europe, in some detail please."),
               {"role": "assistant", "content": words(60)}]  # fmt: skip
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        l_up.cached_tokens = 12  # the large model reads the start of a prompt it saw from its cache
        with serve(router, s_up, l_up, (probe,), prices=prices, hold="budget=30") as proxy:
            hold = probe.hold = proxy.http.app.state.hold  # type: ignore[attr-defined]
            # the controller moves after 100 requests: until then its threshold is where it is put
            hold.threshold = NEVER  # every plain request to the large model: it learns its cache
            for i in range(3):
                ask(proxy, "hybrid", user(f"question {i}: what are the causes of the first world war, briefly?"))
            hold.threshold = 0.0  # the conversation opens on the small model
            one = ask(proxy, "hybrid", history[0], **sid)
            hold.threshold = NEVER  # the router now wants the large model: the session escalates
            two = ask(proxy, "hybrid", *history, user("And in Asia?"), **sid)
            three = ask(proxy, "hybrid", *history, user("And in Asia?"), {"role": "assistant", "content": "ok"},
                        user("Thanks. And later?"), **sid)  # fmt: skip
            events = proxy.http.get("/metrics").text
    assert [r.headers["x-hybridllm-model"] for r in (one, two, three)] == [SMALL, LARGE, LARGE]
    assert 'hybridllm_session_events_total{event="escalations"} 1.0' in events
    assert hold.money.cached[1] > 0  # the large model's typical cached tokens, learnt from its usage
    moved, kept = probe.seen[-2], probe.seen[-1]
    # the escalated turn: its history re-read uncached on the large model, while always-reference (the
    # spend's measure) would have kept the conversation on the large model, its cache warm
    assert moved["picked"] == 1 and moved["costs"][1] == pytest.approx(moved["uncached"][1])
    assert moved["costs"][1] > moved["cached"][1] and moved["ref"] == pytest.approx(moved["cached"][1])
    # the next turn stays on the large model: its cache holds the history
    assert kept["picked"] == 1 and kept["costs"][1] == pytest.approx(kept["cached"][1]) == pytest.approx(kept["ref"])
    assert np.all(np.isfinite(moved["costs"]))
