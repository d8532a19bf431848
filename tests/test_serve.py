"""The routing proxy with the official openai client, against real upstream HTTP servers."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager

import httpx
import openai
import pytest

from hybridllm.serve import ServeOptions, create_app

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.proxy import InProcess, Proxy, upstream


@contextmanager
def proxy_stack(router, serve):
    """The proxy before two fake upstreams (real HTTP servers), served by ``serve`` (:class:`Proxy` on
    a socket, :class:`InProcess` through ASGI); yields (the served proxy, small upstream, large upstream)."""
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: f"small says {p}"
        l_up.reply = lambda p: f"large says {p}"
        small = upstream(SMALL, s_up.url, "s-model", timeout_s=2.0)
        large = upstream(LARGE, l_up.url, "l-model", timeout_s=2.0)
        app = create_app(router, small, large, ServeOptions())
        with serve(app) as proxy:
            yield proxy, s_up, l_up


@pytest.fixture
def stack(router):
    """On a real socket: for streams, disconnects and timeouts, where the connection is the point."""
    with proxy_stack(router, Proxy) as got:
        yield got


@pytest.fixture
def app_stack(router):
    """In process (the app's ASGI interface, no socket): for the proxy's own logic."""
    with proxy_stack(router, InProcess) as got:
        yield got


def client(proxy, key="none"):
    return proxy.openai(key)


def ask(c, model, text="What is 2+2?", **kw):
    return c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def test_routing_by_each_knob(app_stack):
    proxy, s_up, _ = app_stack
    c = client(proxy)
    r = ask(c, "hybrid-t-0")
    assert r.headers["x-hybridllm-model"] == SMALL and r.parse().choices[0].message.content.startswith("small says")
    assert float(r.headers["x-hybridllm-threshold"]) == 0.0 and 0 <= float(r.headers["x-hybridllm-score"]) <= 1
    r = ask(c, "hybrid-t-1.000001")
    assert r.headers["x-hybridllm-model"] == LARGE
    assert ask(c, "small").headers["x-hybridllm-model"] == SMALL
    assert ask(c, "large").headers["x-hybridllm-model"] == LARGE
    assert ask(c, LARGE).headers["x-hybridllm-model"] == LARGE
    assert ask(c, "hybrid-ca-0").headers["x-hybridllm-model"] == LARGE
    r = ask(c, "hybrid")
    assert r.headers["x-hybridllm-reason"].startswith("default")
    # the body field wins over the name
    r = ask(c, "large", extra_body={"hybridllm": {"threshold": 0}})
    assert r.headers["x-hybridllm-model"] == SMALL
    assert s_up.requests[-1]["model"] == "s-model" and "hybridllm" not in s_up.requests[-1]


def test_unknown_model_lists_valid_names(app_stack):
    proxy, *_ = app_stack
    with pytest.raises(openai.NotFoundError) as info:
        ask(client(proxy), "gpt-9")
    assert "hybrid-qd-<pct>" in str(info.value)
    models = [m.id for m in client(proxy).models.list()]
    assert {"hybrid", "small", "large", SMALL, LARGE} <= set(models)


def test_streaming_chunk_by_chunk_and_tools_passthrough(stack):
    proxy, s_up, _ = stack
    c = client(proxy)
    stream = c.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    parts = [ch.choices[0].delta.content for ch in stream if ch.choices and ch.choices[0].delta.content]
    assert "".join(parts) == "small says one two three" and len(parts) == 5
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    ask(c, "small", tools=tools, stop=["x"], n=1, logprobs=True, extra_body={"custom_field": 7})
    sent = s_up.requests[-1]
    assert sent["tools"] == tools and sent["stop"] == ["x"] and sent["logprobs"] is True and sent["custom_field"] == 7


def test_fallback_on_500_timeout_and_refused(stack, router):
    proxy, s_up, l_up = stack
    c = client(proxy)
    s_up.faults.append("500")
    r = ask(c, "hybrid-t-0")  # routed to small
    assert r.headers["x-hybridllm-model"] == LARGE and "fallback" in r.headers["x-hybridllm-reason"]
    assert r.headers["x-hybridllm-fallback-from"] == SMALL
    s_up.faults.append("sleep:3")  # over the 2 s upstream timeout
    assert ask(c, "hybrid-t-0").headers["x-hybridllm-model"] == LARGE
    dead = upstream(SMALL, "http://127.0.0.1:9/v1", "s")
    app = create_app(router, dead, upstream(LARGE, l_up.url, "l"), ServeOptions())
    with Proxy(app) as p2:
        assert ask(client(p2), "hybrid-t-0").headers["x-hybridllm-model"] == LARGE
        # a forced model does not fall back unless the request asks for it
        with pytest.raises(openai.APIStatusError) as info:
            ask(client(p2), "small")
        assert info.value.status_code == 502
        r = ask(client(p2), "small", extra_body={"hybridllm": {"fallback": True}})
        assert r.headers["x-hybridllm-model"] == LARGE and r.headers["x-hybridllm-fallback-from"] == SMALL
    app = create_app(router, dead, upstream(LARGE, l_up.url, "l"), ServeOptions(fallback=False))
    with Proxy(app) as p3, pytest.raises(openai.APIStatusError) as info:
        ask(client(p3), "hybrid-t-0")
    assert info.value.status_code == 502


def test_midstream_failure_ends_with_error_event(stack):
    proxy, s_up, _ = stack
    s_up.faults.append("midstream")
    with httpx.stream(
        "POST",
        proxy.url + "/chat/completions",
        timeout=10,
        json={"model": "small", "stream": True, "messages": [{"role": "user", "content": "a b c d"}]},
    ) as r:
        text = "".join(r.iter_text())
    assert '"upstream_error"' in text and "mid-stream" in text


def test_auth_and_bad_requests(router):
    with FakeOpenAI() as up:
        app = create_app(
            router,
            upstream(SMALL, up.url, "s"),
            upstream(LARGE, up.url, "l"),
            ServeOptions(api_keys=["k1"], max_body_bytes=2000, max_messages=3),
        )
        with InProcess(app) as p:
            with pytest.raises(openai.AuthenticationError):
                ask(client(p, "wrong"), "small")
            assert ask(client(p, "k1"), "small").headers["x-hybridllm-model"] == SMALL
            h = {"Authorization": "Bearer k1"}
            for body, status in [
                (b"{not json", 400),
                (b"[1]", 400),
                (b'{"model": 3}', 400),
                (b'{"model": "small", "messages": []}', 400),
                (b'{"model": "small", "messages": [1]}', 400),
                (
                    b'{"model": "hybrid", "messages": [{"role": "user", "content": "x"}], "hybridllm": {"bogus": 1}}',
                    400,
                ),
            ]:
                r = p.http.post(p.url + "/chat/completions", content=body, headers=h)
                assert r.status_code == status and "error" in r.json(), body
            big = {"model": "small", "messages": [{"role": "user", "content": "x" * 5000}]}
            assert p.http.post(p.url + "/chat/completions", json=big, headers=h).status_code == 413
            many = {"model": "small", "messages": [{"role": "user", "content": "x"}] * 4}
            assert p.http.post(p.url + "/chat/completions", json=many, headers=h).status_code == 400


def test_metrics_count_requests(app_stack):
    proxy, *_ = app_stack
    c = client(proxy)
    for _ in range(3):
        ask(c, "small")
    ask(c, "large")
    text = proxy.http.get(proxy.url.replace("/v1", "") + "/metrics").text
    assert f'hybridllm_requests_total{{model="{SMALL}",status="200"}} 3.0' in text
    assert f'hybridllm_requests_total{{model="{LARGE}",status="200"}} 1.0' in text
    assert f'hybridllm_routing_decisions_total{{model="{SMALL}",reason="forced"}} 3.0' in text
    assert proxy.http.get(proxy.url.replace("/v1", "") + "/health").json() == {"status": "ok"}


@pytest.mark.slow
def test_cli_serve_subprocess_with_openai_client(router, tmp_path):
    from .helpers.procs import running_serve

    with FakeOpenAI() as up:
        up.reply = lambda p: f"up says {p}"
        port = free_port()
        cfg = tmp_path / "serve.toml"
        cfg.write_text(
            f'small = "s@{up.url}"\nlarge = "l@{up.url}"\nport = {port}\n'
            'default_knob = "hybrid-t-0"\nmax_messages = 2\n'
        )
        with running_serve(["--router", str(router.directory), "--config", str(cfg)], port) as proc:
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
            r = c.chat.completions.with_raw_response.create(
                model="hybrid", messages=[{"role": "user", "content": "hi"}]
            )
            assert r.parse().choices[0].message.content == "up says hi"
            assert r.headers["x-hybridllm-model"] == SMALL and r.headers["x-hybridllm-threshold"] == "0.000000"
            with pytest.raises(openai.BadRequestError):  # max_messages = 2 from the config file
                c.chat.completions.create(model="hybrid", messages=[{"role": "user", "content": "x"}] * 3)
            # the start-up hint's curl command works as printed (it comes before the server is up)
            hint = next(line for line in iter(proc.stdout.readline, b"") if b"try: curl" in line)
            shown = subprocess.run(["bash", "-c", hint.decode().split("try: ", 1)[1]], capture_output=True, text=True)
            assert shown.returncode == 0 and "up says What is 2+3?" in shown.stdout
            assert f"x-hybridllm-model: {SMALL}".lower() in shown.stdout.lower()
        log = proc.stdout.read().decode()
        assert '"model": "' + SMALL in log  # one structured access-log line per request
        assert '"prompt"' not in log  # prompt text is not logged unless enabled


def test_client_disconnect_cancels_the_upstream_stream(stack):
    proxy, s_up, _ = stack
    s_up.stream_delay = 0.1
    words = " ".join(f"w{i}" for i in range(60))  # 60+ chunks, 6+ s if read to the end
    with httpx.stream(
        "POST",
        proxy.url + "/chat/completions",
        timeout=10,
        json={"model": "small", "stream": True, "messages": [{"role": "user", "content": words}]},
    ) as r:
        it = r.iter_raw()
        next(it)
    time.sleep(1.5)
    sent = s_up.chunks_sent
    time.sleep(1.0)
    assert s_up.chunks_sent == sent, "upstream kept streaming after the client left"
    assert sent < 40


def test_completions_endpoint_routes_too(app_stack):
    proxy, s_up, _ = app_stack
    c = client(proxy)
    r = c.completions.with_raw_response.create(model="hybrid-t-0", prompt="Once upon a time", max_tokens=5)
    assert r.headers["x-hybridllm-model"] == SMALL and r.parse().choices[0].text.startswith("echo:Once upon a time")
    assert s_up.requests[-1]["prompt"] == "Once upon a time" and s_up.requests[-1]["model"] == "s-model"


@pytest.mark.slow
def test_in_process_local_model_as_upstream(router):
    from hybridllm.backends import LocalBackend

    with FakeOpenAI() as l_up:
        local = LocalBackend("gemma-3-270m", n_ctx=512, name=SMALL)
        app = create_app(router, local, upstream(LARGE, l_up.url, "l"), ServeOptions())
        with Proxy(app) as p:
            c = client(p)
            r = c.completions.with_raw_response.create(
                model="small", prompt="The capital of France is", max_tokens=8, temperature=0.0, seed=1
            )
            out = r.parse()
            assert r.headers["x-hybridllm-model"] == SMALL and out.model == "gemma-3-270m"
            assert out.choices[0].text.strip() and 0 < out.usage.completion_tokens <= 8
            chat = c.chat.completions.create(model="small", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
            assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens > 0
            stream = c.completions.create(model="small", prompt="One, two, three,", max_tokens=6, stream=True)
            pieces = [ch.choices[0].text for ch in stream if ch.choices]
            assert len(pieces) >= 2 and "".join(pieces).strip()


def test_odd_upstream_bodies_are_relayed_not_500(app_stack):
    proxy, s_up, _ = app_stack
    s_up.faults.append("oddjson")
    r = proxy.http.post(
        proxy.url + "/chat/completions", json={"model": "small", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 200 and r.json() == {"choices": [], "usage": 5}
    s_up.faults.append("malformed")
    r = proxy.http.post(
        proxy.url + "/chat/completions", json={"model": "small", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 502  # malformed body, forced model: no fallback
    s_up.faults.append("malformed")
    r = proxy.http.post(
        proxy.url + "/chat/completions", json={"model": "hybrid-t-0", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 200 and r.headers["x-hybridllm-model"] == LARGE  # routed: fell back


def test_user_middleware_sees_proxied_requests(router):
    """The proxied routes skip FastAPI's own stack, but not middleware a user adds to the app."""
    seen: list[str] = []

    class Tag:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                seen.append(f"{scope['method']} {scope['path']}")
            await self.app(scope, receive, send)

    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        app = create_app(router, upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l"), ServeOptions())
        app.add_middleware(Tag)
        with InProcess(app) as proxy:
            r = ask(client(proxy), "hybrid")
            assert r.headers["x-hybridllm-model"] in (SMALL, LARGE)
    assert seen == ["POST /v1/chat/completions"]


def test_a_decider_wraps_the_policy_without_touching_the_handler(router):
    """The decision seam: a wrapper sees every routed request's decision and may change it (here: a
    request whose prompt mentions 'refund' always goes to the large model); the proxy acts on what
    it returns, headers and access record included, and the policy decides everything else."""
    from hybridllm.serve import RouteDecision

    seen: list[RouteDecision] = []

    class KeepRefundsOnLarge:
        def __init__(self, policy):
            self.policy = policy

        async def decide(self, model, extra, text, alone):
            d = await self.policy.decide(model, extra, text, alone)
            seen.append(d)
            if "refund" in text:
                return RouteDecision(1, "refunds stay on the large model", False, d.score, d.threshold, d.scores)
            return d

    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: "small"
        l_up.reply = lambda p: "large"
        small = upstream(SMALL, s_up.url, "s-model", timeout_s=2.0)
        large = upstream(LARGE, l_up.url, "l-model", timeout_s=2.0)
        app = create_app(router, small, large, ServeOptions(), decider=KeepRefundsOnLarge)
        with InProcess(app) as proxy:
            c = client(proxy)
            r = c.chat.completions.with_raw_response.create(
                model="hybrid-t-0", messages=[{"role": "user", "content": "I want a refund"}]
            )
            assert r.headers["x-hybridllm-model"] == LARGE and r.parse().choices[0].message.content == "large"
            assert r.headers["x-hybridllm-reason"] == "refunds stay on the large model"
            r = c.chat.completions.with_raw_response.create(
                model="hybrid-t-0", messages=[{"role": "user", "content": "What is 2 + 2?"}]
            )
            assert r.headers["x-hybridllm-model"] == SMALL  # threshold 0: the policy's choice, unchanged
            assert r.headers["x-hybridllm-reason"] == "threshold=0"
    assert [d.target for d in seen] == [0, 0] and all(d.threshold == 0.0 for d in seen)
