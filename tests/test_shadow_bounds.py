"""Shadow work bounded and paid for (issue 33, item 3), tried as a hostile tenant would: a drawn
request replayed as sent (``n=8``, ``max_tokens=4096``, a stream), a huge prompt, one key flooding
the shadow ceiling, judging nobody pays for, and a capped key's downgraded requests shadowed on the
dear model. Real proxies (uvicorn or ``hybridllm serve``) in front of real HTTP fake upstreams on
127.0.0.1 that record every body they receive, and a real HTTP judge."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybridllm import Router
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.control.shadow_bounds import FairCeiling, body_chars, replay_body

from .conftest import LARGE, SMALL
from .helpers.fake_judge import verdict
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.poll import sample as metric
from .helpers.poll import wait_for
from .helpers.procs import running_serve
from .helpers.proxy import Proxy, upstream

#: routing names that pin a routed request (one the router scores, so it may be drawn) to one side
TO_SMALL, TO_LARGE = "hybrid-t-0", "hybrid-t-1"


def judge_reply(prompt: str) -> str:
    """An honest judge under hybridllm's judge protocol: every answer rated 7."""
    return verdict(prompt, 7)


def chat(url: str, model: str, content: str, key: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/chat/completions", headers=headers, json=body, timeout=60)


def test_a_replay_is_one_answer_of_capped_length_whatever_the_client_sent(router_dir):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        j_up.reply = judge_reply
        opts = ServeOptions(shadow_rate=1.0, shadow_max_tokens=300)
        ups = [upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l")]
        app = create_app(Router(router_dir), *ups, options=opts, judge=upstream("judge", j_up.url, "j"))
        with Proxy(app) as proxy:
            sent = [
                {"n": 8, "max_tokens": 4096},  # the attack: eight long answers per draw
                {"n": 8, "max_tokens": 4096, "stream": True, "stream_options": {"include_usage": True}},
                {"max_completion_tokens": 100_000, "max_tokens": 50},
                {"max_tokens": 40, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
                {},  # no limit at all: the cap
            ]
            for i, extra in enumerate(sent):
                r = chat(proxy.url, TO_SMALL, f"question {i}", **extra)
                assert r.status_code == 200 and r.headers["x-hybridllm-model"] == SMALL
            wait_for(lambda: len(l_up.requests) == len(sent), "the shadow calls")
            # the served requests went upstream as the client sent them
            assert [b.get("n") for b in s_up.requests] == [8, 8, None, None, None]
            assert s_up.requests[1]["stream"] is True
            replays = sorted(l_up.requests, key=lambda b: b["messages"][0]["content"])
            assert all(b["n"] == 1 and "stream" not in b and "stream_options" not in b for b in replays)
            assert [b.get("max_tokens") for b in replays] == [300, 300, 50, 40, 300]
            assert replays[2]["max_completion_tokens"] == 300
            assert replays[3]["tools"] == sent[3]["tools"] and replays[3]["tool_choice"] == "auto"  # unchanged
            wait_for(lambda: len(j_up.requests) == 2 * len(sent), "the judge's verdicts")
            # the streamed request's served answer reached the judge (collected from the relay)
            assert any("echo:question 1#None" in json.dumps(b) for b in j_up.requests)
            # completions: a batch of prompts is replayed as its first prompt only, the one judged
            r = httpx.post(
                f"{proxy.url}/completions",
                json={"model": TO_SMALL, "prompt": ["first", "second", "third"], "n": 5, "best_of": 9},
                timeout=60,
            )
            assert r.status_code == 200
            wait_for(lambda: len(l_up.requests) == len(sent) + 1, "the completion's shadow call")
            last = l_up.requests[-1]
            assert last["prompt"] == "first" and last["n"] == 1 and "best_of" not in last and last["max_tokens"] == 300


def test_a_huge_prompt_is_not_drawn(router_dir):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        j_up.reply = judge_reply
        opts = ServeOptions(shadow_rate=1.0, shadow_max_prompt_chars=5_000)
        ups = [upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l")]
        app = create_app(Router(router_dir), *ups, options=opts, judge=upstream("judge", j_up.url, "j"))
        with Proxy(app) as proxy:
            huge = "word " * 180_000  # 900 kB
            assert chat(proxy.url, TO_SMALL, huge).status_code == 200
            # spread over messages and tool definitions it is still counted
            tools = [{"type": "function", "function": {"name": "f", "description": "x" * 3_000}}]
            assert chat(proxy.url, TO_SMALL, "y" * 2_500, tools=tools).status_code == 200
            # or hidden where no string value is: a tool schema's property names, a list of numbers
            props = {"p" * 6_000: {"type": "string"}}
            keyed = [{"type": "function", "function": {"name": "g", "parameters": {"properties": props}}}]
            assert chat(proxy.url, TO_SMALL, "z", tools=keyed).status_code == 200
            assert chat(proxy.url, TO_SMALL, "z", metadata={"n": list(range(3_000))}).status_code == 200
            assert chat(proxy.url, TO_SMALL, "a short question").status_code == 200  # drawn: the control
            wait_for(lambda: len(j_up.requests) == 2, "the short question's verdicts")
            metrics = httpx.get(f"{proxy.url.removesuffix('/v1')}/metrics").text
        assert [b["messages"][0]["content"] for b in l_up.requests] == ["a short question"]
        assert all(len(json.dumps(b)) < 5_000 for b in j_up.requests)  # the judge never saw the huge prompt
        assert metric(metrics, "hybridllm_shadow_calls_total", model=LARGE, outcome="prompt_too_long") == 4
        assert metric(metrics, "hybridllm_shadow_calls_total", model=LARGE, outcome="scored") == 1


@pytest.mark.slow
def test_one_key_flooding_does_not_crowd_out_another_keys_checks(router_dir):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        j_up.reply = judge_reply
        # 36 a minute: a key alone may take 6 at once (10 s of the ceiling); two keys 3 each
        opts = ServeOptions(shadow_rate=1.0, shadow_per_minute=36, api_keys=["ka", "kb"],
                            key_names={"ka": "team-a", "kb": "team-b"})  # fmt: skip
        ups = [upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l")]
        app = create_app(Router(router_dir), *ups, options=opts, judge=upstream("judge", j_up.url, "j"))
        with Proxy(app) as proxy:
            flood_started = threading.Event()

            def flood() -> list[int]:
                with ThreadPoolExecutor(6) as pool:
                    flood_started.set()
                    return list(pool.map(lambda i: chat(proxy.url, TO_SMALL, f"a {i}", "ka").status_code, range(90)))

            with ThreadPoolExecutor(1) as bg:
                t0 = time.monotonic()
                flooding = bg.submit(flood)
                flood_started.wait()
                wait_for(lambda: len(s_up.requests) >= 10, "the flood to start")
                # team-b's three requests arrive while team-a floods
                assert all(chat(proxy.url, TO_SMALL, f"b {i}", "kb").status_code == 200 for i in range(3))
                assert all(code == 200 for code in flooding.result())
                elapsed = time.monotonic() - t0
            shadowed = lambda team: [b for b in l_up.requests if b["messages"][0]["content"].startswith(team)]  # noqa: E731
            wait_for(lambda: len(shadowed("b ")) == 3, "team-b's shadow calls")
            wait_for(lambda: len(j_up.requests) == len(l_up.requests) * 2, "the verdicts")
            metrics = httpx.get(f"{proxy.url.removesuffix('/v1')}/metrics", headers={"authorization": "Bearer kb"}).text
        # every check of team-b ran; team-a got at most its bucket plus its refill over the flood
        assert len(shadowed("b ")) == 3
        assert len(shadowed("a ")) <= 6 + elapsed * 36 / 60 + 1
        skipped = sum(
            metric(metrics, "hybridllm_shadow_calls_total", model=LARGE, outcome=o) for o in ("ceiling", "busy")
        )
        assert skipped == 90 - len(shadowed("a ")) and skipped > 0


def _models_file(tmp_path: Path, s_url: str, l_url: str, j_url: str) -> Path:
    """Prices of 1e6 per 1M tokens for the large model and the judge (a cost is its token count), a
    tenth of that for the small one."""
    p = tmp_path / "models.toml"
    p.write_text(
        'judge = "grader"\n'
        f'[models."{SMALL}"]\nspec = "s@{s_url}"\nprice_in = 100000\nprice_out = 100000\n'
        f'[models."{LARGE}"]\nspec = "l@{l_url}"\nprice_in = 1000000\nprice_out = 1000000\n'
        f'[models.grader]\nspec = "g@{j_url}"\nprice_in = 1000000\nprice_out = 1000000\n'
    )
    return p


def _tokens(body: dict[str, Any], reply: str) -> int:
    """What the fake upstream reports for one answer: the last message's words plus the reply's."""
    return len(body["messages"][-1]["content"].split()) + len(reply.split())


@pytest.mark.slow
def test_shadow_and_judge_calls_are_priced_on_metrics_and_in_the_log(router_dir, tmp_path):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        l_up.reply = lambda p: "large says five"
        j_up.reply = judge_reply
        port = free_port()
        args = ["--router", str(router_dir), "--models-file", str(_models_file(tmp_path, s_up.url, l_up.url, j_up.url)),
                "--port", str(port), "--shadow-rate", "1"]  # fmt: skip
        log = (tmp_path / "serve.log").open("w+")
        with running_serve(args, port, log=log):
            url = f"http://127.0.0.1:{port}/v1"
            for i in range(4):
                assert chat(url, TO_SMALL, f"what is two plus {i}").status_code == 200
            judged = lambda: metric(httpx.get(f"http://127.0.0.1:{port}/metrics").text,  # noqa: E731
                                    "hybridllm_shadow_tokens_total", role="judge", kind="completion")  # fmt: skip
            wait_for(lambda: judged() == 8 * 2, "the 8 verdicts counted")  # "VERDICT-<nonce>: 7", 2 words each
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        log.seek(0)
        lines = [json.loads(ln) for ln in log if ln.startswith("{") and '"event": "shadow"' in ln]
    shadow = sum(_tokens(b, "large says five") for b in l_up.requests)
    judged = [_tokens(b, judge_reply(b["messages"][-1]["content"])) for b in j_up.requests]
    assert metric(metrics, "hybridllm_shadow_cost_total", model=LARGE, role="shadow") == pytest.approx(shadow)
    assert metric(metrics, "hybridllm_shadow_cost_total", model="grader", role="judge") == pytest.approx(sum(judged))
    assert metric(metrics, "hybridllm_shadow_tokens_total", model="grader", role="judge", kind="prompt") == sum(
        len(b["messages"][-1]["content"].split()) for b in j_up.requests
    )
    # none of it in the served traffic's cost
    assert metric(metrics, "hybridllm_cost_total", model=LARGE) == 0
    assert len(lines) == 4 and all(ln["judge"]["model"] == "grader" and ln["judge"]["calls"] == 2 for ln in lines)
    assert sum(ln["cost"] for ln in lines) == pytest.approx(shadow)
    assert sum(ln["judge"]["cost"] for ln in lines) == pytest.approx(sum(judged))


def test_an_unpriced_judge_still_counts_its_tokens(router_dir):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        j_up.reply = judge_reply
        opts = ServeOptions(shadow_rate=1.0, prices={SMALL: (1.0, 1.0), LARGE: (2.0, 2.0)})
        ups = [upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l")]
        app = create_app(Router(router_dir), *ups, options=opts, judge=upstream("judge", j_up.url, "j"))
        with Proxy(app) as proxy:
            assert chat(proxy.url, TO_SMALL, "one two three").status_code == 200
            wait_for(lambda: len(j_up.requests) == 2, "the verdicts")
            base = proxy.url.removesuffix("/v1")
            judged = lambda: metric(httpx.get(f"{base}/metrics").text, "hybridllm_shadow_tokens_total",  # noqa: E731
                                    model="judge", role="judge", kind="completion")  # fmt: skip
            wait_for(lambda: judged() == 2 * 2, "the 2 verdicts counted")
            metrics = httpx.get(f"{base}/metrics").text
    prompt = sum(len(b["messages"][-1]["content"].split()) for b in j_up.requests)
    assert metric(metrics, "hybridllm_shadow_tokens_total", model="judge", role="judge", kind="prompt") == prompt
    assert metric(metrics, "hybridllm_shadow_cost_total", model="judge", role="judge") == 0  # no price, no cost
    assert metric(metrics, "hybridllm_shadow_cost_total", model=LARGE, role="shadow") > 0


def test_a_key_past_its_cap_gets_no_shadow_call_to_the_dearer_model(router_dir):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, FakeOpenAI() as j_up:
        j_up.reply = judge_reply
        opts = ServeOptions(
            shadow_rate=1.0, api_keys=["ka", "kb"], key_names={"ka": "team-a", "kb": "team-b"},
            budget_caps=["team-a=10/day"], prices={SMALL: (1e5, 1e5), LARGE: (1e6, 1e6)},
        )  # fmt: skip
        ups = [upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l")]
        app = create_app(Router(router_dir), *ups, options=opts, judge=upstream("judge", j_up.url, "j"))
        with Proxy(app) as proxy:
            # team-a asks for the large model 20 times: a few answers (4 tokens, cost 4 each) reach its
            # cap of 10, every later one is downgraded to the small model
            got = [chat(proxy.url, TO_LARGE, f"a {i}", "ka", max_tokens=4096) for i in range(20)]
            assert all(r.status_code == 200 for r in got)
            down = [r for r in got if r.headers["x-hybridllm-model"] == SMALL]
            assert len(down) >= 20 - 4 and all(
                "budget cap of key team-a" in r.headers["x-hybridllm-reason"] for r in down
            )
            # team-b, uncapped, is still shadow-checked on the large model (the control)
            assert chat(proxy.url, TO_SMALL, "b 0", "kb").status_code == 200
            checks = 20 - len(down) + 1  # team-a's answers from the large model are checked on the small one
            wait_for(lambda: len(j_up.requests) == 2 * checks, "the verdicts")
            metrics = httpx.get(f"{proxy.url.removesuffix('/v1')}/metrics", headers={"authorization": "Bearer kb"}).text
        replays = lambda up: [b["messages"][0]["content"] for b in up.requests if b.get("n") == 1]  # noqa: E731
        assert replays(l_up) == ["b 0"]  # no shadow call to the large model on team-a's behalf
        assert len(replays(s_up)) == 20 - len(down)  # the cheaper side still checks what team-a got from the large
        assert metric(metrics, "hybridllm_shadow_calls_total", model=LARGE, outcome="over_cap") == len(down)


# --- the bounds' parts, in memory -----------------------------------------------------------------


def test_replay_body_caps_every_length_field_and_keeps_the_rest():
    body = {"model": "m", "messages": [], "n": 3, "max_tokens": True, "max_completion_tokens": -5, "seed": 1}
    out = replay_body(body, "chat", 64)
    assert out == {"model": "m", "messages": [], "n": 1, "max_tokens": 64, "max_completion_tokens": 64, "seed": 1}
    assert body["n"] == 3  # the client's body is not changed
    assert body_chars({"a": ["x" * 10, {"b": "y" * 5}], "n": 3}, 100) == 19  # keys and digits count too
    assert body_chars(["z" * 1000] * 1000, 10) == 1000  # stops past the limit


def test_a_key_alone_takes_the_whole_ceiling_and_two_share_it():
    ceiling = FairCeiling(per_minute=60, max_pending=1000)
    assert sum(ceiling.take("a", 1) is None for _ in range(50)) == 10  # 10 s of 60 a minute
    # a second key: its own bucket, half the rate; the first key's flood does not touch it
    assert sum(ceiling.take("b", 1) is None for _ in range(50)) == 5
    assert ceiling.take("a", 1) == "ceiling"
    busy = FairCeiling(per_minute=10_000, max_pending=12)
    assert sum(busy.take("a", 1) is None for _ in range(20)) == 6  # half the queue: room for a newcomer
    assert sum(busy.take("b", 1) is None for _ in range(20)) == 4  # a third each with two keys
    busy.done("a", 6)
    assert busy.take("a", 1) is None
