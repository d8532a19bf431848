"""The request path's plug-in points (hybridllm.serve.hooks): a hook defined here, in the test, is given
to the app and sees each request through its typed context at every point, may refuse or move a
request, and is closed at shutdown; nothing of the proxy's core changes to add it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import openai
import pytest

from hybridllm.serve import RouteDecision, ServeOptions, create_app
from hybridllm.serve.errors import RequestError
from hybridllm.serve.hooks import BaseHook, RequestContext, Slot

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.poll import wait_for
from .helpers.proxy import InProcess, upstream

PRICES = {SMALL: (1.0, 2.0), LARGE: (10.0, 20.0)}  # per 1M input, output tokens
KEY, NAME = "sk-team-a-secret", "team-a"
#: the toy's own per-request state, kept in the context
STARTED: Slot[float] = Slot("toy: when the call started")


class Toy(BaseHook):
    """Writes down what it sees at each point; asks for the answer's text."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    async def before_call(self, ctx: RequestContext) -> None:
        assert ctx.decision is not None
        ctx.put(STARTED, time.perf_counter())
        body_model = (ctx.body or {}).get("model")
        seen = {"rid": ctx.rid, "key": ctx.key, "kind": ctx.kind, "stream": ctx.stream, "decision": ctx.decision}
        self.seen.append(("before_call", {**seen, "body_model": body_model}))

    def on_answer(self, ctx: RequestContext) -> None:
        ctx.keep_answer = True
        self.seen.append(("on_answer", {"model": ctx.model, "status": ctx.status, "answer": ctx.answer}))

    async def after_sent(self, ctx: RequestContext) -> None:
        started = ctx.get(STARTED)
        seen = {"rid": ctx.rid, "status": ctx.status, "model": ctx.model, "answer": ctx.answer}
        self.seen.append(
            ("after_sent", {**seen, "usage": dict(ctx.usage), "cost": ctx.cost, "timed": started is not None})
        )

    async def close(self) -> None:
        self.closed = True


def serve(router: Any, s_up: FakeOpenAI, l_up: FakeOpenAI, *hooks: Any, **opts: Any) -> InProcess:
    small = upstream(SMALL, s_up.url, "s-model", timeout_s=2.0)
    large = upstream(LARGE, l_up.url, "l-model", timeout_s=2.0)
    options = ServeOptions(api_keys=[KEY], key_names={KEY: NAME}, prices=PRICES, **opts)
    return InProcess(create_app(router, small, large, options=options, hooks=hooks))


def points(toy: Toy) -> list[str]:
    return [p for p, _ in toy.seen]


def test_a_toy_hook_sees_each_point_with_the_typed_context(router):
    toy = Toy()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: "four, said small"
        l_up.reply = lambda p: "four, said large"
        with serve(router, s_up, l_up, toy) as proxy:
            c = proxy.openai(KEY)
            r = c.chat.completions.with_raw_response.create(
                model="hybrid-t-0", messages=[{"role": "user", "content": "What is 2 + 2?"}]
            )
            wait_for(lambda: "after_sent" in points(toy), "the hook's after_sent")
            assert not toy.closed
        assert toy.closed  # closed at shutdown
    assert points(toy) == ["before_call", "on_answer", "after_sent"]
    before, answered, after = (seen for _, seen in toy.seen)
    rid = r.headers["x-hybridllm-request-id"]
    decision = before["decision"]
    assert isinstance(decision, RouteDecision) and decision.target == 0 and decision.score is not None
    assert before == {"rid": rid, "key": NAME, "kind": "chat", "stream": False, "decision": decision,
                      "body_model": "hybrid-t-0"}  # fmt: skip
    # the decision is frozen: a hook that wants another one replaces it
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.target = 1  # type: ignore[misc]
    assert answered == {"model": SMALL, "status": 200, "answer": None}  # the text comes once asked for
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}  # the fake upstream counts words
    assert after == {"rid": rid, "status": 200, "model": SMALL, "answer": "four, said small", "usage": usage,
                     "cost": pytest.approx((5 * 1.0 + 3 * 2.0) / 1e6), "timed": True}  # fmt: skip
    assert r.parse().choices[0].message.content == "four, said small"
    assert s_up.requests[0]["model"] == "s-model" and not l_up.requests


def test_a_hook_gets_a_streamed_answer_s_text_once_the_relay_ended(router):
    toy = Toy()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: "the answer is four"
        with serve(router, s_up, l_up, toy) as proxy:
            stream = proxy.openai(KEY).chat.completions.create(
                model="hybrid-t-0", messages=[{"role": "user", "content": "What is 2 + 2?"}], stream=True
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            wait_for(lambda: "after_sent" in points(toy), "the hook's after_sent")
    after = toy.seen[-1][1]
    assert text == after["answer"] == "the answer is four"
    # the proxy asked for the stream's usage: counted and priced though the client did not ask
    assert after["usage"]["completion_tokens"] == 4 and after["cost"] == pytest.approx((1 + 4 * 2.0) / 1e6)


class Refuse(BaseHook):
    """Refuses requests that name a forbidden word, the reason its own (OpenAI-shaped 403)."""

    async def before_call(self, ctx: RequestContext) -> None:
        body = ctx.body or {}
        if "forbidden" in str(body.get("messages")):
            assert ctx.decision is not None
            ctx.decision = dataclasses.replace(ctx.decision, reason="toy policy: forbidden word")
            raise RequestError(403, "the toy hook refuses this request", code="toy_refused")


class MoveToLarge(BaseHook):
    """Sends requests that mention 'legal' to the large model, with no fallback."""

    async def before_call(self, ctx: RequestContext) -> None:
        assert ctx.decision is not None
        if "legal" in str((ctx.body or {}).get("messages")):
            ctx.decision = dataclasses.replace(
                ctx.decision, target=1, reason="toy: legal goes large", may_fall_back=False
            )


def test_a_hook_refuses_or_moves_a_request_before_the_call_and_later_hooks_see_it(router):
    toy = Toy()
    hooks = (Refuse(), MoveToLarge(), toy)
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up, *hooks) as proxy:
        c = proxy.openai(KEY)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            c.chat.completions.create(model="hybrid-t-0", messages=[{"role": "user", "content": "a forbidden word"}])
        wait_for(lambda: "after_sent" in points(toy), "the refused request's after_sent")
        r = c.chat.completions.with_raw_response.create(
            model="hybrid-t-0", messages=[{"role": "user", "content": "a legal question"}]
        )
        wait_for(lambda: points(toy).count("after_sent") == 2, "the moved request's after_sent")
    response = refused.value.response
    assert response.status_code == 403 and refused.value.code == "toy_refused"
    assert response.json()["error"]["message"] == "the toy hook refuses this request"
    assert response.headers["x-hybridllm-reason"] == "toy policy: forbidden word"
    # the refusal stopped the hooks after it before the call: the toy saw only its end
    assert points(toy) == ["after_sent", "before_call", "on_answer", "after_sent"]
    assert toy.seen[0][1]["status"] == 403 and toy.seen[0][1]["cost"] is None
    assert r.headers["x-hybridllm-model"] == LARGE and r.headers["x-hybridllm-reason"] == "toy: legal goes large"
    assert toy.seen[1][1]["decision"].target == 1 and toy.seen[-1][1]["model"] == LARGE
    # nothing reached an upstream for the refused request; the moved one went to the large model only
    assert not s_up.requests and len(l_up.requests) == 1


class Broken(BaseHook):
    async def after_sent(self, ctx: RequestContext) -> None:
        raise RuntimeError("a broken hook")


def test_one_hook_failing_after_the_answer_does_not_stop_the_others(router, caplog):
    toy = Toy()
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, serve(router, s_up, l_up, Broken(), toy) as proxy:
        r = proxy.openai(KEY).chat.completions.with_raw_response.create(
            model="hybrid-t-0", messages=[{"role": "user", "content": "hello"}]
        )
        wait_for(lambda: "after_sent" in points(toy), "the second hook's after_sent")
    assert r.status_code == 200 and toy.seen[-1][1]["status"] == 200
    assert any("hook Broken failed" in rec.getMessage() for rec in caplog.records)
