"""Issue 35 on the request path (docs/sessions.md): sessions, capabilities and windows, cost in money
with cached tokens, the budget hold in money; against real HTTP upstreams (tests/helpers/fake_openai:
one that refuses ``tools``, one with a small window, one that reports cached tokens, one that makes
tool calls), the proxy in process (its ASGI interface: the sockets are not the point here)."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest

from hybridllm.routing.capabilities import ModelCaps
from hybridllm.routing.money import Price
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.control.sessions import per_key_share

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.poll import sample
from .helpers.proxy import InProcess, upstream

KA, KB = "sk-team-a-secret", "sk-team-b-secret"
NAMES = {KA: "team-a", KB: "team-b"}
EASY, HARD = "hybrid-t-0", "hybrid-t-1.000001"  # every prompt to the small model; every prompt to the large
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
SECRET = b"k" * 32


def serve(router: Any, s_up: FakeOpenAI, l_up: FakeOpenAI, **opts: Any) -> InProcess:
    small = upstream(SMALL, s_up.url, "s-model", timeout_s=5.0)
    large = upstream(LARGE, l_up.url, "l-model", timeout_s=5.0)
    opts.setdefault("session_secret", SECRET)
    options = ServeOptions(api_keys=[KA, KB], key_names=NAMES, **opts)
    return InProcess(create_app(router, small, large, options=options))


def post(proxy: InProcess, body: dict[str, Any], key: str = KA, **headers: str) -> httpx.Response:
    return proxy.http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers})


def chat(model: str, *messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), **extra}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def said(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def metric(proxy: InProcess, name: str, **labels: str) -> float:
    """A sample of /metrics (0 when absent)."""
    return sample(proxy.http.get("/metrics", headers={"Authorization": f"Bearer {KA}"}).text, name, **labels)


def model_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.headers["x-hybridllm-model"]


def error_of(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "hybridllm.access"]


# --- capabilities and windows ---------------------------------------------------------------------

NO_TOOLS = {SMALL: ModelCaps(SMALL, supports=frozenset({"json_object"}))}


def test_a_tools_request_never_reaches_the_model_that_refuses_tools(router):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.refuse_tools = True
        with serve(router, s_up, l_up, capabilities=NO_TOOLS) as proxy:
            r = post(proxy, chat(EASY, user("What is the weather in Paris?"), tools=TOOLS))
            plain = post(proxy, chat(EASY, user("What is 2 + 2?")))
            filtered = metric(proxy, "hybridllm_capability_filtered_total", from_model=SMALL, to_model=LARGE,
                              lack="tools")  # fmt: skip
            router_decisions = metric(proxy, "hybridllm_routing_decisions_total", model=SMALL, reason="router")
    assert model_of(r) == LARGE and "cannot serve it (tools)" in r.headers["x-hybridllm-reason"]
    assert model_of(plain) == SMALL  # a request without tools goes where the router sends it
    assert all(not b.get("tools") for b in s_up.requests) and len(s_up.requests) == 1
    assert l_up.requests[0]["tools"] == TOOLS
    # counted apart: the router's own decisions still say it chose the small model twice
    assert filtered == 1 and router_decisions == 2


def test_a_long_prompt_never_reaches_the_small_window_model(router):
    window = {SMALL: ModelCaps(SMALL, context_window=400, max_output_tokens=200)}
    long = " ".join(f"word{i}" for i in range(2000))  # ~3.5k tokens by the estimate
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.window = 400
        with serve(router, s_up, l_up, capabilities=window) as proxy:
            far = post(proxy, chat(EASY, user(long)))
            near = post(proxy, chat(EASY, user("short question")))
            asked_much = post(proxy, chat(EASY, user("short question"), max_tokens=300))
            lack = metric(proxy, "hybridllm_capability_filtered_total", lack="context_window")
    assert model_of(far) == LARGE and model_of(near) == SMALL and model_of(asked_much) == LARGE
    assert len(s_up.requests) == 1 and s_up.requests[0]["messages"][0]["content"] == "short question"
    assert lack == 1


def test_a_fallback_goes_only_to_a_model_that_can_serve(router):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.refuse_tools = True
        l_up.faults.extend(["500", "500"])
        with serve(router, s_up, l_up, capabilities=NO_TOOLS) as proxy:
            failed = post(proxy, chat(HARD, user("look it up"), tools=TOOLS))
            fell_back = post(proxy, chat(HARD, user("just say hi")))  # no tools: the small model may answer
    assert failed.status_code >= 500 and error_of(failed)["type"] == "upstream_error"
    assert model_of(fell_back) == SMALL and fell_back.headers["x-hybridllm-fallback-from"] == LARGE
    assert len(s_up.requests) == 1 and "tools" not in s_up.requests[0]  # never the tools request


def test_forcing_a_model_that_lacks_a_capability_is_a_400_naming_it(router):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up, capabilities=NO_TOOLS) as proxy:
        r = post(proxy, chat(SMALL, user("look it up"), tools=TOOLS))
        img = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
        vision = post(proxy, chat("small", {"role": "user", "content": img}))
        ok = post(proxy, chat(SMALL, user("hi"), response_format={"type": "json_object"}))
        refused = metric(proxy, "hybridllm_capability_refused_total", model=SMALL, lack="tools")
    assert r.status_code == 400 and vision.status_code == 400
    err = error_of(r)
    assert err["param"] == "tools" and err["type"] == "invalid_request_error"
    assert err["message"] == (
        f"model {SMALL!r} cannot serve this request: it does not support tools (the request has tools or tool calls)"
    )
    assert "does not support vision" in error_of(vision)["message"] and error_of(vision)["param"] == "messages"
    assert model_of(ok) == SMALL and len(s_up.requests) == 1 and not l_up.requests
    assert refused == 1


# --- money ------------------------------------------------------------------------------------------


def test_cached_tokens_are_priced_at_the_cached_price(router):
    prices = {SMALL: Price(1.0, 2.0), LARGE: Price(10.0, 20.0, cached=1.0)}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        l_up.cached_tokens = 4
        l_up.reply = lambda p: "one two three"
        with serve(router, s_up, l_up, prices=prices) as proxy:
            r = post(proxy, chat(HARD, user("a b c d e f g h i j")))  # 10 prompt words, 4 of them cached
            stream = post(proxy, chat(HARD, user("a b c d e f g h i j"), stream=True))
            spent = metric(proxy, "hybridllm_cost_total", model=LARGE)
            best = metric(proxy, "hybridllm_cost_always_best_total")
    assert model_of(r) == LARGE and r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    assert stream.status_code == 200
    whole = (6 * 10.0 + 4 * 1.0 + 3 * 20.0) / 1e6
    streamed = (0 * 10.0 + 1 * 1.0 + 3 * 20.0) / 1e6  # the fake's stream counts 1 prompt token, cached
    assert spent == pytest.approx(whole + streamed) and best == pytest.approx(spent)


def test_the_budget_hold_runs_in_money_and_settles_each_answer(router):
    prices = {SMALL: Price(1.0, 2.0), LARGE: Price(10.0, 20.0, cached=1.0)}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        l_up.cached_tokens = 2
        with serve(router, s_up, l_up, prices=prices, hold="budget=30", sessions=False) as proxy:
            hold = proxy.http.app.state.hold  # type: ignore[attr-defined]
            for i in range(12):
                assert post(proxy, chat("hybrid", user(f"question {i}: what is {i} + {i}?"))).status_code == 200
            forced = post(proxy, chat(LARGE, user("not held")))
    assert forced.status_code == 200
    assert hold.money is not None and hold.state()["unit"] == "money"
    # every held request was observed before its call and settled from its usage (the forced one is not held)
    assert hold.seen == 12 and int(hold.money.answers_seen.sum()) == 12 and not hold._open
    served = len(s_up.requests) + len(l_up.requests) - 1
    assert served == 12 and hold.money.answers_seen[1] == len(l_up.requests) - 1


# --- sessions ---------------------------------------------------------------------------------------


def test_a_session_only_moves_up(router, caplog):
    caplog.set_level(logging.INFO, logger="hybridllm.access")
    sid = {"x-session-id": "conv-42"}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up) as proxy:
        one = post(proxy, chat(EASY, user("hi")), **sid)
        two = post(proxy, chat(HARD, user("hi"), said("hello"), user("prove it")), **sid)
        three = post(proxy, chat(EASY, user("hi"), said("hello"), user("prove it"), said("ok"), user("thanks")),
                     **sid)  # fmt: skip
        events = {e: metric(proxy, "hybridllm_session_events_total", event=e)
                  for e in ("pins", "escalations", "switches", "kept_down", "tool_loop_holds")}  # fmt: skip
    assert [model_of(r) for r in (one, two, three)] == [SMALL, LARGE, LARGE]
    assert three.headers["x-hybridllm-reason"].endswith(f"; session kept on {LARGE}")
    assert events == {"pins": 1, "escalations": 1, "switches": 1, "kept_down": 1, "tool_loop_holds": 0}
    lines = access_lines(caplog)
    assert [(x["session"], x["session_event"]) for x in lines] == [
        ("header", "pinned"), ("header", "escalated"), ("header", "kept")
    ]  # fmt: skip


def test_a_derived_session_holds_a_conversation_and_a_first_turn_is_routed_on_its_own(router):
    system = {"role": "system", "content": "You are terse."}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up) as proxy:
        first = post(proxy, chat(HARD, system, user("What is a monad?")))
        later = post(proxy, chat(EASY, system, user("What is a monad?"), said("..."), user("shorter")))
        again = post(proxy, chat(EASY, system, user("What is a monad?")))  # a new conversation opening alike
        other_key = post(proxy, chat(EASY, system, user("What is a monad?"), said("..."), user("x")), key=KB)
    assert [model_of(r) for r in (first, later, again, other_key)] == [LARGE, LARGE, SMALL, SMALL]


def test_a_streamed_tool_loop_stays_on_its_model(router):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        l_up.tool_calls = s_up.tool_calls = True
        for sessions in (True, False):
            with serve(router, s_up, l_up, sessions=sessions) as proxy:
                c = openai.OpenAI(base_url=proxy.url, api_key=KA, max_retries=0, http_client=proxy.http)
                ask = [user("find the population of Lyon")]
                raw = c.chat.completions.with_raw_response.create(model=HARD, messages=ask, tools=TOOLS, stream=True)
                chunks = list(raw.parse())
                calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
                call_id, name = calls[0].id, calls[0].function.name
                args = "".join(tc.function.arguments or "" for tc in calls)
                history = [*ask, {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
                    {"role": "tool", "tool_call_id": call_id, "content": "522,250"}]  # fmt: skip
                # the knob now sends every prompt to the small model: the tool result still goes back to the caller
                back = c.chat.completions.with_raw_response.create(model=EASY, messages=history, tools=TOOLS,
                                                                   stream=True)  # fmt: skip
                text = "".join(ch.choices[0].delta.content or "" for ch in back.parse() if ch.choices)
                holds = metric(proxy, "hybridllm_session_events_total", event="tool_loop_holds")
                overrides = metric(proxy, "hybridllm_session_events_total", event="tool_loop_overrides")
            assert raw.headers["x-hybridllm-model"] == LARGE and name == "lookup" and json.loads(args)
            if sessions:
                assert back.headers["x-hybridllm-model"] == LARGE and holds == 1 and overrides == 1
                assert l_up.requests[-1]["messages"][-1]["role"] == "tool" and not s_up.requests
                assert text.startswith("echo:522,250")
            else:  # without sessions the knob wins: the tool result goes to a model that made no call
                assert back.headers["x-hybridllm-model"] == SMALL and holds == 0
                assert s_up.requests[-1]["messages"][-1]["role"] == "tool"


def test_a_key_reusing_another_key_s_session_id_and_a_flood_leave_its_pins_as_they_were(router):
    # 2 keys: 4 pins each at most
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up, session_capacity=8) as proxy:
        hook = proxy.http.app.state.live_control.sessions  # type: ignore[attr-defined]
        assert hook.memory.per_key == per_key_share(8, 2) == 4
        for sid in ("conv-1", "conv-2"):  # team-a's sessions, on the large model
            assert model_of(post(proxy, chat(HARD, user("hard one")), **{"x-session-id": sid})) == LARGE
        # team-b names team-a's session: its own session of that name, not team-a's pin
        theirs = post(proxy, chat(EASY, user("q"), said("a"), user("q2")), key=KB, **{"x-session-id": "conv-1"})
        for i in range(100):  # then floods new session ids
            assert post(proxy, chat(EASY, user(f"flood {i}")), key=KB, **{"x-session-id": f"f-{i}"}).status_code == 200
        mine = [post(proxy, chat(EASY, user("hard one"), said("a"), user("more")), **{"x-session-id": s})
                for s in ("conv-1", "conv-2")]  # fmt: skip
        held = hook.memory.count("team-a"), hook.memory.count("team-b")
    assert model_of(theirs) == SMALL
    assert [model_of(r) for r in mine] == [LARGE, LARGE]  # still pinned: kept, not pinned afresh
    assert all(r.headers["x-hybridllm-reason"].endswith(f"session kept on {LARGE}") for r in mine)
    assert held == (2, 4)  # the flood evicted team-b's own pins only


@pytest.mark.parametrize(
    ("headers", "body", "param", "words"),
    [
        ({"x-session-id": "has space"}, {}, "x-session-id", "printable ASCII without spaces"),
        ({"x-session-id": "x" * 129}, {}, "x-session-id", "1 to 128 characters"),
        ({}, {"user": 12}, "user", "must be a string"),
        ({}, {"metadata": {"session_id": ["a"]}}, "metadata.session_id", "must be a string"),
        ({}, {"messages": [user("hi"), {"role": "tool", "tool_call_id": "c1", "content": "x"}]}, "messages",
         "messages[1]: tool message 'c1' matches no unanswered tool call"),
        ({}, {"messages": [user("hi"), {"role": "assistant", "tool_calls": {"id": "c1"}}]}, "messages",
         "messages[1].tool_calls must be a non-empty list"),
        ({}, {"messages": [user("hi"), {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, user("and?")]},
         "messages", "messages[2]: user message while tool calls are unanswered"),
    ],
)  # fmt: skip
def test_malformed_session_ids_and_tool_histories_are_400s_naming_the_field(router, headers, body, param, words):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up) as proxy:
        r = post(proxy, {**chat(EASY, user("hi")), **body}, **headers)
        forced = post(proxy, {**chat(SMALL, user("hi")), **body}, **headers)
    for got in (r, forced):
        assert got.status_code == 400
        err = error_of(got)
        assert err["param"] == param and err["type"] == "invalid_request_error" and words in err["message"]
    assert not s_up.requests and not l_up.requests


def test_a_failover_moves_the_session_to_the_model_that_answered(router):
    sid = {"x-session-id": "conv-f"}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up) as proxy:
        one = post(proxy, chat(EASY, user("hi")), **sid)
        s_up.faults.append("500")
        two = post(proxy, chat(EASY, user("hi"), said("hello"), user("go on")), **sid)
        three = post(proxy, chat(EASY, user("hi"), said("hello"), user("go on"), said("k"), user("more")), **sid)
        moves = metric(proxy, "hybridllm_session_events_total", event="moves")
    assert [model_of(r) for r in (one, two, three)] == [SMALL, LARGE, LARGE]
    assert two.headers["x-hybridllm-fallback-from"] == SMALL and moves == 1


def test_sessions_off_route_each_turn_on_its_own(router):
    sid = {"x-session-id": "conv-off"}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up, sessions=False) as proxy:
        one = post(proxy, chat(HARD, user("hi")), **sid)
        two = post(proxy, chat(EASY, user("hi"), said("hello"), user("go on")), **sid)
        bad = post(proxy, chat(EASY, user("hi")), **{"x-session-id": "not checked"})
        text = proxy.http.get("/metrics", headers={"Authorization": f"Bearer {KA}"}).text
    assert [model_of(r) for r in (one, two, bad)] == [LARGE, SMALL, SMALL]
    assert "hybridllm_session_events" not in text


def test_a_missing_session_secret_is_warned_about_only_when_replicas_share_pins(caplog):
    """A lone server's own key is all it needs (its access log stays JSON only); with pins in Redis,
    replicas keyed apart derive different ids for one conversation, so that case is said."""
    from hybridllm.serve.control.sessions import secret

    caplog.set_level("WARNING")
    assert secret(b"k" * 32) == b"k" * 32
    a, b = secret(None), secret(None)
    assert len(a) == 32 and a != b and not caplog.records
    secret(None, shared=True)
    assert [r.getMessage() for r in caplog.records if "no session secret" in r.getMessage()]
