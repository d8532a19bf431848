"""Forwarding Messages and Responses requests: :meth:`HTTPBackend.forward_raw` against real HTTP fake
upstreams of each protocol (the body's bytes and stream events relayed unchanged, each upstream's
own key in its protocol's header, a request never sent to another protocol's upstream), and the
official ``anthropic`` and ``openai`` SDKs through the routes wired from :mod:`hybridllm.serve.apis`
(tests/helpers/api_relay.py): plain and streamed answers, a streamed tool-use loop on one model,
usage with cache tokens, fallback, and each protocol's errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from hybridllm.backends import Answer, Failure, HTTPBackend, StreamBroke, make_backend
from hybridllm.errors import UsageError
from hybridllm.serve.apis import Usage, messages, responses
from tests.helpers.api_relay import ApiRelay
from tests.helpers.fake_anthropic import FakeAnthropic
from tests.helpers.fake_responses import FakeResponses

LIMITS = {"max_messages": 32, "turns": "all", "max_chars": 4000}
KA, KO = "sk-ant-upstream-key-0001", "sk-openai-upstream-key-0002"
TOOLS = [{"name": "search", "description": "web search", "input_schema": {"type": "object"}}]
FN = [{"type": "function", "name": "search", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture(scope="module")
def fa() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(key=KA) as fake:
        yield fake


@pytest.fixture(scope="module")
def fr() -> Iterator[FakeResponses]:
    with FakeResponses(key=KO) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean(fa: FakeAnthropic, fr: FakeResponses) -> None:
    fa.faults.clear()
    fr.faults.clear()
    fa.cache_read = fa.cache_creation = 0
    fr.cached = fr.cache_write = 0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def forward(backend: HTTPBackend, kind: str, data: bytes, stream: bool, headers: Any = None) -> Any:
    """One forward_raw call inside the backend's client; a stream is read to its end (or its break)."""
    async with backend:
        got = await backend.forward_raw(kind, data, stream, headers)
        if isinstance(got, Answer) and got.stream is not None:
            chunks: list[bytes] = []
            try:
                async for c in got.stream:
                    chunks.append(c)
            except StreamBroke as exc:
                return got, chunks, exc
            return got, chunks, None
        return got, None, None


# --- forward_raw against the fakes ----------------------------------------------------------------


def test_a_messages_body_reaches_its_upstream_byte_for_byte_with_its_own_key(fa: FakeAnthropic) -> None:
    raw = (b'{"max_tokens": 50,  "model":"hybrid", "messages":[{"role":"user","content":"hi \\u00e9"}],'
           b' "metadata": {"user_id": "u1"}, "temperature": 0.70}')  # fmt: skip
    req = messages.check(raw, {}, **LIMITS)
    client = {"anthropic-version": "2026-10-21", "anthropic-beta": "b1", "x-api-key": "client-key",
              "authorization": "Bearer client-key"}  # fmt: skip
    sent = req.for_upstream("claude-h")
    got, _, _ = run(forward(HTTPBackend("claude-h", fa.url, api_key=KA, api="messages"), "messages", sent, False,
                            messages.upstream_headers(client)))  # fmt: skip
    assert isinstance(got, Answer) and got.status == 200
    assert fa.raw[-1] == raw.replace(b'"hybrid"', b'"claude-h"')  # only the model name changed
    h = fa.headers[-1]
    assert h["x-api-key"] == KA and h["authorization"] == f"Bearer {KA}"  # the upstream's key, never the client's
    assert h["anthropic-version"] == "2026-10-21" and h["anthropic-beta"] == "b1"
    assert "client-key" not in json.dumps(h)
    payload = json.loads(got.data)
    assert got.payload == payload and messages.answer_text(payload) == "echo:hi é"


def test_the_backend_never_lets_a_caller_set_its_key_or_framing_headers(fa: FakeAnthropic) -> None:
    req = messages.check(json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
                         .encode(), {}, **LIMITS)  # fmt: skip
    hostile = {"X-Api-Key": "forged", "Authorization": "Bearer forged", "Host": "evil", "Content-Length": "1",
               "anthropic-beta": "a\r\nx-api-key: forged", "Cookie": "c=1"}  # fmt: skip
    got, _, _ = run(forward(HTTPBackend("m", fa.url, api_key=KA, api="messages"), "messages",
                            req.for_upstream("m"), False, hostile))  # fmt: skip
    assert isinstance(got, Answer) and got.status == 200
    h = fa.headers[-1]
    assert h["x-api-key"] == KA and h["authorization"] == f"Bearer {KA}" and "cookie" not in h
    assert "forged" not in json.dumps(h) and h["anthropic-version"] == "2023-06-01"  # the default version


def test_a_messages_stream_is_relayed_event_for_event(fa: FakeAnthropic) -> None:
    fa.cache_read, fa.cache_creation = 1000, 24
    body = {"model": "hybrid", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    req = messages.check(json.dumps(body).encode(), {}, **LIMITS)
    _, chunks, broke = run(forward(HTTPBackend("claude-h", fa.url, api_key=KA, api="messages"), "messages",
                                     req.for_upstream("claude-h"), True))  # fmt: skip
    assert broke is None and b"".join(chunks) == "".join(fa.sent[-1]).encode()
    watch = messages.StreamWatch()
    for c in chunks:
        watch.feed(c)
    assert watch.text == "echo:one two" and watch.usage == Usage(5 + 1000 + 24, 1000, 24, 2)


def test_a_responses_body_and_stream_reach_their_upstream_with_a_bearer_key(fr: FakeResponses) -> None:
    fr.cached, fr.cache_write = 512, 64
    raw = b'{"model":"hybrid","input":"alpha beta","stream":true,"store":false,"x_new_field":{"a":[1,2]}}'
    req = responses.check(raw, {"authorization": "Bearer client-key"}, **LIMITS)
    _, chunks, broke = run(forward(HTTPBackend("gpt-mini", fr.url, api_key=KO, api="responses"), "responses",
                                     req.for_upstream("gpt-mini"), True, responses.upstream_headers({})))  # fmt: skip
    assert broke is None and fr.raw[-1] == raw.replace(b'"hybrid"', b'"gpt-mini"')
    assert fr.headers[-1]["authorization"] == f"Bearer {KO}" and "x-api-key" not in fr.headers[-1]
    assert b"".join(chunks) == "".join(fr.sent[-1]).encode()
    watch = responses.StreamWatch()
    for c in chunks:
        watch.feed(c)
    assert watch.usage == Usage(5 + 512 + 64, 512, 64, 2) and watch.text == "echo:alpha beta"


def test_a_request_is_never_sent_to_an_upstream_of_another_protocol(fa: FakeAnthropic, fr: FakeResponses) -> None:
    before = (len(fa.raw), len(fr.raw))
    data = json.dumps({"model": "m", "input": "x"}).encode()
    for backend, kind in [(HTTPBackend("m", fa.url, api_key=KA, api="messages"), "responses"),
                          (HTTPBackend("m", fr.url, api_key=KO, api="responses"), "messages"),
                          (HTTPBackend("m", fr.url, api_key=KO), "responses"),
                          (HTTPBackend("m", fa.url, api_key=KA, api="responses"), "grpc")]:  # fmt: skip
        got, _, _ = run(forward(backend, kind, data, False))
        assert isinstance(got, Failure) and got.status == 502 and "not sent" in got.message

    async def chat_on_messages() -> Any:
        async with HTTPBackend("m", fa.url, api_key=KA, api="messages") as b:
            return await b.forward("chat", {"model": "m", "messages": []}, False)

    got = run(chat_on_messages())
    assert isinstance(got, Failure) and "speaks the messages API, not chat" in got.message
    assert (len(fa.raw), len(fr.raw)) == before
    with pytest.raises(UsageError, match="speaks the chat API only"):
        make_backend("qwen2.5-0.5b", api="messages")
    assert make_backend("m@http://127.0.0.1:9/v1", api="responses").api == "responses"


def test_upstream_errors_become_failures_or_are_relayed_without_the_key(fa: FakeAnthropic, fr: FakeResponses) -> None:
    data = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode()
    backend = HTTPBackend("m", fa.url, api_key=KA, api="messages")
    fa.faults.extend(["529", "429", "echo-key"])
    overloaded, _, _ = run(forward(backend, "messages", data, False))
    assert isinstance(overloaded, Failure) and overloaded.status == 502 and "529" in overloaded.message
    limited, _, _ = run(forward(backend, "messages", data, False))
    assert isinstance(limited, Failure) and limited.status == 429 and limited.retry_after == "0"
    said, _, _ = run(forward(backend, "messages", data, False))
    assert isinstance(said, Answer) and said.status == 400 and KA.encode() not in said.data
    assert json.loads(said.data)["error"]["type"] == "invalid_request_error"  # Anthropic's shape, relayed
    fr.faults.append("echo-key")
    said, _, _ = run(forward(HTTPBackend("m", fr.url, api_key=KO, api="responses"), "responses", data, False))
    assert isinstance(said, Answer) and KO.encode() not in said.data and b"[redacted]" in said.data


def test_a_stream_that_breaks_midway_raises_stream_broke(fa: FakeAnthropic) -> None:
    fa.faults.append("midstream")
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}
    _, chunks, broke = run(forward(HTTPBackend("m", fa.url, api_key=KA, api="messages"), "messages",
                                     json.dumps(body).encode(), True))  # fmt: skip
    assert isinstance(broke, StreamBroke) and b"".join(chunks) == "".join(fa.sent[-1]).encode()


# --- the official SDKs through the wired routes ---------------------------------------------------


@pytest.fixture(scope="module")
def relay(fa: FakeAnthropic, fr: FakeResponses) -> Iterator[ApiRelay]:
    ups = {"haiku": ("claude-haiku", fa.url, KA, "messages"), "opus": ("claude-opus", fa.url, KA, "messages"),
           "mini": ("gpt-mini", fr.url, KO, "responses"), "full": ("gpt-full", fr.url, KO, "responses")}  # fmt: skip
    with ApiRelay(ups, keys=["client-1"]) as r:
        yield r


@pytest.fixture
def claude(relay: ApiRelay) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="client-1", base_url=relay.url, max_retries=0)


@pytest.fixture
def oai(relay: ApiRelay) -> openai.OpenAI:
    return openai.OpenAI(api_key="client-1", base_url=relay.url + "/v1", max_retries=0)


def test_anthropic_sdk_plain_and_streamed(claude: anthropic.Anthropic, relay: ApiRelay, fa: FakeAnthropic) -> None:
    fa.cache_read, fa.cache_creation = 2048, 128
    m = claude.messages.create(model="haiku", max_tokens=64, messages=[{"role": "user", "content": "hello there"}])
    assert m.content[0].type == "text" and m.content[0].text == "echo:hello there" and m.model == "claude-haiku"
    assert m.usage.cache_read_input_tokens == 2048
    rec = relay.records[-1]
    assert (rec.model, rec.status, rec.text) == ("haiku", 200, "echo:hello there")
    assert rec.usage == Usage(5 + 2048 + 128, 2048, 128, 2).as_chat()
    assert fa.headers[-1]["x-api-key"] == KA and "client-1" not in json.dumps(fa.headers[-1])
    with claude.messages.stream(model="opus", max_tokens=64, messages=[{"role": "user", "content": "a b c"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "echo:a b c" and final.usage.output_tokens == 3 and final.model == "claude-opus"
    assert relay.records[-1].usage == Usage(6 + 2048 + 128, 2048, 128, 3).as_chat() and relay.records[-1].text == text


def test_anthropic_sdk_streamed_tool_loop_stays_on_its_model(claude: anthropic.Anthropic, relay: ApiRelay) -> None:
    history: list[Any] = [{"role": "user", "content": "capital of France?"}]
    with claude.messages.stream(model="haiku", max_tokens=64, messages=history, tools=TOOLS) as s:
        first = s.get_final_message()
    assert first.stop_reason == "tool_use" and relay.records[-1].tool_loop is None
    call = first.content[0]
    assert call.type == "tool_use" and call.name == "search" and call.input == {"query": "capital of France?"}
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "Paris"}
    history += [{"role": "assistant", "content": [c.model_dump(exclude_none=True) for c in first.content]},
                {"role": "user", "content": [result]}]  # fmt: skip
    with claude.messages.stream(model="haiku", max_tokens=64, messages=history, tools=TOOLS) as s:
        second = s.get_final_message()
    assert second.stop_reason == "end_turn" and second.content[0].text == 'echo:tool said "Paris"'
    rec = relay.records[-1]
    assert rec.model == "haiku" and rec.tool_loop is not None and rec.tool_loop.call_ids == (call.id,)


def test_openai_responses_plain_streamed_and_a_function_call_loop(oai: openai.OpenAI, relay: ApiRelay,
                                                                   fr: FakeResponses) -> None:  # fmt: skip
    fr.cached = 300
    r = oai.responses.create(model="mini", input="hello world", instructions="be brief")
    assert r.output_text == "echo:hello world" and r.model == "gpt-mini"
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 300
    assert relay.records[-1].usage == Usage(5 + 300, 300, 0, 2).as_chat()
    events = list(oai.responses.create(model="full", input=[{"role": "user", "content": "x y"}], stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "echo:x y"
    assert relay.records[-1].usage == Usage(5 + 300, 300, 0, 2).as_chat() and relay.records[-1].model == "full"
    first = oai.responses.create(model="mini", input="weather?", tools=FN)  # type: ignore[arg-type]
    call = first.output[0]
    assert call.type == "function_call" and call.name == "search"
    follow = [{"role": "user", "content": "weather?"}, call.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]  # fmt: skip
    second = oai.responses.create(model="mini", input=follow, tools=FN)  # type: ignore[arg-type]
    assert second.output_text == "echo:tool said sunny"
    assert relay.records[-1].tool_loop is not None and relay.records[-1].tool_loop.call_ids == (call.call_id,)


def test_fallback_within_the_protocol(claude: anthropic.Anthropic, relay: ApiRelay, fa: FakeAnthropic,
                                      fr: FakeResponses) -> None:  # fmt: skip
    fa.faults.append("529")
    before = len(fr.raw)
    m = claude.messages.create(model="haiku", max_tokens=8, messages=[{"role": "user", "content": "q"}])
    assert m.model == "claude-opus" and relay.records[-1].model == "opus"
    assert len(fr.raw) == before  # the Responses upstreams were never asked


def test_errors_in_each_protocols_shape(claude: anthropic.Anthropic, oai: openai.OpenAI, relay: ApiRelay) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="haiku", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    said = "'max_tokens' is required and must be a positive integer"
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": said}}
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="mini", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    nokey = anthropic.Anthropic(api_key="wrong", base_url=relay.url, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        nokey.messages.create(model="haiku", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as rbad:
        oai.responses.create(model="mini", input=[{"role": "tool", "content": "x"}])  # type: ignore[list-item]
    assert rbad.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert "input[0].role" in rbad.value.body["message"]  # type: ignore[index]


def test_a_broken_stream_ends_with_the_protocols_error_event(
    claude: anthropic.Anthropic, oai: openai.OpenAI, fa: FakeAnthropic, fr: FakeResponses
) -> None:
    fa.faults.append("midstream")
    ask = {"model": "haiku", "max_tokens": 8, "messages": [{"role": "user", "content": "a b"}]}
    with pytest.raises(anthropic.APIStatusError, match="failed mid-stream"), claude.messages.stream(**ask) as s:
        s.get_final_message()
    fr.faults.append("midstream")
    events = list(oai.responses.create(model="mini", input="a b c", stream=True))
    assert events[-1].type == "error" and "failed mid-stream" in events[-1].message
