"""Property test of the proxy's request handling: no body, however malformed, gets a 500 or kills it."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hybridllm.serve import ServeOptions, create_app

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.proxy import Proxy, upstream

# the classes that once gave 500s: lone surrogates, non-finite and huge numbers, deep nesting (the
# last two as placeholders replaced in the raw text, since json.dumps cannot write them)
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
raw_tokens = st.sampled_from(["__DEEP__", "__HUGE__", "__ZEROS__"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**30, max_value=10**300)
    | st.floats()
    | st.text(max_size=20)
    | surrogates
    | raw_tokens,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
models = (
    st.sampled_from(
        [
            *["hybrid", "hybrid-qd-1", "hybrid-ca-40", "hybrid-t-0.3", "hybrid-t-x", "small", "large", "nope", ""],
            *["hybrid-t- 0.5", "hybrid-qd-1\n", "hybrid-qd-\u0661", "hybrid-qd-" + "0" * 300 + "1", "hybrid-ca-1e999"],
        ]
    )
    | st.text(max_size=12)
    | json_values
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant"]) | json_values,
                "content": st.text(max_size=40)
                | json_values
                | st.lists(
                    st.fixed_dictionaries(
                        {"type": st.just("text") | json_values, "text": st.text(max_size=10) | json_values}
                    ),
                    max_size=3,
                ),
            }
        )
        | json_values,
        max_size=5,
    )
    | json_values
)
bodies = (
    st.fixed_dictionaries(
        {"model": models, "messages": messages},
        optional={
            "stream": st.booleans() | json_values,
            "hybridllm": json_values
            | st.fixed_dictionaries(
                {},
                optional={
                    "threshold": json_values | st.floats(-5, 5),
                    "cost_advantage": json_values,
                    "max_quality_drop": json_values,
                    "force": json_values,
                },
            ),
            "temperature": json_values,
            "n": json_values,
        },
    )
    | json_values
)


@pytest.fixture(scope="module")
def proxy(router):
    with FakeOpenAI() as up:
        app = create_app(
            router, upstream(SMALL, up.url, "s", timeout_s=5), upstream(LARGE, up.url, "l", timeout_s=5), ServeOptions()
        )
        with Proxy(app) as p:
            yield p


def raw_json(body) -> bytes:
    """``body`` as JSON text with the placeholders made real: NaN/Infinity as Python writes them, a
    5,000-digit integer, 2,000 levels of nesting, a number with 300 leading zeros."""
    text = json.dumps(body)
    text = text.replace('"__DEEP__"', "[" * 2000 + "]" * 2000).replace('"__HUGE__"', "1" + "0" * 5000)
    text = text.replace('"__ZEROS__"', "0" * 300 + "1")
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_request_body_causes_a_5xx(proxy, body):
    for path in ("/chat/completions", "/completions"):
        r = httpx.post(
            proxy.url + path, content=raw_json(body), timeout=10, headers={"content-type": "application/json"}
        )
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            assert "error" in r.json() and "message" in r.json()["error"]


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_no_raw_bytes_cause_a_5xx(proxy, raw):
    r = httpx.post(proxy.url + "/chat/completions", content=raw, timeout=10)
    assert r.status_code < 500, r.text
    assert httpx.get(proxy.url.replace("/v1", "") + "/health").status_code == 200


# --- /v1/messages and /v1/responses (issue 36): no 5xx, errors in each protocol's shape, and an
# answered body relayed byte for byte but its model's value ----------------------------------------

KEY = {"x-api-key": "client-key", "authorization": "Bearer client-key"}
blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "image"]) | json_values},
    optional={"text": st.text(max_size=10) | json_values, "id": st.text(max_size=6) | json_values,
              "name": st.text(max_size=6) | json_values, "tool_use_id": st.text(max_size=6) | json_values,
              "input": json_values, "content": st.text(max_size=10) | json_values},
)  # fmt: skip
anthropic_messages = (
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"]) | json_values,
             "content": st.text(max_size=40) | json_values | st.lists(blocks, max_size=3)}
        ) | json_values,
        max_size=4,
    ) | json_values
)  # fmt: skip
items = st.fixed_dictionaries(
    {},
    optional={"type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]) | json_values,
              "role": st.sampled_from(["user", "assistant", "system", "developer"]) | json_values,
              "content": st.text(max_size=20) | json_values, "call_id": st.text(max_size=6) | json_values,
              "name": st.text(max_size=6) | json_values, "arguments": st.text(max_size=10) | json_values,
              "output": st.text(max_size=10) | json_values},
)  # fmt: skip
#: bodies an upstream is sent (what the byte-for-byte property needs), with odd fields of any JSON
sound = st.fixed_dictionaries(
    {"model": st.sampled_from(["hybrid", "small", "large", "hybrid-t-0"]), "max_tokens": st.integers(1, 64),
     "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)}),
                          min_size=1, max_size=3)},
    optional={"stream": st.booleans(), "metadata": json_values, "temperature": json_values, "x_new": json_values},
)  # fmt: skip
api_bodies = {
    "messages": sound | st.fixed_dictionaries(
        {"model": models, "max_tokens": st.integers(1, 64) | json_values, "messages": anthropic_messages},
        optional={"system": st.text(max_size=20) | json_values, "stream": st.booleans() | json_values,
                  "tools": json_values, "hybridllm": json_values, "metadata": json_values},
    ),
    "responses": st.fixed_dictionaries(
        {"model": models, "input": st.text(max_size=40) | st.lists(items, max_size=4) | json_values},
        optional={"instructions": st.text(max_size=20) | json_values, "stream": st.booleans() | json_values,
                  "max_output_tokens": st.integers(1, 64) | json_values, "hybridllm": json_values,
                  "previous_response_id": st.text(max_size=8) | json_values, "tools": json_values},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def api_proxies(router):
    from hybridllm.backends import HTTPBackend

    from .helpers.fake_anthropic import FakeAnthropic
    from .helpers.fake_responses import FakeResponses

    def ups(fake, api, prefix):
        return [HTTPBackend(f"{prefix}-{n}", fake.url, api_key="up-key", name=m, api=api, concurrency=None, timeout_s=5)
                for n, m in (("s", SMALL), ("l", LARGE))]  # fmt: skip

    # a cap on the key: the budget hook reads every body too (it once failed on raw surrogates)
    opts = ServeOptions(api_keys=["client-key"], key_names={"client-key": "t"}, budget_caps=["t=1000/day"],
                        prices={SMALL: (1.0, 2.0), LARGE: (1.0, 2.0)})  # fmt: skip
    with FakeAnthropic(key="up-key") as fa, FakeResponses(key="up-key") as fr:
        claude = create_app(router, *ups(fa, "messages", "c"), options=opts)
        gpt = create_app(router, *ups(fr, "responses", "g"), options=opts)
        with Proxy(claude) as pc, Proxy(gpt) as pg:
            yield {"messages": (pc, fa), "responses": (pg, fr)}


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_messages_or_responses_body_causes_a_5xx(api_proxies, data):
    for api in ("messages", "responses"):
        proxy, fake = api_proxies[api]
        body = data.draw(api_bodies[api], label=api)
        model = body["model"]
        # the model's value written where a placeholder stands, so the relayed bytes can be predicted
        text = raw_json(dict(body, model="__MODEL__")).decode("utf-8", "surrogatepass")
        raw = text.replace('"__MODEL__"', json.dumps(model), 1).encode("utf-8", "surrogatepass")
        asked = len(fake.raw)
        r = httpx.post(f"{proxy.url}/{api}", content=raw, timeout=20, headers=KEY)
        assert r.status_code < 500, (api, body, r.text[:300])
        event(f"{api} {r.status_code}")
        if r.status_code >= 400 and len(fake.raw) == asked:  # refused by hybridllm: its protocol's shape
            err = r.json()
            if api == "messages":
                assert err["type"] == "error" and isinstance(err["error"]["message"], str), r.text
            else:
                assert isinstance(err["error"]["message"], str) and "type" in err["error"], r.text
        if r.status_code == 200 and "hybridllm" not in body and len(fake.raw) > asked:
            sent = json.dumps(json.loads(fake.raw[-1])["model"])
            assert fake.raw[-1] == text.replace('"__MODEL__"', sent, 1).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-32-be"])
def test_a_surrogate_written_as_raw_bytes_is_refused_like_an_escaped_one(encoding):
    """``\ud800`` escaped and the same surrogate as raw bytes (invalid in every UTF): both a 400
    naming the cause, never a body that reaches the hooks (a cap's token count once failed on it)."""
    from hybridllm.serve.errors import RequestError
    from hybridllm.serve.protocol import parse_json

    for raw in ('{"input": "a\\ud800b"}'.encode(encoding), '{"input": "a\ud800b"}'.encode(encoding, "surrogatepass")):
        with pytest.raises(RequestError) as refused:
            parse_json(raw)
        assert refused.value.status == 400 and ("surrogate" in refused.value.message or "UTF" in refused.value.message)
    assert parse_json('{"input": "a\U0001f600b"}'.encode(encoding)) == {"input": "a\U0001f600b"}
