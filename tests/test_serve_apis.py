"""``hybridllm serve`` speaking Anthropic's Messages API (``/v1/messages``) and OpenAI's Responses API
(``/v1/responses``): the official ``anthropic`` and ``openai`` SDKs against the real app (in process
through its ASGI interface, or on a socket where the stream's pacing is the point) and real HTTP fake
upstreams of each protocol. Plain and streamed answers relayed byte for byte but the model name, each
upstream's own key only, a streamed tool loop kept on its model, fallback within the protocol only, a
budget cap that bites on Messages usage (cache reads counted), a shadow pair scored on a Responses
request, and every refusal in the endpoint's own error shape."""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import openai
import pytest

from hybridllm.backends import HTTPBackend
from hybridllm.routing.capabilities import ModelCaps
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.hooks import BaseHook

from .conftest import LARGE, SMALL
from .helpers.agent_apis import FN, KA, KO, TOOLS
from .helpers.fake_anthropic import FakeAnthropic
from .helpers.fake_judge import graded, verdict
from .helpers.fake_openai import FakeOpenAI
from .helpers.fake_responses import FakeResponses
from .helpers.proxy import InProcess, Proxy, upstream

CLIENT = "sk-client-key-0003"
ASK = {"max_tokens": 16, "messages": [{"role": "user", "content": "What is 2+2?"}]}


def claude_ups(fa: FakeAnthropic) -> list[HTTPBackend]:
    return [
        HTTPBackend("claude-haiku", fa.url, api_key=KA, name=SMALL, api="messages", concurrency=None, timeout_s=5),
        HTTPBackend("claude-opus", fa.url, api_key=KA, name=LARGE, api="messages", concurrency=None, timeout_s=5),
    ]


def gpt_ups(fr: FakeResponses) -> list[HTTPBackend]:
    return [
        HTTPBackend("gpt-mini", fr.url, api_key=KO, name=SMALL, api="responses", concurrency=None, timeout_s=5),
        HTTPBackend("gpt-full", fr.url, api_key=KO, name=LARGE, api="responses", concurrency=None, timeout_s=5),
    ]


def keyed(**kw: Any) -> ServeOptions:
    return ServeOptions(api_keys=[CLIENT], key_names={CLIENT: "team-a"}, **kw)


def claude(p: InProcess | Proxy, key: str = CLIENT) -> anthropic.Anthropic:
    if isinstance(p, InProcess):
        return anthropic.Anthropic(api_key=key, base_url="http://127.0.0.1", max_retries=0, http_client=p.http)
    return anthropic.Anthropic(api_key=key, base_url=p.url.removesuffix("/v1"), max_retries=0)


def access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access log's request lines (not the shadow or cap events)."""
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hybridllm.access"]
    return [x for x in lines if "event" not in x]


def test_anthropic_sdk_plain_answer_bytes_and_keys(router, fa: FakeAnthropic, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="hybridllm.access")
    fa.cache_read, fa.cache_creation = 2048, 128
    with InProcess(create_app(router, *claude_ups(fa), options=keyed())) as p:
        raw = claude(p).messages.with_raw_response.create(model="large", **ASK)  # type: ignore[call-overload]
        m = raw.parse()
        assert m.content[0].text == "echo:What is 2+2?" and m.model == "claude-opus"
        assert raw.headers["x-hybridllm-model"] == LARGE and raw.headers["x-hybridllm-reason"] == "forced large"
        # the client's bytes, its model name replaced by the upstream's, nothing else changed
        body = b'{"model" : "large",\n "max_tokens":16, "messages":[{"role":"user","content":"hi \\u00e9"}],"x":1.50}'
        r = p.http.post("/v1/messages", content=body, headers={"x-api-key": CLIENT, "anthropic-beta": "b1"})
        assert r.status_code == 200 and r.json()["model"] == "claude-opus"
        assert fa.raw[-1] == body.replace(b'"large"', b'"claude-opus"')
        h = fa.headers[-1]
        assert h["x-api-key"] == KA and h["authorization"] == f"Bearer {KA}" and h["anthropic-beta"] == "b1"
        assert CLIENT not in json.dumps(fa.headers)  # the client's key never reaches an upstream
        metrics = p.http.get("/metrics", headers={"x-api-key": CLIENT, "authorization": f"Bearer {CLIENT}"}).text
    line = access(caplog)[0]
    assert line["model"] == LARGE and line["status"] == 200 and line["key"] == "team-a"
    assert line["api"] == "messages"  # the access log names each request's protocol
    assert line["prompt_tokens"] == 6 + 2048 + 128 and line["completion_tokens"] == 3  # cache tokens counted
    assert f'hybridllm_tokens_total{{kind="prompt",model="{LARGE}"}}' in metrics


def test_a_messages_stream_is_relayed_event_by_event(
    router, fa: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="hybridllm.access")
    fa.stream_delay, fa.cache_read = 0.05, 100
    with Proxy(create_app(router, *claude_ups(fa), options=keyed())) as p:
        body = {"model": "small", "stream": True, **ASK}
        times, got = [], b""
        with httpx.stream("POST", p.url + "/messages", json=body, headers={"x-api-key": CLIENT}, timeout=10) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for chunk in r.iter_bytes():
                times.append(time.perf_counter())
                got += chunk
        assert got == "".join(fa.sent[-1]).encode()  # unchanged, usage events and all
        assert len(times) > 3 and times[-1] - times[0] > 0.2  # as they came, not buffered
        with claude(p).messages.stream(model="small", **ASK) as s:
            text = "".join(s.text_stream)
        assert text == "echo:What is 2+2?"
    lines = access(caplog)
    assert [x["stream"] for x in lines] == [True, True]
    assert lines[-1]["prompt_tokens"] == 6 + 100 and lines[-1]["completion_tokens"] == 3


def test_a_streamed_tool_loop_through_messages_stays_on_its_model(router, fa: FakeAnthropic) -> None:
    """The SDK insists on a model name of its own; the routing name comes in ``x-hybridllm-knob``."""
    with InProcess(create_app(router, *claude_ups(fa), options=keyed())) as p:
        c = claude(p).with_options(default_headers={"x-hybridllm-knob": "small"})
        history: list[Any] = [{"role": "user", "content": "capital of France?"}]
        with c.messages.stream(model="claude-sonnet-5-5", max_tokens=64, messages=history, tools=TOOLS) as s:
            first = s.get_final_message()
        call = first.content[0]
        assert first.stop_reason == "tool_use" and call.type == "tool_use" and call.name == "search"
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "Paris"}
        history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                    {"role": "user", "content": [result]}]  # fmt: skip
        with c.messages.stream(model="claude-sonnet-5-5", max_tokens=64, messages=history, tools=TOOLS) as s:
            second = s.get_final_message()
        assert second.content[0].type == "text" and second.content[0].text == 'echo:tool said "Paris"'
        assert [r["model"] for r in fa.requests[-2:]] == ["claude-haiku", "claude-haiku"]
        assert first.model == second.model == "claude-haiku"
        assert fa.requests[-1]["messages"][-1]["content"][0]["tool_use_id"] == call.id


def test_openai_responses_plain_streamed_and_a_function_call_loop(router, fr: FakeResponses) -> None:
    fr.cached = 300
    with InProcess(create_app(router, *gpt_ups(fr), options=keyed())) as p:
        oai = p.openai(CLIENT)
        r = oai.responses.with_raw_response.create(model="small", input="hello world", instructions="be brief")
        resp = r.parse()
        assert resp.output_text == "echo:hello world" and resp.model == "gpt-mini"
        assert r.headers["x-hybridllm-model"] == SMALL and fr.headers[-1]["authorization"] == f"Bearer {KO}"
        events = list(oai.responses.create(model="large", input=[{"role": "user", "content": "x y"}], stream=True))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "echo:x y"
        assert fr.requests[-1]["model"] == "gpt-full"
        first = oai.responses.create(model="small", input="weather?", tools=FN)  # type: ignore[arg-type]
        call = first.output[0]
        assert call.type == "function_call" and call.name == "search"
        follow = [{"role": "user", "content": "weather?"}, call.model_dump(exclude_none=True),
                  {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]  # fmt: skip
        second = oai.responses.create(model="small", input=follow, tools=FN)  # type: ignore[arg-type]
        assert second.output_text == "echo:tool said sunny"
        assert CLIENT not in json.dumps(fr.headers)


def test_fallback_stays_within_the_protocol(router, fa: FakeAnthropic, fr: FakeResponses) -> None:
    with InProcess(create_app(router, *claude_ups(fa), options=keyed())) as p:
        fa.faults.append("529")
        raw = claude(p).messages.with_raw_response.create(model="hybrid-t-0", **ASK)  # type: ignore[call-overload]
        assert raw.parse().model == "claude-opus" and raw.headers["x-hybridllm-fallback-from"] == SMALL
    # a fleet of two protocols: a request never goes to the other one, not even to fall back
    mixed = [gpt_ups(fr)[0], claude_ups(fa)[1]]
    before = len(fr.raw)
    with InProcess(create_app(router, *mixed, options=keyed())) as p:
        for _ in range(3):  # routed to the cheapest (threshold 0): moved to the one model that speaks Messages
            m = claude(p).messages.with_raw_response.create(model="hybrid-t-0", **ASK)  # type: ignore[call-overload]
            assert m.parse().model == "claude-opus" and m.headers["x-hybridllm-model"] == LARGE
            assert f"{SMALL} speaks responses, not messages" in m.headers["x-hybridllm-reason"]
        fa.faults.append("500")
        with pytest.raises(anthropic.InternalServerError) as failed:
            claude(p).messages.create(model="hybrid-t-0", **ASK)
        assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError, match="speaks the responses API, not messages"):
            claude(p).messages.create(model="small", **ASK)  # forced to a model of the other protocol
        assert len(fr.raw) == before  # the Responses upstream was never asked
        chat = p.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT}"},
                           json={"model": "hybrid", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
        assert chat.status_code == 404
        assert chat.json()["error"]["message"] == "no model of this server speaks the chat API"
        out = p.openai(CLIENT).responses.create(model="hybrid-t-1", input="q")  # routed to the dearest
        assert out.model == "gpt-mini" and len(fr.raw) == before + 1


def test_a_budget_cap_bites_on_messages_usage(router, fa: FakeAnthropic, caplog: pytest.LogCaptureFixture) -> None:
    """The first answer's usage, cache reads included, spends the cap; the next request is refused in
    Anthropic's shape, before any upstream is asked."""
    caplog.set_level("INFO", logger="hybridllm.access")
    fa.cache_read = 20_000
    opts = keyed(budget_caps=["team-a=0.01/day"], on_cap="refuse", prices={SMALL: (1.0, 2.0), LARGE: (1.0, 2.0)})
    with InProcess(create_app(router, *claude_ups(fa), options=opts)) as p:
        c = claude(p)
        first = c.messages.create(model="small", **ASK)
        assert first.usage.cache_read_input_tokens == 20_000
        asked = len(fa.raw)
        with pytest.raises(anthropic.RateLimitError) as refused:
            c.messages.create(model="small", **ASK)
        body = refused.value.body
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert "budget cap of key team-a reached" in body["error"]["message"]  # type: ignore[index]
        assert len(fa.raw) == asked
    lines = access(caplog)
    assert lines[0]["prompt_tokens"] == 6 + 20_000 and lines[0]["cost"] == pytest.approx((20_006 * 1.0 + 3 * 2.0) / 1e6)
    assert lines[1]["status"] == 429


def test_a_request_continuing_a_stored_conversation_reserves_the_context_window(router, fr: FakeResponses) -> None:
    """A few bytes that continue a stored conversation bring in a prompt the body does not show: the
    cap reserves the model's context window for it (200k tokens when the models file is silent), so
    a tenant cannot run many such requests at once for the price of their bytes."""
    prices = {SMALL: (1.0, 2.0), LARGE: (1.0, 2.0)}  # per 1M tokens: a 200k-token prompt costs 0.2
    opts = keyed(budget_caps=["team-a=0.05/day"], on_cap="refuse", prices=prices)

    def two_at_once(options: ServeOptions) -> list[str]:
        with Proxy(create_app(router, *gpt_ups(fr), options=options)) as p:
            oai = openai.OpenAI(api_key=CLIENT, base_url=p.url, max_retries=0)
            first = oai.responses.create(model="small", input="hello")  # its bytes bound it: admitted
            fr.faults.extend(["sleep:1.5", "sleep:1.5"])  # both in flight together

            def go_on(_: int) -> str:
                try:
                    return oai.responses.create(model="small", input="go on", previous_response_id=first.id).status
                except openai.RateLimitError as exc:
                    assert "budget cap of key team-a reached" in str(exc)
                    return "refused"

            with ThreadPoolExecutor(2) as pool:
                return sorted(pool.map(go_on, range(2)))

    assert two_at_once(opts) == ["completed", "refused"]  # 200k + 4k tokens reserved: 0.208 of 0.05
    sized = {m: ModelCaps(m, context_window=16_000) for m in (SMALL, LARGE)}  # 16k + 4k tokens: 0.024 each
    fr.faults.clear()
    assert two_at_once(dataclasses.replace(opts, capabilities=sized)) == ["completed", "completed"]


def test_a_bug_in_a_hook_fails_its_request_alone_in_the_endpoints_shape(
    router, fa: FakeAnthropic, fr: FakeResponses
) -> None:
    """A hook that raises: a 500 in the protocol's own error shape, with the request id the access
    log names (Anthropic's body carries it too), and the next request is served."""

    class Broken(BaseHook):
        async def before_call(self, ctx: Any) -> None:
            if ctx.body.get("metadata", {}).get("user_id") == "boom":
                raise RuntimeError("a bug")

    with InProcess(create_app(router, *claude_ups(fa), options=keyed(), hooks=[Broken()])) as p:
        r = p.http.post("/v1/messages", headers={"x-api-key": CLIENT},
                        json={**ASK, "model": "small", "metadata": {"user_id": "boom"}})  # fmt: skip
        rid = r.headers["x-hybridllm-request-id"]
        assert r.status_code == 500 and r.json()["type"] == "error" and r.json()["request_id"] == rid
        assert r.json()["error"]["type"] == "api_error" and "RuntimeError" in r.json()["error"]["message"]
        assert claude(p).messages.create(model="small", **ASK).content
    with InProcess(create_app(router, *gpt_ups(fr), options=keyed(), hooks=[Broken()])) as p:
        r = p.http.post("/v1/responses", headers={"authorization": f"Bearer {CLIENT}"},
                        json={"model": "small", "input": "hi", "metadata": {"user_id": "boom"}})  # fmt: skip
        assert r.status_code == 500 and r.headers["x-hybridllm-request-id"] in r.json()["error"]["message"]


def test_a_shadow_pair_is_scored_on_a_responses_request(router, fr: FakeResponses) -> None:
    with FakeOpenAI() as j_up:
        j_up.reply = lambda prompt: verdict(prompt, 7 if graded(prompt, "response").startswith("echo:") else 1)
        opts = keyed(shadow_rate=1.0, shadow_max_tokens=40)
        app = create_app(router, *gpt_ups(fr), options=opts, judge=upstream("judge", j_up.url, "j"))
        with InProcess(app) as p:
            r = p.openai(CLIENT).responses.with_raw_response.create(
                model="hybrid", input=[{"role": "user", "content": "name a prime"}], max_output_tokens=500
            )
            served = r.headers["x-hybridllm-model"]
            deadline = time.time() + 10
            while len(j_up.requests) < 2 and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            metrics = p.http.get("/metrics", headers={"authorization": f"Bearer {CLIENT}"}).text
        other = LARGE if served == SMALL else SMALL
        replay = fr.requests[-1]
        assert replay["model"] == ("gpt-full" if other == LARGE else "gpt-mini")
        assert replay["stream"] is False and replay["store"] is False and replay["max_output_tokens"] == 40
        assert len(j_up.requests) == 2
        for req in j_up.requests:  # the judge read the conversation and each side's answer
            prompt = req["messages"][-1]["content"]
            assert "name a prime" in graded(prompt, "prompt") and graded(prompt, "response") == "echo:name a prime"
        assert f'hybridllm_shadow_calls_total{{model="{other}",outcome="scored"}} 1.0' in metrics


def test_each_refusal_comes_in_the_endpoints_error_shape(router, fa: FakeAnthropic, fr: FakeResponses) -> None:
    def anthropic_shaped(r: httpx.Response, status: int, etype: str) -> str:
        body = r.json()
        assert r.status_code == status and body["type"] == "error" and body["error"]["type"] == etype, r.text
        assert body["request_id"] == r.headers["x-hybridllm-request-id"]
        return str(body["error"]["message"])

    def openai_shaped(r: httpx.Response, status: int) -> str:
        err = r.json()["error"]
        assert r.status_code == status and set(err) == {"message", "type", "param", "code"}, r.text
        return str(err["message"])

    ka = {"x-api-key": CLIENT}
    ko = {"authorization": f"Bearer {CLIENT}"}
    opts = keyed(max_body_bytes=20_000)
    with InProcess(create_app(router, *claude_ups(fa), options=opts)) as p:
        with pytest.raises(anthropic.BadRequestError) as bad:  # the SDK, a malformed body
            claude(p).messages.create(model="small", max_tokens=0, messages=[{"role": "user", "content": "x"}])
        assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        post = p.http.post
        said = anthropic_shaped(post("/v1/messages", headers=ka, json={"model": "small", "messages": []}), 400,
                                "invalid_request_error")  # fmt: skip
        assert "max_tokens" in said
        assert anthropic_shaped(post("/v1/messages", content=b"{nope", headers=ka), 400, "invalid_request_error")
        anthropic_shaped(post("/v1/messages", headers={"x-api-key": "wrong"}, json=ASK), 401, "authentication_error")
        anthropic_shaped(post("/v1/messages", headers=ka, json={"model": "nope", **ASK}), 404, "not_found_error")
        big = {"model": "small", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 30_000}]}
        anthropic_shaped(post("/v1/messages", headers=ka, json=big), 413, "request_too_large")
        fa.faults.extend(["500", "500"])
        anthropic_shaped(post("/v1/messages", headers=ka, json={"model": "hybrid-t-0", **ASK}), 502, "api_error")
        wrong = p.http.get("/v1/messages", headers=ka)
        assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    with InProcess(create_app(router, *gpt_ups(fr), options=opts)) as p:
        with pytest.raises(openai.BadRequestError) as rbad:
            p.openai(CLIENT).responses.create(model="small", input=[{"role": "tool", "content": "x"}])  # type: ignore[list-item]
        assert "input[0].role" in rbad.value.body["message"]  # type: ignore[index]
        post = p.http.post
        assert "'input'" in openai_shaped(post("/v1/responses", headers=ko, json={"model": "small"}), 400)
        openai_shaped(post("/v1/responses", headers={"x-api-key": CLIENT}, json={"model": "small", "input": "x"}), 401)
        openai_shaped(post("/v1/responses", headers=ko, json={"model": "nope", "input": "x"}), 404)
        openai_shaped(post("/v1/responses", headers=ko, json={"model": "small", "input": "x" * 30_000}), 413)
        fr.faults.extend(["500", "500"])
        failed = post("/v1/responses", headers=ko, json={"model": "hybrid-t-0", "input": "x"})
        assert "answered 500" in openai_shaped(failed, 502) and not fr.faults
        # a broken stream ends with the protocol's own error event
        fr.faults.append("midstream")
        events = list(p.openai(CLIENT).responses.create(model="small", input="a b c", stream=True))
        assert events[-1].type == "error" and "mid-stream" in events[-1].message


def models_file(tmp_path: Any, fa: FakeAnthropic, fr: FakeResponses, apis: tuple[str, str]) -> Any:
    """A models file whose two models (the test router's) speak ``apis``, each with its key variable."""
    where = {"messages": (fa.url, "claude", "I36_ANT_KEY"), "responses": (fr.url, "gpt", "I36_OAI_KEY")}
    text = ""
    for name, api, size in zip((SMALL, LARGE), apis, ("small", "large"), strict=True):
        url, prefix, env = where[api]
        text += f'[models."{name}"]\nspec = "{prefix}-{size}@{url}"\napi = "{api}"\napi_key_env = "{env}"\ncost = 1\n\n'
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_the_models_file_api_key_makes_each_upstream_speak_its_protocol(
    router, tmp_path: Any, fa: FakeAnthropic, fr: FakeResponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridllm.serve.config import ServeConfig

    monkeypatch.setenv("I36_ANT_KEY", KA)
    monkeypatch.setenv("I36_OAI_KEY", KO)
    ups = ServeConfig(models_file=models_file(tmp_path, fa, fr, ("responses", "messages"))).upstreams(router)
    assert [(u.who, u.api, u.model) for u in ups] == [
        (SMALL, "responses", "gpt-small"),
        (LARGE, "messages", "claude-large"),
    ]
    assert [u.api_key for u in ups] == [KO, KA]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_docs_sdk_examples_run_against_hybridllm_serve(router_dir, tmp_path, fa, fr) -> None:
    """docs/serve.md's ``anthropic`` and ``openai`` ``responses.create`` examples, run as written (the
    port swapped) against ``hybridllm serve --models-file`` over the fake upstreams."""
    from .helpers.net import free_port
    from .helpers.procs import running_serve
    from .test_docs import readme_block, run_block

    env = {"I36_ANT_KEY": KA, "I36_OAI_KEY": KO}
    printed = {}
    for api, start in (("messages", "import anthropic"), ("responses", "import openai")):
        port = free_port()
        code = readme_block(start, "docs/serve.md").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        args = ["--router", str(router_dir), "--models-file", str(models_file(tmp_path, fa, fr, (api, api))),
                "--port", str(port)]  # fmt: skip
        with running_serve(args, port, env=env):
            printed[api] = run_block(code).splitlines()
    model, answer = printed["messages"][0].split(" ", 1)
    assert model in (SMALL, LARGE) and answer == "echo:What is 2 + 2?" and printed["messages"][1] == "tool_use"
    assert printed["responses"] == ["echo:What is 2 + 2?", "echo:Count to 3"]
    assert fa.requests[-1]["model"] in ("claude-small", "claude-large") and fa.headers[-1]["x-api-key"] == KA
