"""The Messages and Responses protocols' answers (hybridllm.serve.apis): usage normalised (cache
reads and writes), answer text, streams read event by event however their bytes are cut, each
protocol's error shape, client keys and upstream headers, shadow replays, token bounds; and the
models file's ``api`` key."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm.serve.apis import Usage, messages, responses
from hybridllm.serve.settle import DEFAULT_CONTEXT_TOKENS, Limits, token_bound
from tests.helpers.api_bodies import M_BODY, R_BODY, check
from tests.helpers.fake_anthropic import FakeAnthropic
from tests.helpers.fake_responses import FakeResponses

# --- usage ------------------------------------------------------------------------------------------


def test_messages_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    u = messages.usage({"input_tokens": 10, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 50,
                        "output_tokens": 7})  # fmt: skip
    assert u == Usage(360, 300, 50, 7)
    assert u.as_chat() == {"prompt_tokens": 360, "completion_tokens": 7, "total_tokens": 367,
                           "prompt_tokens_details": {"cached_tokens": 300, "cache_creation_tokens": 50}}  # fmt: skip
    assert messages.usage({"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": None}) == Usage(3, 0, 0, 1)
    bad_counts = [True, -1, 10**13, 1.0, "3", None]
    for bad in [{"input_tokens": n, "output_tokens": 1} for n in bad_counts] + [{"output_tokens": 1}, [], None]:
        assert messages.usage(bad) is None


def test_responses_usage_counts_cached_tokens_within_the_prompt() -> None:
    u = responses.usage({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 20},
                         "output_tokens": 9})  # fmt: skip
    assert u == Usage(100, 64, 20, 9)
    # cached never more than the prompt, a malformed details object read as no cache
    assert responses.usage(
        {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 9}, "output_tokens": 1}
    ) == Usage(5, 5, 0, 1)
    assert responses.usage({"input_tokens": 5, "input_tokens_details": "x", "output_tokens": 1}) == Usage(5, 0, 0, 1)
    assert responses.usage({"input_tokens": 5}) is None


def test_answer_text_and_usage_of_whole_answers() -> None:
    msg = {"content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                       {"type": "text", "text": "b"}], "usage": {"input_tokens": 1, "output_tokens": 2}}  # fmt: skip
    assert messages.answer_text(msg) == "a\nb" and messages.answer_usage(msg) == Usage(1, 0, 0, 2)
    resp = {"id": "resp_9", "output": [{"type": "reasoning"}, {"type": "message", "content": [
        {"type": "output_text", "text": "hi"}, {"type": "refusal", "refusal": "no"}]}]}  # fmt: skip
    assert responses.answer_text(resp) == "hi" and responses.response_id(resp) == "resp_9"
    for junk in (None, [], {"content": "x"}, {"output": [1, None]}, "s"):
        assert messages.answer_text(junk) == "" and responses.answer_text(junk) == ""
        assert messages.answer_usage(junk) is None and responses.answer_usage(junk) is None


# --- streams ------------------------------------------------------------------------------------------


def _anthropic_events(tools: bool) -> list[str]:
    fake = FakeAnthropic()  # not started: its event builder only
    fake.cache_read, fake.cache_creation = 100, 20
    body = {**M_BODY, "messages": [{"role": "user", "content": "hello big world"}]}
    if tools:
        body["tools"] = [{"name": "search", "input_schema": {"type": "object"}}]
    content, stop = fake._answer(body)
    out = 3
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": content,
           "stop_reason": stop, "stop_sequence": None, "usage": fake._usage(body, out)}  # fmt: skip
    return fake._events(msg)


def _responses_events() -> list[str]:
    fake = FakeResponses()
    fake.cached, fake.cache_write = 40, 8
    body = {**R_BODY, "input": "hello big world"}
    return fake._events(fake._response(body, fake._output(body), "completed"))


def _feed(watch: Any, events: list[str], cuts: list[int]) -> None:
    data = "".join(events).encode()
    at = 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        watch.feed(data[at:c])
        at = c
    watch.feed(data[at:])


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=30), crlf=st.booleans())
def test_stream_watches_read_usage_and_text_however_the_bytes_are_cut(cuts: list[int], crlf: bool) -> None:
    events = _anthropic_events(tools=False)
    if crlf:
        events = [e.replace("\n", "\r\n") for e in events]
    watch = messages.StreamWatch()
    _feed(watch, events, cuts)
    assert watch.text == "echo:hello big world" and watch.message_id == "msg_1"
    assert watch.usage == Usage(6 + 100 + 20, 100, 20, 3)  # message_start's prompt, message_delta's output
    rw = responses.StreamWatch()
    _feed(rw, _responses_events(), cuts)
    assert rw.text == "echo:hello big world" and rw.response_id == "resp_0000"
    assert rw.usage == Usage(6 + 40 + 8, 40, 8, 3)


def test_a_tool_use_stream_has_usage_and_no_text() -> None:
    watch = messages.StreamWatch()
    _feed(watch, _anthropic_events(tools=True), [])
    assert watch.text == "" and watch.usage is not None and watch.usage.cached == 100


def test_stream_watch_edge_cases() -> None:
    watch = messages.StreamWatch()
    watch.feed(b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":4}}}\n\n')
    assert watch.usage is None  # no output count yet
    watch.feed(b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9,"input_tokens":5}}\n\n')
    assert watch.usage == Usage(5, 0, 0, 9)  # the delta's cumulative counts win
    watch.feed(b"data: " + b"x" * (1 << 21))  # an event past the limit: skipped, not buffered
    watch.feed(b"\n\nevent: content_block_delta\ndata: not json\n\n: comment\n\n")
    watch.feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n')
    assert watch.error == "busy" and watch.usage == Usage(5, 0, 0, 9)
    rw = responses.StreamWatch()
    rw.feed(b'event: response.incomplete\ndata: {"type":"response.incomplete","response":{"id":"r","usage":'
            b'{"input_tokens":3,"output_tokens":16}}}\n\n')  # fmt: skip
    assert rw.usage == Usage(3, 0, 0, 16) and rw.response_id == "r"
    rw.feed(b'event: error\ndata: {"type":"error","code":"server_error","message":"down"}\n\n')
    assert rw.error == "down"


class _Ctx:
    """What usage_events writes to: the proxy's request context has a ``usage`` and an ``answer_id`` too."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}
        self.answer_id: str | None = None
        self.prompt_seen: int | None = None


def _through_usage_events(proto: Any, chunks: list[bytes]) -> tuple[list[bytes], dict[str, Any], int | None]:
    async def source() -> Any:
        for c in chunks:
            yield c

    async def read() -> list[bytes]:
        return [c async for c in proto.usage_events(source(), ctx)]

    ctx = _Ctx()
    return asyncio.run(read()), ctx.usage, ctx.prompt_seen


def test_usage_events_relay_unchanged_and_set_the_final_usage_chat_shaped() -> None:
    for proto, events, want in [(messages, _anthropic_events(False), Usage(126, 100, 20, 3)),
                                (responses, _responses_events(), Usage(54, 40, 8, 3))]:  # fmt: skip
        data = "".join(events).encode()
        chunks = [data[i : i + 37] for i in range(0, len(data), 37)]
        out, usage, _ = _through_usage_events(proto, chunks)
        assert out == chunks and usage == want.as_chat()
        assert proto.stream_text(chunks) == "echo:hello big world"
        # cut before its last usage event: no usage (the proxy charges the bound, not a partial count);
        # Messages reported the prompt's count at its start: charged that (cache reads and writes in it)
        cut = data[: data.index(b"event: message_delta" if proto is messages else b"event: response.completed")]
        out, usage, seen = _through_usage_events(proto, [cut])
        assert out == [cut] and usage == {}
        assert seen == (want.prompt if proto is messages else None)


def test_chat_usage_of_whole_answers() -> None:
    assert messages.chat_usage({"usage": {"input_tokens": 2, "output_tokens": 3, "cache_read_input_tokens": 4}}) == (
        Usage(6, 4, 0, 3).as_chat()
    )
    assert responses.chat_usage({"usage": {"input_tokens": 2, "output_tokens": 3}})["prompt_tokens"] == 2
    assert messages.chat_usage({"usage": "x"}) == {} and responses.chat_usage(None) == {}


def test_stream_errors_in_each_protocols_shape() -> None:
    ev = messages.stream_error("upstream broke")
    watch = messages.StreamWatch()
    watch.feed(ev)
    assert watch.error == "upstream broke" and ev.startswith(b"event: error\ndata: ")
    assert json.loads(ev.split(b"data: ")[1])["error"]["type"] == "api_error"
    ev = responses.stream_error("upstream broke")
    rw = responses.StreamWatch()
    rw.feed(ev)
    assert rw.error == "upstream broke" and json.loads(ev.split(b"data: ")[1])["type"] == "error"


def test_anthropic_error_types_by_status() -> None:
    want = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            413: "request_too_large", 429: "rate_limit_error", 502: "api_error", 504: "timeout_error",
            529: "overloaded_error"}  # fmt: skip
    for status, etype in want.items():
        body = json.loads(messages.error_body(status, "m", "req-1"))
        assert body == {"type": "error", "error": {"type": etype, "message": "m"}, "request_id": "req-1"}
    resp = messages.error_response(429, "slow", {"x-hybridllm-request-id": "req-2", "retry-after": "3"})
    assert resp.headers["retry-after"] == "3" and json.loads(resp.body)["request_id"] == "req-2"


# --- keys, headers, shadow replays, bounds --------------------------------------------------------


def test_client_keys_by_each_protocols_header() -> None:
    keys = [b"k1", b"k2"]
    assert messages.client_key({"x-api-key": "k2"}, keys) == b"k2"
    assert messages.client_key({"authorization": "Bearer k1"}, keys) == b"k1"  # the SDK's Bearer form
    assert messages.client_key({"x-api-key": "nope", "authorization": "Bearer k1"}, keys) is None
    assert messages.client_key({}, keys) is None
    assert responses.client_key({"authorization": "Bearer k1"}, keys) == b"k1"
    assert responses.client_key({"x-api-key": "k1"}, keys) is None


def test_upstream_headers_carry_the_protocol_never_a_key() -> None:
    given = {"anthropic-version": "2026-10-21", "anthropic-beta": "tools-1", "x-api-key": "client",
             "authorization": "Bearer client", "cookie": "c"}  # fmt: skip
    assert messages.upstream_headers(given) == {"anthropic-version": "2026-10-21", "anthropic-beta": "tools-1"}
    assert messages.upstream_headers({}) == {"anthropic-version": messages.DEFAULT_VERSION}
    assert responses.upstream_headers(given) == {}


def test_shadow_replays_cap_the_output_and_do_not_stream() -> None:
    req = check(messages, {**M_BODY, "stream": True, "max_tokens": 5000, "hybridllm": {"force": "small"}})
    assert messages.replay(req.body, 256) == {**M_BODY, "stream": False, "max_tokens": 256}
    assert messages.replay({**M_BODY, "max_tokens": 10}, 256)["max_tokens"] == 10
    r = responses.replay({**R_BODY, "stream": True}, 128)
    assert r == {**R_BODY, "stream": False, "store": False, "max_output_tokens": 128}
    assert responses.replay({**R_BODY, "max_output_tokens": 7}, 128)["max_output_tokens"] == 7


def test_token_bounds_take_each_protocols_output_limit() -> None:
    b = token_bound(check(messages, M_BODY).body, "messages")
    assert b.max_out == 64 and b.prompt > len(json.dumps(M_BODY)) and b.answers == 1 and not b.elsewhere
    assert token_bound(check(responses, R_BODY).body, "responses").max_out is None
    capped = token_bound(check(responses, {**R_BODY, "max_output_tokens": 9}).body, "responses")
    assert capped.usage(100) == {"prompt_tokens": capped.prompt, "completion_tokens": 9}
    assert capped.usage(5)["completion_tokens"] == 5  # the model's own maximum is smaller


HELD = [  # (kind, body parts) whose prompt the upstream holds: not in the body's bytes
    ("responses", {"previous_response_id": "resp_1"}),
    ("responses", {"conversation": "conv_1"}),
    ("responses", {"prompt": {"id": "pmpt_1"}}),
    ("responses", {"input": [{"type": "item_reference", "id": "msg_1"}]}),
    ("responses", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}),
    ("responses", {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}]}),
    ("responses", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "HTTPS://x/a.png"}]}]}),
    (
        "messages",
        {
            "messages": [
                {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}
            ]
        },
    ),
    (
        "messages",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}
            ]
        },
    ),
    (
        "chat",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
    ),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}),
]


@pytest.mark.parametrize(("kind", "parts"), HELD)
def test_a_prompt_the_upstream_holds_is_bounded_by_the_context_window(kind: str, parts: dict) -> None:
    """A few bytes that continue a stored 200k-token conversation must not reserve a few hundred
    tokens against a cap: the prompt's bound is the model's context window."""
    base = {"messages": M_BODY, "responses": R_BODY, "chat": {"model": "m", "messages": []}}[kind]
    b = token_bound({**base, **parts}, kind)
    assert b.elsewhere
    assert b.usage(100, context=32_000)["prompt_tokens"] == 32_000
    assert Limits({}, {}).usage(b, "m")["prompt_tokens"] == DEFAULT_CONTEXT_TOKENS
    inline = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}  # in the bytes: counted there
    assert not token_bound({**R_BODY, "input": [{"role": "user", "content": [inline]}]}, "responses").elsewhere


# --- the models file's api key ---------------------------------------------------------------------


def test_models_file_api_key(tmp_path: Any) -> None:
    from hybridllm.tables.registry import Registry, RegistryError

    p = tmp_path / "models.toml"
    p.write_text('[models.a]\nspec = "a@http://h/v1"\ncost = 1\n\n[models."b"]\nspec = "b@http://h/v1"\ncost = 2\n'
                 'api = "messages"\n')  # fmt: skip
    reg = Registry.load(p)
    assert reg.models["a"].api == "chat" and reg.models["b"].api == "messages"
    p.write_text('[models.a]\ncost = 1\n\n[models.b]\ncost = 2\n# a comment\napi = "grpc"\n')
    with pytest.raises(RegistryError, match=re.escape(f"{p}:7: models.b.api: Input should be 'chat', 'messages'")):
        Registry.load(p)
    p.write_text('[models.local]\nspec = "qwen2.5-0.5b"\ncost = 1\napi = "responses"\n')
    with pytest.raises(RegistryError, match=re.escape(f"{p}:1: models.local: ") + ".*needs an HTTP spec"):
        Registry.load(p)
