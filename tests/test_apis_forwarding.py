"""Forwarding Messages and Responses requests: :meth:`HTTPBackend.forward_raw` against real HTTP fake
upstreams of each protocol (the body's bytes and stream events relayed unchanged, each upstream's
own key in its protocol's header, a request never sent to another protocol's upstream). The official
SDKs through the server's routes: tests/test_serve_apis.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hybridllm.backends import Answer, Failure, HTTPBackend, StreamBroke, make_backend
from hybridllm.errors import UsageError
from hybridllm.serve.apis import Usage, messages, responses
from tests.helpers.agent_apis import KA, KO
from tests.helpers.fake_anthropic import FakeAnthropic
from tests.helpers.fake_responses import FakeResponses

LIMITS = {"max_messages": 32, "turns": "all", "max_chars": 4000}


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
