"""The proxy under hostile input and faults (issue 14): every refusal is an OpenAI-shaped 4xx, a bad
request fails alone, upstream faults end in a clear status, and nobody waits forever."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from hybridllm.serve import ServeOptions, create_app

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.proxy import Proxy, upstream

MSG = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def stack(router):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        small = upstream(SMALL, s_up.url, "s-model", timeout_s=2.0)
        large = upstream(LARGE, l_up.url, "l-model", timeout_s=2.0)
        with Proxy(create_app(router, small, large, ServeOptions(max_body_bytes=200_000))) as proxy:
            yield proxy, s_up, l_up


def post(proxy, body, **kw):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        proxy.url + "/chat/completions", content=data, headers={"content-type": "application/json"}, timeout=20, **kw
    )


def is_openai_error(r: httpx.Response) -> bool:
    err = r.json().get("error")
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


# item 5: the request classes that gave 500s
HOSTILE = [
    b'{"model": "hybrid", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"model": "hybrid", "messages": [{"role": "user", "content": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
    json.dumps({"model": "hybrid", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}).encode(),
    json.dumps({"model": "hybrid", "messages": [{"role": "user", "content": [7]}]}).encode(),
    json.dumps({"model": "hybrid", "messages": [{"role": "user", "content": {"a": 1}}]}).encode(),
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
    b'{"model": "hybrid", "messages": [{"role": "system", "content": "\\udfff"}, {"role": "user", "content": "x"}]}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "temperature": -Infinity}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1' + b"0" * 5000 + b"}",
    b'{"model": "hybrid-qd-' + b"0" * 300 + b'1", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "hybridllm": {"threshold": 1e999}}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "hybridllm": {"threshold": 1'
    + b"0" * 400
    + b"}}",
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "hybridllm": {"\\ud800": 1}}',
    b"\xff\xfe not utf-8",
]


def test_hostile_bodies_get_4xx_in_openai_shape(stack):
    proxy, s_up, l_up = stack
    for body in HOSTILE:
        r = post(proxy, body)
        assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:200])
        assert is_openai_error(r), body[:80]
    assert s_up.requests == [] and l_up.requests == []  # nothing of it reached an upstream
    assert post(proxy, {"model": "hybrid", "messages": MSG}).status_code == 200  # and the proxy still works


@pytest.mark.parametrize(
    "name",
    [
        "hybrid-t- 0.5",
        "hybrid-qd-1\n",
        "hybrid-qd-\u0661",
        "hybrid-ca-+5",
        "hybrid-qd-1e1",
        "hybrid-qd-01",
        "hybrid-t-2",
    ],
)
def test_only_the_documented_name_grammar_is_accepted(stack, name):
    proxy, *_ = stack
    r = post(proxy, {"model": name, "messages": MSG})
    assert (r.status_code == 404 and r.json()["error"]["code"] == "model_not_found") or r.status_code == 400, name


def test_unknown_paths_methods_and_model_list(stack):
    proxy, *_ = stack
    base = proxy.url.replace("/v1", "")
    r = httpx.get(base + "/v1/nope")
    assert r.status_code == 404 and is_openai_error(r)
    r = httpx.get(proxy.url + "/chat/completions")
    assert r.status_code == 405 and is_openai_error(r)
    r = post(proxy, {"model": "gpt-9", "messages": MSG})
    msg = r.json()["error"]["message"]
    assert r.status_code == 404 and msg.count("small") == 1 and "s-model" in msg
    ids = [m["id"] for m in httpx.get(proxy.url + "/models").json()["data"]]
    assert {"small", "large", SMALL, LARGE, "s-model", "l-model", "hybrid"} <= set(ids)
    for name in ("s-model", "l-model"):  # every listed alias really is accepted
        assert post(proxy, {"model": name, "messages": MSG}).status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):  # API docs are off by default
        assert httpx.get(base + path).status_code == 404


class PoisonRouter:
    """The test router with one injected fault: scoring raises for any batch holding a poisoned text."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, texts, **kw):
        self.seen.append(list(texts))
        if any("POISON" in t for t in texts):
            raise RuntimeError("cannot score")
        return self.inner.score(texts, **kw)


def test_one_bad_request_does_not_fail_its_batch_neighbours(router):
    poisoned = PoisonRouter(router)
    with FakeOpenAI() as up:
        up.delay = 0.0
        opts = ServeOptions(batch_window_s=0.05)  # make them share micro-batches
        app = create_app(poisoned, upstream(SMALL, up.url, "s"), upstream(LARGE, up.url, "l"), opts)
        with Proxy(app) as proxy:

            async def burst():
                async with httpx.AsyncClient(timeout=20) as c:
                    bodies = [
                        {"model": "hybrid", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(15)
                    ]
                    bodies.insert(7, {"model": "hybrid", "messages": [{"role": "user", "content": "POISON"}]})
                    return await asyncio.gather(*(c.post(proxy.url + "/chat/completions", json=b) for b in bodies))

            got = asyncio.run(burst())
    statuses = [r.status_code for r in got]
    assert statuses[7] == 400 and is_openai_error(got[7])
    assert statuses[:7] + statuses[8:] == [200] * 15
    assert any(len(b) > 1 and any("POISON" in t for t in b) for b in poisoned.seen), "never shared a batch"


def test_router_reads_a_bounded_text(router):
    seen = PoisonRouter(router)
    with FakeOpenAI() as up:
        opts = ServeOptions(max_body_bytes=3_000_000, max_router_chars=4000)
        with Proxy(create_app(seen, upstream(SMALL, up.url, "s"), upstream(LARGE, up.url, "l"), opts)) as proxy:
            long = "word " * 200_000 + "What is the capital of France?"
            r = post(proxy, {"model": "hybrid", "messages": [{"role": "user", "content": long}]})
    assert r.status_code == 200
    text = seen.seen[-1][0]
    assert len(text) <= 4001 and text.endswith("capital of France?")  # head and tail kept


def raw_request(port: int, head: bytes, body: bytes = b"", wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data:
                    break
        except TimeoutError:
            pass
        return data


def test_body_limit_is_enforced_while_reading(stack):
    proxy, *_ = stack
    t0 = time.perf_counter()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200000000\r\n\r\n"
    )
    got = raw_request(proxy.port, head, b'{"model": "hybrid"')
    assert got.startswith(b"HTTP/1.1 413") and time.perf_counter() - t0 < 3
    # no Content-Length (chunked): cut off once the limit passes
    chunk = b"x" * 100_000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert raw_request(proxy.port, head, chunked).startswith(b"HTTP/1.1 413")


def test_a_client_hanging_up_mid_body_is_its_doing_not_an_internal_error(stack, caplog):
    proxy, s_up, l_up = stack
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(head + b'{"model": "hybrid", "messages": [')  # and hangs up
    deadline = time.time() + 5
    metrics = ""
    while 'status="499"' not in metrics and time.time() < deadline:
        time.sleep(0.05)
        metrics = httpx.get(proxy.url.replace("/v1", "") + "/metrics").text
    assert 'status="499"' in metrics
    assert "internal error" not in caplog.text and "Traceback" not in caplog.text
    assert s_up.requests == [] and l_up.requests == []


def test_upstream_drip_hits_the_total_deadline(stack):
    proxy, s_up, _ = stack
    s_up.faults.append("drip")  # 30 s of one byte per 0.1 s against a 2 s timeout
    t0 = time.perf_counter()
    r = post(proxy, {"model": "small", "messages": MSG})
    assert r.status_code == 504 and is_openai_error(r) and time.perf_counter() - t0 < 6


def test_non_streaming_disconnect_cancels_without_fallback(stack):
    proxy, s_up, l_up = stack
    s_up.faults.append("sleep:1.5")
    body = json.dumps({"model": "hybrid-t-0", "messages": MSG}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(head % len(body) + body)
        time.sleep(0.4)
    time.sleep(2.0)
    assert len(s_up.requests) == 1 and s_up.left_early == [True]  # the proxy hung up on the upstream
    assert l_up.requests == []  # and did not pay for a fallback nobody reads
    metrics = httpx.get(proxy.url.replace("/v1", "") + "/metrics").text
    assert f'hybridllm_requests_total{{model="{SMALL}",status="499"}} 1.0' in metrics


def test_stream_answered_without_sse_is_an_upstream_error(stack):
    proxy, s_up, _ = stack
    s_up.faults.append("json-for-stream")
    r = post(proxy, {"model": "small", "stream": True, "messages": MSG})
    assert r.status_code == 502 and "stream" in r.json()["error"]["message"]
    s_up.faults.append("json-for-stream")
    with httpx.stream(
        "POST", proxy.url + "/chat/completions", json={"model": "hybrid-t-0", "stream": True, "messages": MSG}
    ) as r:
        assert r.headers["x-hybridllm-model"] == LARGE and r.headers["x-hybridllm-fallback-from"] == SMALL
        assert r.headers["content-type"].startswith("text/event-stream") and b"[DONE]" in r.read()


def test_429_everywhere_keeps_retry_after_and_counts_429(stack):
    proxy, s_up, l_up = stack  # both rate-limit
    s_up.faults.append("429-7")
    l_up.faults.append("429-7")
    r = post(proxy, {"model": "hybrid-t-0", "messages": MSG})
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and is_openai_error(r)
    assert r.json()["error"]["type"] == "rate_limit_error"
    metrics = httpx.get(proxy.url.replace("/v1", "") + "/metrics").text
    assert f'hybridllm_requests_total{{model="{SMALL}",status="429"}} 1.0' in metrics
    assert 'status="502"' not in metrics


def test_refusals_are_logged_and_counted(stack, caplog):
    proxy, *_ = stack
    caplog.set_level("INFO", logger="hybridllm.access")
    post(proxy, b"{not json")
    post(proxy, {"model": "gpt-9", "messages": MSG})
    metrics = httpx.get(proxy.url.replace("/v1", "") + "/metrics").text
    assert 'hybridllm_requests_total{model="none",status="400"} 1.0' in metrics
    assert 'hybridllm_requests_total{model="none",status="404"} 1.0' in metrics
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hybridllm.access"]
    assert [x["status"] for x in lines] == [400, 404] and all("error" in x for x in lines)


def test_keys_guard_metrics_and_ready_and_401_is_counted(router):
    with FakeOpenAI() as up:
        opts = ServeOptions(api_keys=["k1"])
        app = create_app(router, upstream(SMALL, up.url, "s"), upstream(LARGE, "http://127.0.0.1:9/v1", "l"), opts)
        with Proxy(app) as proxy:
            base = proxy.url.replace("/v1", "")
            assert httpx.get(base + "/health").json() == {"status": "ok"}  # liveness stays open
            for path in ("/metrics", "/ready"):
                r = httpx.get(base + path)
                assert r.status_code == 401 and is_openai_error(r)
            assert post(proxy, {"model": "hybrid", "messages": MSG}).status_code == 401
            auth = {"Authorization": "Bearer k1"}
            ready = httpx.get(base + "/ready", headers=auth)
            assert ready.status_code == 503 and ready.json()["upstreams"][LARGE]["ok"] is False
            assert ready.json()["upstreams"][SMALL]["ok"] is True
            metrics = httpx.get(base + "/metrics", headers=auth).text
            assert 'hybridllm_requests_total{model="none",status="401"} 1.0' in metrics
        app = create_app(
            router,
            upstream(SMALL, up.url, "s"),
            upstream(LARGE, up.url, "l"),
            ServeOptions(api_keys=["k1"], public_metrics=True),
        )
        with Proxy(app) as proxy:
            base = proxy.url.replace("/v1", "")
            assert httpx.get(base + "/metrics").status_code == 200
            assert httpx.get(base + "/ready").json()["status"] == "ready"


def test_many_requests_with_faults_interleaved_never_5xx_for_good_ones(stack):
    """Good requests beside hostile ones, concurrently: each keeps its own outcome."""
    proxy, *_ = stack

    async def run():
        async with httpx.AsyncClient(timeout=30) as c:
            good = [
                c.post(proxy.url + "/chat/completions", json={"model": "hybrid", "messages": MSG}) for _ in range(20)
            ]
            bad = [
                c.post(proxy.url + "/chat/completions", content=b, headers={"content-type": "application/json"})
                for b in HOSTILE
            ]
            return await asyncio.gather(*good), await asyncio.gather(*bad)

    good, bad = asyncio.run(run())
    assert [r.status_code for r in good] == [200] * 20
    assert all(400 <= r.status_code < 500 for r in bad)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 2000 + b"]" * 2000,
        b'{"model": 5}',
        b'{"model": ["hybrid-t-0"]}',
        b'"hybrid-t-0"',
        b'{"model": "hybrid-qd-' + b"0" * 300 + b'1"}',
        b'{"model": "hybrid-budget-30"}',  # a fleet knob on a two-model router
        b'{"model": "hybrid-t-0\\n"}',
        b'{"model": "hybrid-t-0", "x": "' + b"a" * 20_000 + b'"}',
        b"\xff\xfe not json",
        b'{"model": "hybrid-t-\\ud800"}',
    ],
)
def test_dashboard_knob_refuses_hostile_bodies_and_keeps_the_knob(stack, body):
    proxy, *_ = stack
    base = proxy.url.removesuffix("/v1")
    before = httpx.get(base + "/dashboard/data", timeout=10).json()["router"]["knob"]
    r = httpx.post(base + "/dashboard/knob", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert 400 <= r.status_code < 500 and is_openai_error(r), (r.status_code, r.text[:200])
    assert httpx.get(base + "/dashboard/data", timeout=10).json()["router"]["knob"] == before
    ok = post(proxy, {"model": "hybrid", "messages": MSG})
    assert ok.status_code == 200


# --- /v1/messages and /v1/responses (issue 36) ----------------------------------------------------

KA, KO = "sk-ant-up-0001", "sk-oai-up-0002"
M_ASK = b'"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]'
API_HOSTILE = {
    "messages": [
        b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}]}',  # no max_tokens
        b'{"model": "hybrid", "max_tokens": 8, "messages": []}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": {"role": "user"}}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": [{"role": "tool", "content": "x"}]}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": 5}]}]}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}]}',
        b'{"model": "hybrid", "max_tokens": 8, "system": 7, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "hybrid", "max_tokens": 1e999, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "hybrid", "max_tokens": 1' + b"0" * 5000 + b', "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "hybrid", "max_tokens": true, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "hybrid", ' + M_ASK + b', "stream": "yes"}',
        b'{"model": "hybrid", ' + M_ASK + b', "model": "large"}',  # a key given twice
        b'{"model": "hybrid", "max_tokens": 8, "messages": [{"role": "user", "content": "hi \\ud800"}]}',
        b'{"model": "hybrid", "max_tokens": 8, "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"model": "hybrid", ' + M_ASK + b', "hybridllm": {"threshold": 1e999}}',
        b'{"model": "hybrid", ' + M_ASK + b', "temperature": NaN}',
        b'{"model": "hybrid-qd-' + b"0" * 300 + b'1", ' + M_ASK + b"}",
        b'{"model": ["hybrid"], ' + M_ASK + b"}",
        b"\xff\xfe not utf-8",
        b'\xfe\xff\x00{\x00"',
        b"[1, 2]",
        b"",
    ],
    "responses": [
        b'{"model": "hybrid"}',
        b'{"model": "hybrid", "input": 5}',
        b'{"model": "hybrid", "input": [5]}',
        b'{"model": "hybrid", "input": [{"role": "tool", "content": "x"}]}',
        b'{"model": "hybrid", "input": [{"type": "function_call", "call_id": 1}]}',
        b'{"model": "hybrid", "input": [{"type": "function_call_output", "output": "x"}]}',
        b'{"model": "hybrid", "input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]}',
        b'{"model": "hybrid", "input": "x", "instructions": ["a"]}',
        b'{"model": "hybrid", "input": "x", "previous_response_id": ""}',
        b'{"model": "hybrid", "input": "x", "max_output_tokens": -1}',
        b'{"model": "hybrid", "input": "x", "max_output_tokens": 1e999}',
        b'{"model": "hybrid", "input": "x", "stream": 1}',
        b'{"model": "hybrid", "input": "x", "input": "y"}',
        b'{"model": "hybrid", "input": "hi \\udfff"}',
        b'{"model": "hybrid", "input": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"model": "hybrid", "input": "x", "hybridllm": {"force": 5}}',
        b'{"model": "hybrid", "input": "x", "top_p": -Infinity}',
        b'{"model": "hybrid-t-2", "input": "x"}',
        b'{"model": "", "input": "x"}',
        b"\xff\xfe not utf-8",
        b"null",
        b"{",
    ],
}


def anthropic_error(r: httpx.Response) -> bool:
    body = r.json()
    err = body.get("error") if isinstance(body, dict) else None
    return body.get("type") == "error" and isinstance(err, dict) and isinstance(err.get("message"), str)


@pytest.fixture(scope="module")
def api_stack(router):
    from hybridllm.backends import HTTPBackend

    from .helpers.fake_anthropic import FakeAnthropic
    from .helpers.fake_responses import FakeResponses

    def ups(fake, key, api, models):
        return [HTTPBackend(m, fake.url, api_key=key, name=n, api=api, concurrency=None, timeout_s=5)
                for n, m in zip((SMALL, LARGE), models, strict=True)]  # fmt: skip

    opts = ServeOptions(max_body_bytes=200_000, api_keys=["client-key"])
    with FakeAnthropic(key=KA) as fa, FakeResponses(key=KO) as fr:
        claude = create_app(router, *ups(fa, KA, "messages", ("c-small", "c-large")), opts)
        gpt = create_app(router, *ups(fr, KO, "responses", ("g-small", "g-large")), opts)
        with Proxy(claude) as pc, Proxy(gpt) as pg:
            yield {"messages": (pc, fa, {"x-api-key": "client-key"}),
                   "responses": (pg, fr, {"authorization": "Bearer client-key"})}  # fmt: skip


@pytest.mark.parametrize("api", ["messages", "responses"])
def test_hostile_bodies_on_messages_and_responses_get_4xx_in_their_shape(api_stack, api):
    proxy, fake, key = api_stack[api]
    shaped = anthropic_error if api == "messages" else is_openai_error
    before = len(fake.raw)
    for body in API_HOSTILE[api]:
        r = httpx.post(f"{proxy.url}/{api}", content=body, headers={"content-type": "application/json", **key},
                       timeout=20)  # fmt: skip
        assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:200])
        assert shaped(r), (body[:80], r.text[:200])
    knob = {**key, "x-hybridllm-knob": "x" * 300}
    good = b'{"model": "hybrid", ' + (M_ASK if api == "messages" else b'"input": "x"') + b"}"
    bad_knob = httpx.post(f"{proxy.url}/{api}", content=good, headers=knob, timeout=20)
    assert bad_knob.status_code == 400 and shaped(bad_knob) and "x-hybridllm-knob" in bad_knob.text
    assert len(fake.raw) == before  # nothing of it reached an upstream


@pytest.mark.parametrize("api", ["messages", "responses"])
def test_messages_and_responses_bytes_are_relayed_unchanged_but_the_model(api_stack, api):
    """Odd spacing, key order, number spellings, escapes and fields hybridllm does not know reach the
    upstream as the client wrote them; only the model's value changes (and ``hybridllm`` goes)."""
    proxy, fake, key = api_stack[api]
    ask = M_ASK if api == "messages" else b'"input" :[ {"role":"user","content":[{"type":"input_text","text":"x"}]}]'
    body = (b'{ "zeta":[1.50, 2E3, -0.0],\n\t"model" :  "large" ,' + ask
            + b', "hybridllm": {"threshold": 0.5}, "meta": {"s": "\\u00e9\\n\\"q\\""}, "n": null }')  # fmt: skip
    r = httpx.post(f"{proxy.url}/{api}", content=body, headers=key, timeout=20)
    assert r.status_code == 200, r.text
    sent = {SMALL: b"small", LARGE: b"large"}[r.headers["x-hybridllm-model"]]  # where the decider sent it
    model = (b'"c-' if api == "messages" else b'"g-') + sent + b'"'
    assert fake.raw[-1] == body.replace(b'"large"', model).replace(b', "hybridllm": {"threshold": 0.5}', b"")
    streamed = body.replace(b"{ ", b'{"stream":true, ', 1)
    with httpx.stream("POST", f"{proxy.url}/{api}", content=streamed, headers=key, timeout=20) as s:
        got = b"".join(s.iter_bytes())
    assert s.status_code == 200 and got == "".join(fake.sent[-1]).encode()
    model = b'"' + json.loads(fake.raw[-1])["model"].encode() + b'"'
    assert fake.raw[-1] == streamed.replace(b'"large"', model).replace(b', "hybridllm": {"threshold": 0.5}', b"")
    for h in fake.headers[-2:]:  # each upstream's own key, never the client's
        assert "client-key" not in json.dumps(h)
