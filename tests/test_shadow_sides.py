"""Which models a shadow check asks (``--shadow-sides``) and retraining a fleet from its traffic
(docs/retrain.md#fleets): a 3-model router served in process in front of three real HTTP fake
upstreams and a real HTTP judge that rates each answer from the MMLU-Pro table's score of that model
on that question. With ``all`` every drawn request asks the two models that did not answer, each
call bounded (the replay's cap, the per-minute ceiling, the concurrency) and counted on /metrics;
the outcomes log's rows are complete, and ``retrain`` trains a challenger on them and gates it by
AIQ. With the default (``pair``) the rows miss a model and a fleet cannot learn from them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any, get_args

import pytest

from hybridllm import Router
from hybridllm.model.retrain import RetrainOptions, retrain, traffic_rows
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.config import ServeConfig, ServeConfigError
from hybridllm.serve.control.shadow import SIDES
from hybridllm.serve.control.shadow_bounds import CallSlots
from hybridllm.serve.settings import ServeSettings
from hybridllm.stages.outcomes import read_outcomes
from hybridllm.tables.format import TableError

from .conftest import MMLU, THREE, THREE_COSTS
from .helpers.fake_judge import graded, verdict
from .helpers.fake_openai import FakeOpenAI
from .helpers.poll import sample as metric
from .helpers.poll import wait_for
from .helpers.proxy import InProcess, upstream

PRICES = {THREE[0]: (0.1, 0.1), THREE[1]: (0.2, 0.2), THREE[2]: (0.9, 0.9)}  # per 1M tokens
ANSWER = re.compile(r"^(\S+) answers #(\d+)$")


def _rows() -> list[dict]:
    rows = sorted((json.loads(line) for line in MMLU.open()), key=lambda r: len(r["prompt"]))[:400]
    return [r for r in rows if all(m in r["quality"] for m in THREE)]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _rows()


@pytest.fixture(scope="module")
def fleet_dir(rows, cache_env, tmp_path_factory) -> Path:
    """A 3-model router on the first 200 rows (a small head: the test is about the loop)."""
    from hybridllm.model.fit import TrainOptions, fit_router
    from hybridllm.model.head import HeadConfig

    opts = TrainOptions(models=THREE, costs=THREE_COSTS, head=HeadConfig(members=1, epochs=3, extra=["log_tokens"]))
    return Path(fit_router(rows[:200], opts, show_progress=False).save(tmp_path_factory.mktemp("fleet") / "r"))


class Table:
    """Three upstreams answering "<model> answers #<row>" and a judge rating such an answer from the
    table's score of that model on that row (1 + 9 q), all real HTTP servers on 127.0.0.1."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.index = {r["prompt"]: i for i, r in enumerate(rows)}
        self.ups = [FakeOpenAI() for _ in THREE]
        self.judge = FakeOpenAI()

    def quality(self, model: str, i: int) -> float:
        return float(sum(self.rows[i]["quality"][model]) / len(self.rows[i]["quality"][model]))

    def _rate(self, prompt: str) -> str:
        m = ANSWER.match(graded(prompt, "response"))
        return verdict(prompt, 1 + 9 * self.quality(m.group(1), int(m.group(2))) if m else 1)

    def __enter__(self) -> Table:
        for model, up in zip(THREE, self.ups, strict=True):
            up.reply = lambda p, model=model: f"{model} answers #{self.index[p]}"
            up.__enter__()
        self.judge.reply = self._rate
        self.judge.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for up in (*self.ups, self.judge):
            up.__exit__(*exc)

    def app(self, router_dir: Path, **opts: Any) -> InProcess:
        ups = [upstream(m, up.url, f"m{k}") for k, (m, up) in enumerate(zip(THREE, self.ups, strict=True))]
        options = ServeOptions(shadow_rate=1.0, prices=PRICES, batch_window_s=0.0, **opts)
        return InProcess(
            create_app(Router(router_dir), *ups, options=options, judge=upstream("judge", self.judge.url, "j"))
        )


def ask(proxy: InProcess, text: str) -> str:
    r = proxy.http.post(
        "/v1/chat/completions", json={"model": "hybrid", "messages": [{"role": "user", "content": text}]}
    )
    assert r.status_code == 200, r.text
    return r.headers["x-hybridllm-model"]


def shadows(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [r for r in read_outcomes(log) if r["type"] == "shadow"]


def test_the_setting_is_one_of_three_and_a_bad_value_is_one_line(tmp_path):
    assert get_args(get_args(ServeSettings.model_fields["shadow_sides"].annotation)[0]) == SIDES
    assert ServeConfig(shadow_sides="all").options().shadow_sides == "all"
    assert ServeConfig().options().shadow_sides is None  # the default: pair, or policy under a fleet's quality hold
    with pytest.raises(ServeConfigError) as err:
        ServeConfig.load(None, shadow_sides="every")
    assert "shadow_sides: Input should be 'pair', 'policy' or 'all'" in str(err.value)
    assert "\n" not in str(err.value)
    toml = tmp_path / "serve.toml"
    toml.write_text('shadow_rate = 0.1\nshadow_sides = "both"\n')
    with pytest.raises(ServeConfigError, match=r"serve\.toml: shadow_sides: Input should be") as err:
        ServeConfig.load(toml)
    assert "\n" not in str(err.value)


def test_pair_beside_a_fleets_quality_hold_is_refused(fleet_dir, rows):
    with Table(rows) as t:
        with pytest.raises(
            ServeConfigError, match="--shadow-sides pair beside --hold max_quality_drop=1 over 3 models"
        ):
            t.app(fleet_dir, shadow_sides="pair", hold="max_quality_drop=1")
        with pytest.raises(ServeConfigError, match="shadow_sides: expected one of pair, policy, all"):
            t.app(fleet_dir, shadow_sides="most")


def test_each_mode_asks_its_models_and_the_default_follows_the_hold(fleet_dir, rows):
    """pair: the other side; policy: the rest of the models the policy picks at some threshold (the
    reference, each candidate scored above every cheaper one); all: the rest of the fleet."""
    with Table(rows) as t:
        hold = create_app(Router(fleet_dir), *[upstream(m, up.url, m) for m, up in zip(THREE, t.ups, strict=True)],
                          options=ServeOptions(shadow_rate=0.5, hold="max_quality_drop=2"),
                          judge=upstream("judge", t.judge.url, "j"))  # fmt: skip
        assert hold.state.shadow.sides == "policy"  # the default a fleet's quality hold needs
        assert t.app(fleet_dir).http.app.state.shadow.sides == "pair"
        shadow = t.app(fleet_dir, shadow_sides="all").http.app.state.shadow
    assert shadow.sides == "all" and shadow.ref == 2
    assert shadow.more_sides(0, 2, (0.2, 0.9)) == (1,)
    assert shadow.more_sides(2, 1, (0.2, 0.9)) == (0,)
    shadow.sides = "policy"
    assert shadow.more_sides(0, 2, (0.2, 0.9)) == (1,)  # model 1 scores above model 0: picked at some threshold
    assert shadow.more_sides(0, 2, (0.9, 0.2)) == ()  # model 1 never is
    shadow.sides = "pair"
    assert shadow.more_sides(0, 2, (0.2, 0.9)) == ()


def test_call_slots_hold_one_slot_per_side_in_arrival_order():
    """--shadow-concurrency counts calls: a request asking two sides holds two of the slots."""

    async def main() -> tuple[int, list[str], int]:
        slots, busy, peak, order = CallSlots(3), [0], [0], []

        async def job(name: str, calls: int) -> None:
            async with slots.hold(calls):
                busy[0] += min(calls, 3)
                peak[0] = max(peak[0], busy[0])
                order.append(name)
                await asyncio.sleep(0.01)
                busy[0] -= min(calls, 3)

        waiting = asyncio.ensure_future(job("cancelled", 3))
        await asyncio.sleep(0)
        await asyncio.gather(job("a", 2), job("b", 2), job("c", 1), job("d", 9), waiting, asyncio.sleep(0))
        return peak[0], order, slots.free

    async def cancelled_waiter_frees_its_place() -> int:
        slots = CallSlots(2)
        async with slots.hold(2):
            w = asyncio.ensure_future(slots.hold(2).__aenter__())
            await asyncio.sleep(0)
            w.cancel()
            await asyncio.gather(w, return_exceptions=True)
        async with slots.hold(2):  # nobody left waiting ahead of it
            return slots.free

    peak, order, free = asyncio.run(main())
    assert peak <= 3 and free == 3
    assert order[:2] == ["cancelled", "a"]  # first come, first served: "c" does not jump the queue
    assert order.index("c") > order.index("b") and "d" in order  # a request asking more than all slots takes all
    assert asyncio.run(cancelled_waiter_frees_its_place()) == 0


def test_all_sides_make_complete_rows_a_fleet_retrains_on(fleet_dir, rows, tmp_path):
    """120 requests with shadow_sides=all: every request asks the two models that did not answer,
    each replay capped, each call priced and counted; the log's rows carry all three models' true
    scores, and retrain gates a challenger by AIQ on the most recent 24. With the default (pair)
    the same traffic leaves no row a fleet can use."""
    traffic = rows[200:320]
    log = tmp_path / "all.jsonl"
    with Table(rows) as t:
        with t.app(fleet_dir, shadow_sides="all", outcomes=str(log), log_prompts=True, shadow_max_tokens=64,
                   shadow_per_minute=100_000, shadow_concurrency=8) as proxy:  # fmt: skip
            served = [ask(proxy, r["prompt"]) for r in traffic]
            wait_for(lambda: len(shadows(log)) == len(traffic), "the shadow records")
            metrics = proxy.http.get("/metrics").text
        replays = [[b for b in up.requests if b.get("max_tokens") == 64] for up in t.ups]
        assert [len(b) for b in replays] == [len(traffic) - served.count(m) for m in THREE]
        assert all(b["n"] == 1 for bs in replays for b in bs)
        assert len(t.judge.requests) == 3 * len(traffic)  # the served answer and both shadow answers
        for m in THREE:
            scored = metric(metrics, "hybridllm_shadow_calls_total", model=m, outcome="scored")
            assert scored == len(traffic) - served.count(m)
            assert metric(metrics, "hybridllm_shadow_cost_total", model=m, role="shadow") > 0
    assert len(set(served)) >= 2  # the router answers with more than one model: the sides differ per request
    recs = shadows(log)
    assert len({r["id"] for r in recs}) == len(recs)  # one record per request
    for rec in recs:
        assert set(rec["q"]) == set(THREE) and rec["weight"] == 1.0 and rec["served"] != rec["other"]
    rows_used, skipped = traffic_rows(read_outcomes(log), THREE)
    assert len(rows_used) == len(traffic) and skipped["missing_model_scores"] == 0
    sent = {r["prompt"] for r in traffic}
    for row in rows_used:  # every side's score is the judge's rating of that model's own answer
        text = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        assert text in sent
        for m in THREE:
            assert row["quality"][m][0] == pytest.approx(t.quality(m, t.index[text]), abs=1e-3)
    res = retrain(log, fleet_dir, tmp_path / "challenger", options=RetrainOptions(n_boot=200))
    g = res.gate
    assert g.metric == "aiq" and g.n == 24
    assert (res.rows["traffic"], res.rows["train"], res.rows["held_out"]) == (120, 96, 24)
    assert g.diff_ci95 is not None and g.diff_ci95[0] <= g.challenger - g.champion <= g.diff_ci95[1]
    assert g.promote == (g.diff_ci95[0] > g.min_gain)
    assert list(Router(res.challenger).fleet.models) == THREE
    assert json.loads(res.report.read_text())["gate"]["metric"] == "aiq"

    pair_log = tmp_path / "pair.jsonl"
    with Table(rows) as t, t.app(fleet_dir, outcomes=str(pair_log), log_prompts=True) as proxy:
        for r in traffic[:30]:
            ask(proxy, r["prompt"])
        wait_for(lambda: len(shadows(pair_log)) == 30, "the pair records")
    assert all(len(rec["q"]) == 2 for rec in shadows(pair_log))
    used, skipped = traffic_rows(read_outcomes(pair_log), THREE)
    assert used == [] and skipped["missing_model_scores"] == 30
    with pytest.raises(TableError, match="30 miss a model's score: serve a fleet with --shadow-sides all"):
        retrain(pair_log, fleet_dir, tmp_path / "never")


def test_every_extra_side_takes_its_share_of_the_per_minute_ceiling(fleet_dir, rows):
    """12 calls a minute hold 2 at once (10 s of the ceiling): the first drawn request asks both of
    its sides; every later one is skipped whole, counted once per side it would have asked."""
    with Table(rows) as t, t.app(fleet_dir, shadow_sides="all", shadow_per_minute=12) as proxy:
        served = [ask(proxy, r["prompt"]) for r in rows[200:206]]
        wait_for(lambda: len(t.judge.requests) == 3, "the first request's verdicts")
        time.sleep(0.2)
        text = proxy.http.get("/metrics").text
    scored = {m: metric(text, "hybridllm_shadow_calls_total", model=m, outcome="scored") for m in THREE}
    skipped = {m: metric(text, "hybridllm_shadow_calls_total", model=m, outcome="ceiling") for m in THREE}
    assert sum(scored.values()) == 2 and scored[served[0]] == 0
    assert sum(skipped.values()) == 2 * 5
    assert all(skipped[m] == sum(1 for s in served[1:] if s != m) for m in THREE)
    assert len(t.judge.requests) == 3
