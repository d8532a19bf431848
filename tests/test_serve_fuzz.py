"""Property test of the proxy's request handling: no body, however malformed, gets a 500 or kills it."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridllm.serve import ServeOptions, Upstream, create_app

from .conftest import LARGE, SMALL
from .fake_openai import FakeOpenAI
from .test_serve import Proxy, router  # noqa: F401  (module fixture reused)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
models = (
    st.sampled_from(
        ["hybrid", "hybrid-qd-1", "hybrid-ca-40", "hybrid-t-0.3", "hybrid-t-x", "small", "large", "nope", ""]
    )
    | st.text(max_size=12)
    | json_values
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant"]) | json_values,
                "content": st.text(max_size=40) | json_values,
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
def proxy(router):  # noqa: F811
    with FakeOpenAI() as up:
        app = create_app(
            router, Upstream(SMALL, up.url, "s", timeout_s=5), Upstream(LARGE, up.url, "l", timeout_s=5), ServeOptions()
        )
        with Proxy(app) as p:
            yield p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_request_body_causes_a_500(proxy, body):
    for path in ("/chat/completions", "/completions"):
        r = httpx.post(
            proxy.url + path, content=json.dumps(body), timeout=10, headers={"content-type": "application/json"}
        )
        assert r.status_code != 500, (body, r.text)
        if r.status_code >= 400:
            assert "error" in r.json() and "message" in r.json()["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_no_raw_bytes_cause_a_500(proxy, raw):
    r = httpx.post(proxy.url + "/chat/completions", content=raw, timeout=10)
    assert r.status_code < 500, r.text
    assert httpx.get(proxy.url.replace("/v1", "") + "/health").status_code == 200
