"""Property test of the proxy's request handling: no body, however malformed, gets a 500 or kills it."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
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
