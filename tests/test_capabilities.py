"""Capabilities and context windows (routing/capabilities.py, the models file's ``context_window`` and
``supports``): what a request needs, which models can serve it, where a decision goes when the
policy's choice cannot, the forced model's refusal, and hostile bodies answered with the field named.
In memory, fast."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm.errors import UsageError
from hybridllm.routing.capabilities import (
    _ASKED,
    DEFAULT_OUTPUT_TOKENS,
    IMAGE_TOKENS,
    MARGIN_RATIO,
    MARGIN_TOKENS,
    CapabilityError,
    ModelCaps,
    Needs,
    eligible,
    fleet_caps,
    lacks,
    needs,
    pick,
    refusal,
)
from hybridllm.routing.conversation import ConversationError, ToolState, tool_state
from hybridllm.routing.money import estimate_prompt_tokens
from hybridllm.tables.registry import CAPABILITIES, Registry, RegistryError

USER = {"role": "user", "content": "What is the weather in Paris?"}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
ASKS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWER = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "hybrid", "messages": list(messages) or [USER], **fields}


def image(kind: str = "image_url") -> dict[str, Any]:
    part = {"type": kind, kind: {"url": "https://example.com/a.png"}} if kind == "image_url" else {"type": kind}
    return {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}


# --- the models file ----------------------------------------------------------------------------


def test_models_file_states_windows_and_capabilities(tmp_path) -> None:
    f = tmp_path / "models.toml"
    f.write_text(
        '[models.small]\ncost = 1\ncontext_window = 8192\nmax_output_tokens = 2048\nsupports = ["json_object"]\n'
        '[models.large]\ncost = 9\nsupports = ["tools", "vision", "json_schema", "json_object"]\n'
        "[models.old]\ncost = 20\n"
    )
    reg = Registry.load(f)
    assert (reg.models["small"].context_window, reg.models["small"].supports) == (8192, ["json_object"])
    old = reg.models["old"]  # absent keys: no limit known, every capability
    assert (old.context_window, old.max_output_tokens, old.supports) == (None, None, None)
    caps = fleet_caps(reg.models, ["small", "large", "old", "not-in-file"])
    assert caps[0] == ModelCaps("small", 8192, 2048, frozenset({"json_object"}))
    assert caps[1].supports == frozenset({"tools", "vision", "json_schema", "json_object"})
    assert caps[2].unrestricted and caps[3].unrestricted
    assert all(m.unrestricted for m in fleet_caps(None, ["a", "b"]))


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        ('supports = ["tools", "toolz"]', r":4: models\.b\.supports\.1: Input should be 'tools', .*, got 'toolz'"),
        ('supports = ["tools", "tools"]', r":4: models\.b\.supports: .*names a capability twice"),
        ('supports = "tools"', r":4: models\.b\.supports: .*valid list"),
        ("context_window = 0", r":4: models\.b\.context_window: .*greater than or equal to 1"),
        ("context_window = 8192.5", r":4: models\.b\.context_window: "),
        ("context_window = 4096\nmax_output_tokens = 8192", r":4: models\.b\.context_window: .*smaller than max"),
        ("max_output_tokens = 8192\ncontext_window = 4096", r":5: models\.b\.context_window: .*smaller than max"),
        ("context_windw = 4096", r":4: models\.b\.context_windw: unknown key"),
    ],
)
def test_models_file_errors_name_file_line_and_field(tmp_path, lines: str, where: str) -> None:
    f = tmp_path / "models.toml"
    f.write_text(f"[models.a]\ncost = 1\n[models.b]\n{lines}\ncost = 2\n")
    with pytest.raises(RegistryError, match=re.escape(str(f)) + where):
        Registry.load(f)


def test_every_capability_of_the_file_is_read_and_worded() -> None:
    assert set(_ASKED) == set(CAPABILITIES)
    with pytest.raises(UsageError, match="unknown capabilities"):
        ModelCaps("m", supports=frozenset({"telepathy"}))
    with pytest.raises(UsageError, match="context_window must be a positive integer"):
        ModelCaps("m", context_window=0)


# --- what a request needs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "caps"),
    [
        (chat(), set()),
        (chat(tools=[TOOL]), {"tools"}),
        (chat(tools=[]), set()),  # an empty list asks for nothing
        (chat(functions=[TOOL["function"]]), {"tools"}),
        (chat(USER, ASKS, ANSWER), {"tools"}),  # a tool loop, even with no tools sent
        (chat(USER, ASKS, ANSWER, {"role": "assistant", "content": "sunny"}, USER), {"tools"}),  # calls in history
        (chat(USER, ASKS), {"tools"}),  # calls unanswered
        (chat(image()), {"vision"}),
        (chat(image("input_image")), {"vision"}),
        (chat(image("input_audio")), {"audio"}),
        (chat(image("file")), {"files"}),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), {"json_schema"}),
        (chat(response_format={"type": "json_object"}), {"json_object"}),
        (chat(response_format={"type": "text"}), set()),
        (chat(response_format="json_object"), set()),  # not the API's shape: the upstream's to refuse
        (chat(image(), tools=[TOOL], response_format={"type": "json_object"}), {"tools", "vision", "json_object"}),
    ],
)
def test_needs_reads_capabilities(body: dict[str, Any], caps: set[str]) -> None:
    assert needs(body, "chat").capabilities == caps


def test_prompt_tokens_are_the_money_estimate_with_the_stated_margin() -> None:
    body = chat({"role": "system", "content": "be brief"}, {"role": "user", "content": "x" * 4000}, tools=[TOOL])
    n = needs(body, "chat")
    assert n.prompt_tokens == math.ceil(estimate_prompt_tokens(body) * MARGIN_RATIO + MARGIN_TOKENS)
    assert n.prompt_tokens > estimate_prompt_tokens(body) * 1.15
    two = chat(image(), image())  # images: IMAGE_TOKENS each, inside the margin
    est = estimate_prompt_tokens(two) + 2 * IMAGE_TOKENS
    assert needs(two, "chat").prompt_tokens == math.ceil(est * MARGIN_RATIO + MARGIN_TOKENS)
    prompt = {"model": "hybrid", "prompt": "y" * 1000}
    assert needs(prompt, "completion").prompt_tokens == math.ceil(
        estimate_prompt_tokens(prompt) * MARGIN_RATIO + MARGIN_TOKENS
    )


@pytest.mark.parametrize(
    ("fields", "out", "field"),
    [
        ({}, None, "max_tokens"),
        ({"max_tokens": 500}, 500, "max_tokens"),
        ({"max_completion_tokens": 700}, 700, "max_completion_tokens"),
        ({"max_tokens": 900, "max_completion_tokens": 700}, 900, "max_tokens"),  # the larger
        ({"max_tokens": 100, "max_completion_tokens": 700}, 700, "max_completion_tokens"),
        ({"max_tokens": 0}, None, "max_tokens"),  # not a count: not asked
        ({"max_tokens": "500", "max_completion_tokens": True}, None, "max_tokens"),
        ({"max_tokens": 12.0, "max_completion_tokens": 40}, 40, "max_completion_tokens"),
    ],
)
def test_requested_output(fields: dict[str, Any], out: int | None, field: str) -> None:
    n = needs(chat(**fields), "chat")
    assert (n.max_output, n.output_field) == (out, field)
    assert n.output_tokens == (DEFAULT_OUTPUT_TOKENS if out is None else out)
    assert n.window_tokens == n.prompt_tokens + n.output_tokens


def test_completions_need_only_a_window() -> None:
    n = needs({"model": "hybrid", "prompt": ["a", "b"], "tools": [TOOL], "max_tokens": 64}, "completion")
    assert (n.capabilities, n.max_output) == (frozenset(), 64)


def test_a_tool_state_given_is_used_not_read_again() -> None:
    body = chat(USER, ASKS, ANSWER)
    assert needs(body, "chat", tools=tool_state(body["messages"])).capabilities == {"tools"}
    # the caller's state is what counts: the server reads the history once, for sessions and here
    assert needs(chat(), "chat", tools=ToolState(True, (), 1)).capabilities == {"tools"}
    assert needs(body, "chat", tools=ToolState(False, (), 0)).capabilities == frozenset()


@pytest.mark.parametrize(
    ("body", "kind", "error", "param", "message"),
    [
        ([], "chat", CapabilityError, None, "the request body must be an object"),
        (chat(), "embeddings", CapabilityError, None, "unknown request kind 'embeddings'"),
        ({"messages": []}, "chat", CapabilityError, "messages", "'messages' must be a non-empty list"),
        ({"messages": "hi"}, "chat", CapabilityError, "messages", "'messages' must be a non-empty list"),
        (chat(ANSWER), "chat", ConversationError, "messages", r"messages\[0\]: tool message 'c1' matches no"),
        (chat(USER, ASKS, USER), "chat", ConversationError, "messages", r"messages\[2\]: user message while tool"),
        (chat(1), "chat", ConversationError, "messages", r"messages\[0\] must be an object"),
        (chat({"role": "user", "content": "\ud800"}), "chat", CapabilityError, "messages", "cannot be read"),
    ],
)
def test_unreadable_bodies_are_a_400_naming_the_field(body: Any, kind: str, error: type, param: Any, message: str):
    with pytest.raises(error, match=message) as info:
        needs(body, kind)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConversationError)
    assert info.value.param == param


def test_absurd_nesting_is_a_clear_error_not_a_crash() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(CapabilityError, match="cannot be read"):
        needs(chat(tools=[{"type": "function", "function": {"name": "f", "parameters": deep}}]), "chat")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "x"]) | _json},
    optional={"text": _json, "image_url": _json},
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "tool", "function", "system"]) | _json,
        "content": st.text(max_size=8) | st.lists(_part | _json, max_size=3) | _json,
        "tool_calls": st.lists(
            st.fixed_dictionaries({"id": st.sampled_from(["a", "b"]) | _json, "function": _json}), max_size=2
        )
        | _json,
        "tool_call_id": st.sampled_from(["a", "b"]) | _json,
        "function_call": _json,
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(_message | _json, max_size=5) | _json,
        "prompt": _json,
        "tools": _json,
        "functions": _json,
        "response_format": st.fixed_dictionaries({"type": _json}) | _json,
        "max_tokens": _json,
        "max_completion_tokens": _json,
    },
)


@settings(max_examples=600, deadline=None)
@given(_body | _json, st.sampled_from(["chat", "completion"]))
def test_hostile_bodies_raise_only_the_400_error(body: Any, kind: str) -> None:
    try:
        n = needs(body, kind)
    except ConversationError as exc:  # CapabilityError derives from it: one except, one 400
        assert isinstance(exc, ValueError)
        text = str(exc)
        assert text and "\n" not in text
        return
    assert n.capabilities <= set(CAPABILITIES)
    assert n.prompt_tokens >= MARGIN_TOKENS and (n.max_output is None or n.max_output > 0)
    small = ModelCaps("s", 4096, 1024, frozenset())
    e = eligible(n, [small, ModelCaps("l")])
    assert e.allowed[1] and e.pick(0).target in (0, 1)


# --- which models can serve it ------------------------------------------------------------------


def test_lacks_names_each_missing_capability_and_limit() -> None:
    n = Needs(frozenset({"tools", "vision"}), prompt_tokens=7000, max_output=2000)
    m = ModelCaps("small", context_window=8192, max_output_tokens=1024, supports=frozenset({"tools"}))
    assert [lack.key for lack in lacks(m, n)] == ["vision", "max_output_tokens", "context_window"]
    assert [lack.param for lack in lacks(m, n)] == ["messages", "max_tokens", "messages"]
    assert str(lacks(m, n)[2]) == (
        "its context_window 8192 is below the request's ~9000 tokens (prompt estimated 7000 with margin + 2000 answer)"
    )
    assert lacks(ModelCaps("any"), n) == ()  # no key: no limit


def test_window_boundary_and_the_default_answer() -> None:
    m = ModelCaps("w", context_window=8192)
    assert lacks(m, Needs(frozenset(), 8192 - 500, 500)) == ()  # exactly full: fits
    assert [x.key for x in lacks(m, Needs(frozenset(), 8192 - 500, 501))] == ["context_window"]
    assert lacks(m, Needs(frozenset(), 8192 - DEFAULT_OUTPUT_TOKENS)) == ()  # no max_tokens: a typical answer
    assert lacks(m, Needs(frozenset(), 8192 - DEFAULT_OUTPUT_TOKENS + 1)) != ()
    # a max_output_tokens alone does not exclude a request that names no max_tokens
    assert lacks(ModelCaps("o", max_output_tokens=16), Needs(frozenset(), 10)) == ()


def test_text_only_model_serves_plain_text_only() -> None:
    text_only = ModelCaps("t", supports=frozenset())
    assert lacks(text_only, needs(chat(), "chat")) == ()
    assert [x.key for x in lacks(text_only, needs(chat(USER, ASKS, ANSWER), "chat"))] == ["tools"]


def test_eligible_filters_the_fleet_in_cost_order() -> None:
    fleet = [
        ModelCaps("small", 8192, 2048, frozenset({"json_object"})),
        ModelCaps("mid", 32_000, None, frozenset({"tools", "json_object"})),
        ModelCaps("large", 200_000),
    ]
    plain = eligible(needs(chat(), "chat"), fleet)
    assert plain.allowed == (True, True, True) and plain.everyone and plain.pick(0).filtered is False
    tools = eligible(needs(chat(tools=[TOOL]), "chat"), fleet)
    assert tools.allowed == (False, True, True) and set(tools.reasons) == {0}
    assert tools.allowed_models() == {"mid", "large"}
    long = eligible(needs(chat({"role": "user", "content": "z" * 120_000}), "chat"), fleet)  # ~35k tokens
    assert long.allowed == (False, False, True)
    assert [x.key for x in long.reasons[1]] == ["context_window"]
    none = eligible(needs(chat({"role": "user", "content": "z" * 1_000_000}), "chat"), fleet)
    with pytest.raises(
        CapabilityError, match=r"no model can serve this request \(small: .*; mid: .*; large: its "
    ) as e:
        none.pick(2)
    assert (e.value.param, e.value.code) == ("messages", "context_length_exceeded")


# --- where a decision goes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "allowed", "target", "filtered"),
    [
        (0, (True, True, True), 0, False),
        (1, (True, True, True), 1, False),
        (0, (False, True, True), 1, True),  # the cheapest dearer one
        (0, (False, False, True), 2, True),
        (1, (True, False, False), 0, True),  # none dearer: the dearest cheaper
        (2, (True, True, False), 1, True),
        (1, (True, False, True), 2, True),  # up first, even when one below is allowed
    ],
)
def test_pick(choice: int, allowed: tuple[bool, ...], target: int, filtered: bool) -> None:
    p = pick(choice, allowed)
    assert (p.target, p.filtered) == (target, filtered)


def test_pick_refuses_when_none_can_serve_and_bad_indices() -> None:
    with pytest.raises(CapabilityError, match="no model can serve this request"):
        pick(1, (False, False, False))
    with pytest.raises(UsageError, match="choice 3 is not an index of the 3 models"):
        pick(3, (True, True, True))
    with pytest.raises(UsageError):
        pick(-1, (True,))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=8).flatmap(lambda a: st.tuples(st.just(a), st.integers(0, len(a) - 1)))
)
def test_pick_never_serves_from_a_model_that_cannot(case: tuple[list[bool], int]) -> None:
    allowed, choice = case
    if not any(allowed):
        with pytest.raises(CapabilityError):
            pick(choice, allowed)
        return
    p = pick(choice, allowed)
    assert allowed[p.target] and p.filtered == (p.target != choice)
    dearer = [i for i, ok in enumerate(allowed) if ok and i >= choice]
    assert p.target == (dearer[0] if dearer else max(i for i, ok in enumerate(allowed) if ok))


# --- the forced model's refusal -----------------------------------------------------------------


def test_forcing_a_model_that_cannot_serve_is_a_400_naming_what_it_lacks() -> None:
    fleet = [ModelCaps("small", 4096, 1024, frozenset()), ModelCaps("large")]
    e = eligible(needs(chat(image(), tools=[TOOL], max_tokens=2000), "chat"), fleet)
    e.require(1)  # the large model can: no error
    with pytest.raises(CapabilityError) as info:
        e.require(0)
    msg = str(info.value)
    assert msg == refusal("small", e.reasons[0])
    assert msg.startswith("model 'small' cannot serve this request: it does not support tools (the request has tools")
    assert "does not support vision (the request has image parts)" in msg
    assert "max_output_tokens 1024 is below the request's max_tokens 2000" in msg and "\n" not in msg
    assert (info.value.param, info.value.code) == ("tools", None)
    window = eligible(needs(chat({"role": "user", "content": "q" * 20_000}), "chat"), fleet)
    with pytest.raises(CapabilityError, match="its context_window 4096 is below") as info:
        window.require(0)
    assert (info.value.param, info.value.code) == ("messages", "context_length_exceeded")
    assert refusal("m", ["reason one", "reason two"]) == "model 'm' cannot serve this request: reason one; reason two"


# --- the docs -----------------------------------------------------------------------------------


def _section() -> str:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "sessions.md").read_text()
    return text.split("## Capabilities and windows", 1)[1].split("\n## ", 1)[0]


def test_the_docs_example_loads_and_its_error_is_the_real_one(tmp_path) -> None:
    """docs/sessions.md's models file loads, says what the section says, and the error it shows for
    an unknown capability is the one the loader gives."""
    doc = _section()
    toml = re.search(r"```toml\n(.*?)```", doc, flags=re.S)
    assert toml is not None
    f = tmp_path / "models.toml"
    f.write_text(toml.group(1))
    caps = fleet_caps(Registry.load(f).models, ["llama-3.1-8b", "gpt-4o"])
    assert caps[0] == ModelCaps("llama-3.1-8b", 8192, 2048, frozenset({"json_object"}))
    e = eligible(needs(chat(tools=[TOOL]), "chat"), caps)
    assert e.pick(0).target == 1 and e.pick(0).filtered
    f.write_text(toml.group(1).replace('supports = ["json_object"]', 'supports = ["json_object", "toolz"]'))
    shown = re.search(r"\(`(models\.toml:\d+: [^`]*)`\)", doc)
    assert shown is not None
    head, tail = shown.group(1).split("…")
    with pytest.raises(RegistryError) as info:
        Registry.load(f)
    got = str(info.value).replace(str(f), "models.toml")
    assert got.startswith(head) and got.endswith(tail), got


def test_the_docs_state_the_constants_in_force() -> None:
    doc = _section()
    assert f"× {MARGIN_RATIO} + {MARGIN_TOKENS} tokens" in doc
    assert f"{IMAGE_TOKENS} tokens an image part" in doc
    assert f"room for {DEFAULT_OUTPUT_TOKENS} tokens" in doc
    for cap in CAPABILITIES:
        assert f"| `{cap}` |" in doc
