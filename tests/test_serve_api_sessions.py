"""Issue 36 sessions (docs/sessions.md): ``/v1/messages`` and ``/v1/responses`` get the session rules and
the capability filter a chat request gets. The official ``anthropic`` and ``openai`` SDKs against the
real app (in process, its ASGI interface) and real HTTP fake upstreams of each protocol; every turn
ROUTED (a knob, never a forced model), the knob changed between turns so that the router alone would
send the second turn elsewhere, and each test run with sessions off too, where it goes elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridllm.backends import HTTPBackend
from hybridllm.serve import ServeOptions, create_app

from .conftest import LARGE, SMALL
from .helpers.agent_apis import FN, KA, KO, TOOLS
from .helpers.fake_anthropic import FakeAnthropic
from .helpers.fake_responses import FakeResponses
from .helpers.proxy import InProcess

CLIENT = "sk-client-key-1003"
EASY, HARD = "hybrid-t-0", "hybrid-t-1.000001"  # every prompt to the small model; every prompt to the large
HAIKU, OPUS, MINI, FULL = "claude-haiku", "claude-opus", "gpt-mini", "gpt-full"


def app(router: Any, fake: FakeAnthropic | FakeResponses, sessions: bool = True, **opts: Any) -> InProcess:
    api, key, names = (
        ("messages", KA, (HAIKU, OPUS)) if isinstance(fake, FakeAnthropic) else ("responses", KO, (MINI, FULL))
    )
    ups = [HTTPBackend(m, fake.url, api_key=key, name=n, api=api, concurrency=None, timeout_s=5)
           for m, n in zip(names, (SMALL, LARGE), strict=True)]  # fmt: skip
    options = ServeOptions(api_keys=[CLIENT], key_names={CLIENT: "team-a"}, sessions=sessions,
                           session_secret=b"k" * 32, **opts)  # fmt: skip
    return InProcess(create_app(router, *ups, options=options))


def claude(p: InProcess, knob: str) -> anthropic.Anthropic:
    """The SDK with a model name of its own; the routing name in ``x-hybridllm-knob``."""
    return anthropic.Anthropic(api_key=CLIENT, base_url="http://127.0.0.1", max_retries=0, http_client=p.http,
                               default_headers={"x-hybridllm-knob": knob})  # fmt: skip


def events(p: InProcess) -> dict[str, float]:
    text = p.http.get("/metrics", headers={"authorization": f"Bearer {CLIENT}"}).text
    return {s.labels["event"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "hybridllm_session_events_total"}  # fmt: skip


@pytest.mark.parametrize("sessions", [True, False], ids=["sessions", "no-sessions"])
def test_a_streamed_messages_tool_loop_stays_on_the_model_that_made_the_call(router, fa, sessions: bool) -> None:
    with app(router, fa, sessions) as p:
        history: list[Any] = [{"role": "user", "content": "capital of France?"}]
        with claude(p, EASY).messages.stream(model="claude-x", max_tokens=64, messages=history, tools=TOOLS) as s:
            first = s.get_final_message()
        call = first.content[0]
        assert call.type == "tool_use" and first.model == HAIKU
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "Paris"}
        history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                    {"role": "user", "content": [result]}]  # fmt: skip
        # the knob now sends every prompt to the large model: the router alone would move the loop
        with claude(p, HARD).messages.stream(model="claude-x", max_tokens=64, messages=history, tools=TOOLS) as s:
            second = s.get_final_message()
            headers = s.response.headers
        got = events(p)
    assert second.content[0].type == "text" and second.content[0].text == 'echo:tool said "Paris"'
    if sessions:
        assert second.model == HAIKU and headers["x-hybridllm-model"] == SMALL
        assert f"session tool_loop on {SMALL}" in headers["x-hybridllm-reason"]
        assert (got["tool_loop_holds"], got["tool_loop_overrides"]) == (1, 1)
    else:  # the control: without the session rules the same turn goes where the knob sends it
        assert second.model == OPUS and not got


@pytest.mark.parametrize("sessions", [True, False], ids=["sessions", "no-sessions"])
def test_a_responses_function_call_loop_stays_on_its_model(router, fr, sessions: bool) -> None:
    """The whole history sent back (stateless), then a stored conversation continued by
    ``previous_response_id`` alone: each turn goes to the model that made the call."""
    with app(router, fr, sessions) as p:
        oai = p.openai(CLIENT)
        first = oai.responses.create(model=EASY, input="weather?", tools=FN)  # type: ignore[arg-type]
        call = first.output[0]
        assert call.type == "function_call" and first.model == MINI
        follow = [{"role": "user", "content": "weather?"}, call.model_dump(exclude_none=True),
                  {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]  # fmt: skip
        whole = oai.responses.with_raw_response.create(model=HARD, input=follow, tools=FN)  # type: ignore[arg-type]
        assert whole.parse().output_text == "echo:tool said sunny"
        # stored upstream: the next turn names the response and sends only the tool's output; the
        # first answer streamed (its id pinned before the stream ends), the next whole, then on
        stream = oai.responses.create(model=EASY, input="weather in Oslo?", tools=FN, stream=True)  # type: ignore[arg-type]
        last = list(stream)[-1]  # read to its end
        assert last.type == "response.completed"
        stored = last.response
        made = stored.output[0]
        assert made.type == "function_call" and stored.model == MINI
        out = [{"type": "function_call_output", "call_id": made.call_id, "output": "rain"}]
        done = oai.responses.create(model=HARD, input=out, previous_response_id=stored.id, tools=FN)  # type: ignore[arg-type]
        assert fr.requests[-1]["previous_response_id"] == stored.id
        again = list(oai.responses.create(model=HARD, input="and tomorrow?", previous_response_id=done.id, stream=True))
        final = again[-1].response  # type: ignore[union-attr]
    assert done.output_text == "echo:tool said rain" and final.output_text == "echo:and tomorrow?"
    if sessions:
        assert whole.parse().model == MINI and whole.headers["x-hybridllm-model"] == SMALL
        # the model that produced the stored response, which holds the history, turn after turn
        assert done.model == final.model == MINI
    else:
        assert whole.parse().model == FULL and done.model == final.model == FULL


def test_a_stored_response_pins_the_model_that_answered_even_a_forced_one(router, fr) -> None:
    with app(router, fr) as p:
        oai = p.openai(CLIENT)
        forced = oai.responses.create(model="large", input="write a haiku")
        assert forced.model == FULL
        nxt = oai.responses.with_raw_response.create(model=EASY, input="another", previous_response_id=forced.id)
        assert nxt.parse().model == FULL and "session tool_loop" in nxt.headers["x-hybridllm-reason"]
        # not stored upstream: nothing to continue, and no pin taken for it
        loose = oai.responses.create(model="large", input="once", store=False)
        unknown = oai.responses.create(model=EASY, input="and?", previous_response_id=loose.id)
        got = events(p)
    assert unknown.model == MINI and got["tool_loop_unpinned"] == 1  # routed as a first turn


def test_a_messages_session_only_moves_up(router, fa) -> None:
    system = "You are terse."
    q1 = {"role": "user", "content": "name a prime"}

    def turn(c: anthropic.Anthropic, *msgs: dict[str, Any]) -> str:
        raw = c.messages.with_raw_response.create(model="claude-x", max_tokens=32, system=system, messages=list(msgs))
        return raw.headers["x-hybridllm-model"]

    with app(router, fa) as p:
        easy, hard = claude(p, EASY), claude(p, HARD)
        a1 = {"role": "assistant", "content": "7"}
        q2 = {"role": "user", "content": "another"}
        assert turn(hard, q1) == LARGE
        assert turn(easy, q1, a1, q2) == LARGE  # kept: never down
        other = {"role": "user", "content": "spell cat"}
        assert turn(easy, other) == SMALL  # another conversation, its own session
        assert turn(hard, other, {"role": "assistant", "content": "c-a-t"}, q2) == LARGE  # escalated
        assert turn(easy, other, {"role": "assistant", "content": "c-a-t"}, q2, a1, q1) == LARGE
        # the same opening from another end user (metadata.user_id) is another session
        mine = easy.messages.create(model="claude-x", max_tokens=32, system=system, messages=[q1, a1, q2],
                                    metadata={"user_id": "user_" + "f" * 150})  # fmt: skip
        got = events(p)
    assert mine.model == HAIKU
    assert (got["escalations"], got["kept_down"], got["pins"]) == (1, 2, 3)


def test_a_tools_request_never_reaches_a_messages_model_whose_entry_lacks_tools(
    router, fa, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridllm.serve.config import ServeConfig

    monkeypatch.setenv("I36S_KEY", KA)
    text = ""
    for name, model, extra in ((SMALL, HAIKU, 'supports = ["vision"]\n'), (LARGE, OPUS, "")):
        text += f'[models."{name}"]\nspec = "{model}@{fa.url}"\napi = "messages"\napi_key_env = "I36S_KEY"\n'
        text += f"cost = 1\n{extra}\n"
    (tmp_path / "models.toml").write_text(text)
    cfg = ServeConfig(models_file=tmp_path / "models.toml")
    ups = cfg.upstreams(router)
    options = ServeOptions(api_keys=[CLIENT], capabilities=cfg.capabilities([u.who for u in ups]))
    asked = len(fa.requests)
    with InProcess(create_app(router, *ups, options=options)) as p:
        c = claude(p, EASY)
        r = c.messages.with_raw_response.create(model="claude-x", max_tokens=16, tools=TOOLS,
                                                messages=[{"role": "user", "content": "look it up"}])  # fmt: skip
        plain = c.messages.create(model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.BadRequestError) as forced:
            claude(p, "small").messages.create(model="claude-x", max_tokens=16, tools=TOOLS,
                                               messages=[{"role": "user", "content": "look it up"}])  # fmt: skip
    assert r.parse().model == OPUS and f"{SMALL} cannot serve it (tools)" in r.headers["x-hybridllm-reason"]
    assert plain.model == HAIKU  # no tools: where the router sends it
    body = forced.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "does not support tools" in body["error"]["message"]  # type: ignore[index]
    sent = fa.requests[asked:]
    assert [q["model"] for q in sent] == [OPUS, HAIKU] and "tools" not in sent[1]


def test_a_session_named_on_two_protocols_moves_only_among_each_ones_models(router, fa, fr) -> None:
    """A fleet of two protocols (the small model speaks Responses, the large Messages) and one session
    id sent to both: a tool-loop turn on Responses is never held on the Messages model its session is
    pinned to (no upstream of another protocol is ever asked)."""
    kw: dict[str, Any] = {"concurrency": None, "timeout_s": 5}
    ups = [HTTPBackend(MINI, fr.url, api_key=KO, name=SMALL, api="responses", **kw),
           HTTPBackend(OPUS, fa.url, api_key=KA, name=LARGE, api="messages", **kw)]  # fmt: skip
    options = ServeOptions(api_keys=[CLIENT], session_secret=b"k" * 32)
    with InProcess(create_app(router, *ups, options=options)) as p:
        sid = {"x-session-id": "agent-1"}
        c = claude(p, HARD).with_options(default_headers={"x-hybridllm-knob": HARD, **sid})
        first = c.messages.create(model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "plan"}])
        oai = p.openai(CLIENT).with_options(default_headers=sid)
        loop = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "checking"},
                {"type": "function_call", "call_id": "c1", "name": "search", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]  # fmt: skip
        r = oai.responses.with_raw_response.create(model=EASY, input=loop)  # type: ignore[arg-type]
        got = events(p)
    assert first.model == OPUS
    # moved by the session rules to the model of its protocol, not held on the pin and saved by a fallback
    assert r.parse().model == MINI and "x-hybridllm-fallback-from" not in r.headers
    assert (got["moves"], got.get("tool_loop_holds", 0)) == (1, 0)


def test_a_malformed_session_id_or_tool_history_is_refused_in_each_endpoints_shape(router, fa, fr) -> None:
    asked = len(fa.requests), len(fr.requests)
    with app(router, fa) as p:
        c = claude(p, EASY).with_options(default_headers={"x-hybridllm-knob": EASY, "x-session-id": "two words"})
        with pytest.raises(anthropic.BadRequestError) as bad_id:
            c.messages.create(model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        stray = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]
        with pytest.raises(anthropic.BadRequestError) as bad_loop:
            claude(p, EASY).messages.create(model="claude-x", max_tokens=16, messages=stray)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError) as bad_user:
            claude(p, EASY).messages.create(model="claude-x", max_tokens=16, metadata={"user_id": "u" * 300},
                                            messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    for err, says in ((bad_id, "x-session-id holds ' '"), (bad_loop, "messages[0].content[0]: tool_result 'toolu_9'"),
                      (bad_user, "metadata.user_id must be a string of at most 256")):  # fmt: skip
        body = err.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert says in body["error"]["message"]  # type: ignore[index]
    with app(router, fr) as p:
        oai = p.openai(CLIENT).with_options(default_headers={"x-session-id": "s" * 129})
        with pytest.raises(openai.BadRequestError) as r_id:
            oai.responses.create(model=EASY, input="hi", previous_response_id="resp_1")
        orphan = [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]
        with pytest.raises(openai.BadRequestError) as r_loop:
            p.openai(CLIENT).responses.create(model=EASY, input=orphan)  # type: ignore[arg-type]
    assert r_id.value.body["param"] == "x-session-id" and r_id.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert "x-session-id must be 1 to 128 characters, got 129" in r_id.value.body["message"]  # type: ignore[index]
    assert r_loop.value.body["param"] == "input" and "matches no call before it" in r_loop.value.body["message"]  # type: ignore[index]
    assert (len(fa.requests), len(fr.requests)) == asked  # no upstream was asked


@pytest.mark.slow
def test_two_replicas_on_redis_send_a_stored_conversation_to_the_model_that_holds_it(router, fr, tmp_path) -> None:
    """The response id's pin written to Redis as the answer goes out (whole) or before its stream ends:
    the next turn, on another replica, finds it."""
    from .helpers.redis import start_redis

    proc, port = start_redis(tmp_path)
    try:
        state = {"state": f"redis://127.0.0.1:{port}/0"}
        with app(router, fr, **state) as one, app(router, fr, **state) as two:
            forced = one.openai(CLIENT).responses.create(model="large", input="write a haiku")
            nxt = two.openai(CLIENT).responses.create(model=EASY, input="another", previous_response_id=forced.id)
            streamed = list(two.openai(CLIENT).responses.create(model=HARD, input="a limerick", stream=True))
            made = streamed[-1].response  # type: ignore[union-attr]
            after = one.openai(CLIENT).responses.create(model=EASY, input="again", previous_response_id=made.id)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (forced.model, nxt.model, made.model, after.model) == (FULL, FULL, FULL, FULL)
