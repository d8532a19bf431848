"""The Messages and Responses protocols' request checks (hybridllm.serve.apis): bodies checked into
requests or refused with the protocol's 400 (never another exception), the model name spliced into
the body's bytes and nothing else changed, the knob, the router reading a conversation as it reads
the same chat, and tool loops."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridllm.routing.conversation import READERS
from hybridllm.serve.apis import KNOB_HEADER, PROTOCOLS, messages, responses
from hybridllm.serve.errors import RequestError
from hybridllm.serve.protocol import check_request
from hybridllm.serve.settle import token_bound
from tests.helpers.api_bodies import LIMITS, M_BODY, R_BODY, check, refused

# --- the model name spliced into the body's bytes --------------------------------------------


def test_only_the_model_name_changes_in_the_relayed_bytes() -> None:
    raw = (
        b'{ "stream" : false,\n  "model":"hybrid-qd-1", "max_tokens":100, "temperature": 1.50,'
        b' "messages":[{"role":"user","content":"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00"}], "x_unknown": [1e3, null]}'
    )
    req = check(messages, raw)
    out = req.for_upstream("claude-haiku")
    assert out == raw.replace(b'"hybrid-qd-1"', b'"claude-haiku"')
    assert req.name == "hybrid-qd-1" and req.model == "hybrid-qd-1"


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_the_hybridllm_field_is_read_and_not_relayed(where: str) -> None:
    parts = ['"model": "hybrid"', '"input":"hi"']
    at = {"first": 0, "middle": 1, "last": 2}[where]
    parts.insert(at, '"hybridllm": {"force": "small", "x": [1, {"y": "}"}]}')
    raw = ("{" + " , ".join(parts) + "}").encode()
    req = check(responses, raw)
    assert req.extra == {"force": "small", "x": [1, {"y": "}"}]}
    out = req.for_upstream("gpt-mini")
    assert json.loads(out) == {"model": "gpt-mini", "input": "hi"}
    assert b'"input":"hi"' in out and b"hybridllm" not in out


def test_a_body_that_is_only_hybridllm_and_model() -> None:
    req = check(responses, b'{"hybridllm":{"force":"small"},"model":"m","input":"x"}')
    assert req.for_upstream("u") == b'{"model":"u","input":"x"}'


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in ("model", "input", "hybridllm")),
                          _VALUES, max_size=4),
    knob=st.one_of(st.none(), st.dictionaries(st.sampled_from(["force", "z"]), _VALUES, max_size=2)),
    order=st.randoms(use_true_random=False),
    seps=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n ", " : ")]),
    name=st.text(min_size=1, max_size=20),
)  # fmt: skip
def test_splice_property(extra: dict[str, Any], knob: Any, order: Any, seps: tuple[str, str], name: str) -> None:
    """Any body: what is relayed parses as the body without ``hybridllm`` and with the new model, and
    each other member's text is in it as the client wrote it."""
    members = {"model": "hybrid", "input": "q", **extra}
    if knob is not None:
        members["hybridllm"] = knob
    keys = list(members)
    order.shuffle(keys)
    texts = {k: json.dumps(k) + seps[1] + json.dumps(members[k], ensure_ascii=False) for k in keys}
    raw = ("{" + seps[0].join(texts[k] for k in keys) + "}").encode()
    req = check(responses, raw)
    out = req.for_upstream(name)
    want = {k: v for k, v in members.items() if k != "hybridllm"}
    assert json.loads(out) == {**want, "model": name}
    for k in keys:
        if k not in ("model", "hybridllm"):
            assert texts[k].encode() in out
    assert req.extra == knob


def test_a_top_level_key_given_twice_is_refused_nested_ones_are_not() -> None:
    for key in ("model", "max_tokens", "stream"):
        raw = b'{"model":"hybrid","max_tokens":8,"stream":false,"messages":[{"role":"user","content":"x"}],'
        raw += f'"{key}": {json.dumps(M_BODY.get(key, True))}}}'.encode()
        err = refused(messages, raw)
        assert err.status == 400 and "given twice" in err.message and err.param == key
    nested = b'{"model":"m","input":[{"role":"user","content":"a","content":"b"}]}'
    assert check(responses, nested).text == "b"


def test_bodies_that_are_not_utf8_json_are_refused() -> None:
    utf16 = json.dumps(R_BODY).encode("utf-16")
    assert refused(responses, utf16).message == "malformed JSON: body is not UTF-8"
    assert refused(responses, json.dumps(R_BODY).encode("utf-16-le")).status == 400
    bom = b"\xef\xbb\xbf" + json.dumps(R_BODY).encode()
    assert check(responses, bom).for_upstream("m") == json.dumps(dict(R_BODY, model="m")).encode()


# --- checks: each protocol's 400 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({**M_BODY, "max_tokens": None}, "'max_tokens' is required"),
        ({**M_BODY, "max_tokens": True}, "'max_tokens' is required"),
        ({**M_BODY, "max_tokens": 0}, "'max_tokens' is required"),
        ({**M_BODY, "model": 5}, "'model' is required"),
        ({**M_BODY, "model": "x" * 257}, "'model' is required"),
        ({**M_BODY, "stream": "yes"}, "'stream' must be"),
        ({**M_BODY, "messages": []}, "'messages' must be a non-empty list"),
        ({**M_BODY, "messages": [{"role": "user", "content": "x"}] * 33}, "too many messages (33 > 32)"),
        ({**M_BODY, "messages": [{"role": "system", "content": "x"}]}, "role' user or assistant"),
        ({**M_BODY, "messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string or a list"),
        ({**M_BODY, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "content[0].text"),
        ({**M_BODY, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "with a string 'type'"),
        ({**M_BODY, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "tool_use_id"),
        ({**M_BODY, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": 1}]}]}, "tool_use"),
        ({**M_BODY, "system": {"a": 1}}, "system must be a string or a list"),
        ({**M_BODY, "system": [{"type": "text", "text": None}]}, "system[0].text"),
    ],
)
def test_malformed_messages_bodies_get_anthropics_400(body: dict[str, Any], says: str) -> None:
    err = refused(messages, body)
    assert err.status == 400 and says in err.message
    resp = messages.error_response(err.status, err.message)
    assert resp.status_code == 400 and json.loads(resp.body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": err.message},
    }


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "hybrid"}, "'input' must be a string or a list"),
        ({**R_BODY, "max_output_tokens": -1}, "'max_output_tokens' must be a positive integer"),
        ({**R_BODY, "instructions": ["x"]}, "'instructions' must be a string"),
        ({**R_BODY, "previous_response_id": ""}, "1-256 characters"),
        ({**R_BODY, "input": [1]}, "input[0] must be an object"),
        ({**R_BODY, "input": [{"role": ["user"], "content": "x"}]}, "input[0].role must be one of"),
        ({**R_BODY, "input": [{"role": "tool", "content": "x"}]}, "input[0].role must be one of"),
        ({**R_BODY, "input": [{"type": 3}]}, "input[0].type must be a string"),
        ({**R_BODY, "input": [{"role": "user", "content": [{"type": "input_text", "text": {}}]}]}, ".text must be"),
        ({**R_BODY, "input": [{"type": "function_call_output", "output": "x"}]}, "call_id must be a string"),
        ({**R_BODY, "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "needs a string 'call_id'"),
        ({**R_BODY, "input": [{"type": "computer_call", "call_id": 7}]}, "call_id must be a string"),
        ({**R_BODY, "input": [{"role": "user", "content": "x"}] * 33}, "too many input items (33 > 32)"),
    ],
)
def test_malformed_responses_bodies_get_openais_400(body: dict[str, Any], says: str) -> None:
    err = refused(responses, body)
    assert err.status == 400 and says in err.message
    resp = responses.error_response(err.status, err.message, param=err.param)
    shape = json.loads(resp.body)
    assert resp.status_code == 400 and shape["error"]["type"] == "invalid_request_error"
    assert shape["error"]["message"] == err.message and set(shape["error"]) == {"message", "type", "param", "code"}


_KEYS = ["type", "role", "content", "text", "tool_use_id", "id", "name", "call_id", "output", "arguments", "input", "x"]
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5),
    max_leaves=20,
)
_FIELDS = ["model", "messages", "system", "max_tokens", "stream", "input", "instructions", "max_output_tokens",
           "previous_response_id", "hybridllm"]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    api=st.sampled_from(sorted(PROTOCOLS)),
    body=st.dictionaries(st.sampled_from(_FIELDS), _JSONISH, max_size=7),
    base=st.booleans(),
)
def test_hostile_bodies_are_a_request_or_a_400_never_an_exception(api: str, body: dict[str, Any], base: bool) -> None:
    proto = PROTOCOLS[api]
    if base:  # a valid body with hostile parts swapped in
        body = {**(M_BODY if api == "messages" else R_BODY), **body}
    try:
        req = check(proto, body)
    except RequestError as exc:
        assert exc.status == 400
        assert json.loads(proto.error_response(exc.status, exc.message).body)
        return
    assert isinstance(req.text, str) and len(req.text) <= LIMITS["max_chars"] + 1
    assert json.loads(req.for_upstream("up")) == {**{k: v for k, v in body.items() if k != "hybridllm"}, "model": "up"}
    proto.replay(req.body, 16)
    token_bound(req.body, api)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_hostile_bytes_are_a_400(raw: bytes) -> None:
    for proto in PROTOCOLS.values():
        try:
            proto.check(raw, {}, **LIMITS)
        except RequestError as exc:
            assert exc.status == 400


def test_a_deeply_nested_body_is_a_400() -> None:
    raw = b'{"model":"m","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused(responses, raw).message.startswith("malformed JSON")


# --- the knob -------------------------------------------------------------------------------------


def test_the_knob_comes_from_the_header_else_the_model_name() -> None:
    assert check(messages, M_BODY).name == "hybrid"
    req = check(messages, {**M_BODY, "model": "claude-sonnet"}, {KNOB_HEADER: "hybrid-qd-1"})
    assert (req.name, req.model) == ("hybrid-qd-1", "claude-sonnet")
    for bad in ("", "a b", "x" * 257, "é"):
        err = refused(responses, R_BODY, {KNOB_HEADER: bad})
        assert err.status == 400 and KNOB_HEADER in err.message


# --- what the router reads: as a chat ----------------------------------------------------------


def _chat_text(msgs: list[dict[str, Any]]) -> str:
    return check_request({"model": "hybrid", "messages": msgs}, "chat", 32, "all", 4000).text


def test_a_messages_conversation_reads_as_the_same_chat() -> None:
    body = {
        **M_BODY,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Find the capital of France."},
                                         {"type": "image", "source": {"type": "base64", "data": "AA=="}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Searching."},
                                              {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "x"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "Paris"},
                                         {"type": "text", "text": "And of Spain?"}]},
        ],
    }  # fmt: skip
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Find the capital of France."}]},
        {"role": "assistant", "content": "Searching.",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Paris"},
        {"role": "user", "content": "And of Spain?"},
    ]  # fmt: skip
    req = check(messages, body)
    assert req.text == _chat_text(chat) == "And of Spain?\nFind the capital of France."
    assert [m["role"] for m in req.chat] == ["system", "user", "assistant", "tool", "user"]
    assert req.chat[2]["tool_calls"][0]["id"] == "t1" and req.chat[3] == {
        "role": "tool", "tool_call_id": "t1", "content": "Paris"}  # fmt: skip


def test_a_responses_conversation_reads_as_the_same_chat() -> None:
    body = {
        "model": "hybrid",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"},
                                                            {"type": "input_image", "image_url": "data:x"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
            {"role": "user", "content": "And tomorrow?"},
        ],
    }  # fmt: skip
    req = check(responses, body)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Oslo?"}, {"role": "user", "content": "And tomorrow?"}]  # fmt: skip
    assert req.text == _chat_text(chat) == "And tomorrow?\nWeather in Oslo?"
    roles = [m["role"] for m in req.chat]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool", "user"]
    assert [c["id"] for c in req.chat[3]["tool_calls"]] == ["c1", "c2"]  # parallel calls: one assistant turn
    assert req.chat[5]["content"] == "noon"
    assert check(responses, R_BODY).text == "What is 2+2?"


def test_the_router_text_is_bounded() -> None:
    long = "question " + "x" * 10_000
    assert len(check(responses, {**R_BODY, "input": long}).text) <= LIMITS["max_chars"] + 1


# --- tool loops -----------------------------------------------------------------------------------


def test_messages_tool_loops() -> None:
    """Where a checked body stands in its tool calls: the routing reader's reading (the session rules
    and the capability filter make it; tests/test_conversation_protocols.py has the refusals)."""
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                                            {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]}  # fmt: skip
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                                          {"type": "tool_result", "tool_use_id": "t2"}]}  # fmt: skip
    q = {"role": "user", "content": "go"}
    state = READERS["messages"].tool_state
    loop = state(check(messages, {**M_BODY, "messages": [q, use, result]}).body)
    assert loop.in_loop and loop.pending == () and loop.calls == 2
    pending = state(check(messages, {**M_BODY, "messages": [q, use]}).body)
    assert pending.in_loop and pending.pending == ("t1", "t2")
    done = [q, use, result, {"role": "assistant", "content": "done"}, {"role": "user", "content": "thanks"}]
    assert not state(check(messages, {**M_BODY, "messages": done}).body).in_loop
    assert not state(check(messages, M_BODY).body).in_loop


def test_responses_tool_loops() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    out = {"type": "function_call_output", "call_id": "c1", "output": "42"}
    q = {"role": "user", "content": "go"}
    state = READERS["responses"].tool_state
    loop = state(check(responses, {**R_BODY, "input": [q, call, out]}).body)
    assert loop.in_loop and loop.calls == 1
    # a continuation of a stored response: only the outputs, the call lives upstream
    cont = check(responses, {**R_BODY, "previous_response_id": "resp_1", "input": [out]})
    assert state(cont.body).in_loop and cont.previous == "resp_1"
    assert state(check(responses, {**R_BODY, "input": [q, call]}).body).pending == ("c1",)
    custom = {**R_BODY, "previous_response_id": "r", "input": [q, {"type": "custom_tool_call_output", "call_id": "z"}]}
    assert state(check(responses, custom).body).in_loop
    assert not state(
        check(responses, {**R_BODY, "input": [q, call, out, {"role": "user", "content": "more"}]}).body
    ).in_loop
    assert not state(check(responses, R_BODY).body).in_loop
