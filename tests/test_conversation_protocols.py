"""Issue 36 (docs/sessions.md): Anthropic Messages and OpenAI Responses bodies read into the same
turn as a chat body (hybridllm.routing.conversation.messages / .responses): tool loops, session
names (previous_response_id pins a stored conversation; metadata.user_id scopes a derived id), image
and file parts, and what each needs of a model (hybridllm.routing.capabilities)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm.routing.capabilities import ModelCaps, eligible, needs
from hybridllm.routing.conversation import READERS, ConversationError, derive_session_id, read_turn
from hybridllm.routing.conversation import messages as m
from hybridllm.routing.conversation import responses as r
from hybridllm.serve.apis import messages as serve_messages

SECRET = b"s" * 32
NO_HEADERS: dict[str, str] = {}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks) if blocks and not isinstance(blocks[0], str) else blocks[0]}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def use(cid: str, name: str = "search") -> dict[str, Any]:
    return {"type": "tool_use", "id": cid, "name": name, "input": {"q": "x"}}


def result(cid: str, content: Any = "Paris") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": cid, "content": content}


def said(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def mbody(*msgs: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"model": "hybrid", "max_tokens": 64, "messages": list(msgs), **kw}


def rbody(items: Any, **kw: Any) -> dict[str, Any]:
    return {"model": "hybrid", "input": items, **kw}


Q = user("capital of France?")
CALL = {"type": "function_call", "call_id": "call_1", "name": "search", "arguments": "{}"}
OUT = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
RQ = {"role": "user", "content": "weather?"}


# --- Messages ---------------------------------------------------------------------------------------


def test_messages_tool_loops_read_as_chat_reads_them() -> None:
    loop = m.tool_state(mbody(Q, said(text("let me look"), use("t1")), user(result("t1"))))
    assert (loop.in_loop, loop.pending, loop.calls) == (True, (), 1)
    pending = m.tool_state(mbody(Q, said(use("t1"), use("t2"))))
    assert (pending.in_loop, pending.pending) == (True, ("t1", "t2"))
    done = m.tool_state(mbody(Q, said(use("t1")), user(result("t1")), said(text("Paris")), user("thanks")))
    assert (done.in_loop, done.calls) == (False, 1)
    # results may come over more than one user message before the next assistant message
    split = m.tool_state(mbody(Q, said(use("a"), use("b")), user(result("a")), user(result("b"), text("go on"))))
    assert split.in_loop and split.pending == ()
    assert m.tool_state(mbody(Q)) == m.tool_state(mbody(Q, said(text("hi")), user("more")))


@pytest.mark.parametrize(
    ("msgs", "says"),
    [
        ((Q, user(result("nope"))), r"messages\[1\]\.content\[0\]: tool_result 'nope' matches no unanswered tool_use"),
        ((Q, said(use("a")), user(result("a")), user(result("a"))), "answers a tool_use already answered"),
        (
            (Q, said(use("a")), said(text("x"))),
            r"messages\[2\]: assistant message while tool_use blocks of "
            r"messages\[1\] are unanswered \('a'\)",
        ),
        ((Q, said(use("a"), use("a"))), r"messages\[1\]\.content\[1\]\.id 'a' repeats"),
        ((Q, said(use("a")), user(result("a")), said(use("a"))), "tool_use id 'a' was used before"),
        ((Q, said(use("a", name=""))), r"messages\[1\]\.content\[0\]\.name must be a non-empty string"),
        ((Q, said({"type": "tool_use", "id": "x" * 300, "name": "n"})), "1 to 256 characters"),
        ((Q, said(use("a")), user({"type": "tool_result", "tool_use_id": 7})), "tool_use_id must be a non-empty"),
        ((Q, "not a message"), r"messages\[1\] must be an object"),
    ],
)
def test_a_malformed_messages_tool_history_names_the_block(msgs: tuple[Any, ...], says: str) -> None:
    with pytest.raises(ConversationError, match=says) as err:
        m.tool_state(mbody(*msgs))
    assert err.value.param == "messages"


def test_the_messages_chat_view_is_what_the_serve_check_reads() -> None:
    body = mbody(
        Q,
        said(text("looking"), use("t1")),
        user(result("t1", [text("Paris"), {"type": "image"}]), text("ok")),
        system=[text("be brief"), text("and kind")],
    )
    view = m.chat_view(body)
    assert view[0] == {"role": "system", "content": "be brief\nand kind"}
    assert view[2]["tool_calls"][0]["id"] == "t1" and view[3] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": "Paris",
    }
    assert view[4] == {"role": "user", "content": [text("ok")]}
    assert serve_messages.as_chat is m.chat_view  # one reading: the server's check and the session rules'


def test_messages_images_and_documents_anywhere_in_the_conversation() -> None:
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert m.has_images(mbody(user(text("what is it?"), img)))
    nested = mbody(Q, said(use("t1")), user(result("t1", [img])))  # a screenshot a tool returned
    assert m.has_images(nested) and not m.has_images(mbody(Q))
    need = needs(nested, "messages")
    assert need.capabilities == {"tools", "vision"} and need.output_field == "max_tokens" and need.max_output == 64
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    assert needs(mbody(user(text("summarise"), doc)), "messages").capabilities == {"files"}
    assert needs(mbody(Q, tools=[{"name": "t", "input_schema": {}}]), "messages").capabilities == {"tools"}


def test_a_messages_session_is_derived_and_scoped_by_its_end_user() -> None:
    first = mbody(Q, system="be brief")
    later = mbody(Q, said(text("Paris")), user("and Spain?"), system="be brief")
    a, b = m.session_key(NO_HEADERS, first, SECRET), m.session_key(NO_HEADERS, later, SECRET)
    assert a == b and a.source == "derived" and a.id.startswith("d:")
    assert a.id == derive_session_id(m.chat_view(first), SECRET)  # the chat recipe, on the chat view
    claude_code = "user_" + "a" * 64 + "_account_" + "b" * 36 + "_session_" + "c" * 36  # longer than a session id
    mine = m.session_key(NO_HEADERS, dict(first, metadata={"user_id": claude_code}), SECRET)
    theirs = m.session_key(NO_HEADERS, dict(first, metadata={"user_id": "someone-else"}), SECRET)
    assert len({a.id, mine.id, theirs.id}) == 3 and mine.source == "derived"
    assert m.session_key(NO_HEADERS, dict(later, metadata={"user_id": claude_code}), SECRET) == mine
    named = m.session_key({"x-session-id": "conv-7"}, first, SECRET)
    assert (named.id, named.source, named.stored) == ("s:conv-7", "header", False)
    for bad, param in (
        ({"user_id": "u" * 257}, "metadata.user_id"),
        ({"user_id": 5}, "metadata.user_id"),
        ("user-1", "metadata"),
    ):
        with pytest.raises(ConversationError) as err:
            m.session_key(NO_HEADERS, dict(first, metadata=bad), SECRET)
        assert err.value.param == param
    with pytest.raises(ConversationError, match="x-session-id holds ' '") as err:
        m.session_key({"x-session-id": "two words"}, first, SECRET)
    assert err.value.param == "x-session-id"
    assert m.opens(first) and not m.opens(later)


# --- Responses --------------------------------------------------------------------------------------


def test_responses_function_call_loops() -> None:
    loop = r.tool_state(rbody([RQ, CALL, OUT]))
    assert (loop.in_loop, loop.pending, loop.calls) == (True, (), 1)
    assert r.tool_state(rbody([RQ, CALL])).pending == ("call_1",)
    after = r.tool_state(
        rbody([RQ, CALL, OUT, {"role": "assistant", "content": "sunny"}, {"role": "user", "content": "ok"}])
    )
    assert not after.in_loop and after.calls == 1
    # the model's text beside its call is the same turn: no refusal
    said_too = r.tool_state(
        rbody(
            [
                RQ,
                {"role": "assistant", "content": "checking"},
                CALL,
                {"type": "message", "role": "assistant", "content": "one moment"},
                OUT,
            ]
        )
    )
    assert said_too.in_loop
    # the call lives upstream: an output alone continues the stored conversation
    stored = r.tool_state(rbody([OUT], previous_response_id="resp_1"))
    assert stored.in_loop and stored.calls == 0
    assert r.tool_state(rbody("just text")) == r.tool_state(rbody([RQ]))


@pytest.mark.parametrize(
    ("items", "says"),
    [
        ([RQ, OUT], r"input\[1\]: function_call_output 'call_1' matches no call before it"),
        ([RQ, CALL, OUT, OUT], "answers a call already answered"),
        ([RQ, CALL, RQ], r"input\[2\]: user message while calls are unanswered \('call_1'\)"),
        ([RQ, CALL, OUT, CALL], "call id 'call_1' was used before"),
        ([RQ, dict(OUT, call_id="")], r"input\[1\]\.call_id must be a string of 1 to 256"),
        ([RQ, 3], r"input\[1\] must be an object"),
    ],
)
def test_a_malformed_responses_tool_history_names_the_item(items: list[Any], says: str) -> None:
    with pytest.raises(ConversationError, match=says) as err:
        r.tool_state(rbody(items))
    assert err.value.param == "input"


def test_a_stored_conversation_names_the_responses_session() -> None:
    first = rbody([RQ], instructions="be brief")
    derived = r.session_key(NO_HEADERS, first, SECRET)
    assert derived.source == "derived" and derived == r.session_key(
        NO_HEADERS, rbody("weather?", instructions="be brief"), SECRET
    )
    nxt = rbody([OUT], previous_response_id="resp_0001")
    key = r.session_key({"x-session-id": "conv-7"}, nxt, SECRET)  # the stored conversation wins: it holds the history
    assert (key.source, key.stored) == ("previous_response_id", True)
    assert key.id == r.answer_session_id("resp_0001", SECRET) and key.id.startswith("r:")
    assert r.session_key(NO_HEADERS, rbody([OUT], previous_response_id="resp_0002"), SECRET).id != key.id
    conv = r.session_key(NO_HEADERS, rbody([RQ], conversation={"id": "conv_1"}), SECRET)
    assert conv.source == "conversation" and conv == r.session_key(
        NO_HEADERS, rbody([RQ], conversation="conv_1"), SECRET
    )
    assert conv.id.startswith("c:") and conv.id[2:] != key.id[2:]
    assert r.session_key(NO_HEADERS, dict(first, user="u-1"), SECRET).id == "s:u-1"
    assert r.session_key(NO_HEADERS, dict(first, metadata={"session_id": "m-1"}), SECRET).id == "s:m-1"
    assert (
        r.session_key(NO_HEADERS, dict(first, prompt_cache_key="app-wide"), SECRET) == derived
    )  # a cache, not a session
    with pytest.raises(ConversationError) as err:  # every id given is checked, whichever names the session
        r.session_key({"x-session-id": "é"}, nxt, SECRET)
    assert err.value.param == "x-session-id"
    bads = [({"previous_response_id": 5}, "previous_response_id"), ({"conversation": {"id": ""}}, "conversation")]
    for bad, param in [*bads, ({"user": "a b"}, "user")]:
        with pytest.raises(ConversationError) as err:
            r.session_key(NO_HEADERS, dict(first, **bad), SECRET)
        assert err.value.param == param
    assert r.opens(first) and not r.opens(nxt) and not r.opens(rbody([RQ, CALL, OUT]))


def test_responses_needs_tools_images_files_json_and_the_answer_asked() -> None:
    img = {
        "role": "user",
        "content": [{"type": "input_text", "text": "what is it?"}, {"type": "input_image", "image_url": "data:,"}],
    }
    need = needs(
        rbody([img], max_output_tokens=900, text={"format": {"type": "json_schema", "schema": {}}}), "responses"
    )
    assert need.capabilities == {"vision", "json_schema"} and (need.max_output, need.output_field) == (
        900,
        "max_output_tokens",
    )
    shot = dict(OUT, output=[{"type": "input_image", "image_url": "data:,"}])
    assert needs(rbody([OUT, shot | {"call_id": "call_2"}], previous_response_id="p"), "responses").capabilities == {
        "tools",
        "vision",
    }
    assert needs(
        rbody([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]), "responses"
    ).capabilities == {"files"}
    assert needs(rbody("x", tools=[{"type": "web_search"}]), "responses").capabilities == {"tools"}
    text_only = ModelCaps("mini", supports=frozenset({"tools"}), context_window=5000)
    elig = eligible(need, [text_only, ModelCaps("full")])
    lack = elig.reasons[0]
    assert [(x.key, x.param) for x in lack] == [("vision", "input"), ("json_schema", "text.format")]
    assert "text.format json_schema" in lack[1].text and elig.pick(0).target == 1
    # the window: the conversation's text and the answer asked
    long = rbody(" ".join(f"word{i}" for i in range(4000)), max_output_tokens=100)
    far = eligible(needs(long, "responses"), [text_only, ModelCaps("full")]).reasons[0]
    assert far[0].key == "context_window" and far[0].param == "input"


def test_only_models_that_speak_the_protocol_are_eligible() -> None:
    need = needs(mbody(Q), "messages")
    elig = eligible(need, [ModelCaps("gpt"), ModelCaps("claude")], speaks=[False, True], api="messages")
    assert elig.allowed == (False, True) and elig.pick(0).target == 1
    assert str(elig.reasons[0][0]) == "it does not speak the messages API"
    with pytest.raises(ConversationError, match="gpt: it does not speak the messages API") as err:
        eligible(need, [ModelCaps("gpt")], speaks=[False], api="messages").pick(0)
    assert err.value.param == "model"


def test_every_protocol_reads_into_the_same_turn() -> None:
    """The same conversation through each protocol: the same router text, tool state and derived
    session (the chat recipe on each chat view)."""
    calls = [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    chat = {"model": "m", "messages": history}
    msg = mbody(user("weather?"), said(use("c1")), user(result("c1", "sunny")), system="be brief")
    resp = rbody([RQ, dict(CALL, call_id="c1"), dict(OUT, call_id="c1")], instructions="be brief")
    turns = [
        READERS[k].read_turn(NO_HEADERS, b, SECRET, "all")
        for k, b in (("chat", chat), ("messages", msg), ("responses", resp))
    ]
    assert turns[0] == read_turn(NO_HEADERS, chat, SECRET)
    assert {t.text for t in turns} == {"weather?"} and all(
        t.tools.in_loop and t.tools.calls == 1 and t.stays for t in turns
    )
    assert len({t.session.id for t in turns}) == 1


_KEYS = st.sampled_from(["type", "role", "content", "id", "name", "tool_use_id", "call_id", "output", "text", "input"])
_TOP = st.sampled_from(["system", "instructions", "metadata", "previous_response_id", "conversation", "user", "tools"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(items=_json, kind=st.sampled_from(["messages", "responses"]), extra=st.dictionaries(_TOP, _json, max_size=3))
def test_a_hostile_body_is_read_or_refused_with_a_conversation_error_only(items: Any, kind: str, extra: Any) -> None:
    body = {"model": "m", "max_tokens": 5, ("messages" if kind == "messages" else "input"): items, **extra}
    reader = READERS[kind]
    for read in (lambda: reader.read_turn(NO_HEADERS, body, SECRET, "all"), lambda: needs(body, kind)):
        try:
            read()
        except ConversationError as exc:  # CapabilityError too: a one-line reason naming a field
            assert exc.param and "\n" not in str(exc)
