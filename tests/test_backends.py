"""The HTTP backend against a real OpenAI-protocol server on 127.0.0.1, faults included."""

import asyncio

import pytest

from hybridllm.backends import BackendError, HTTPBackend, SamplingParams

from .helpers.fake_openai import FakeOpenAI


@pytest.fixture
def upstream():
    with FakeOpenAI() as f:
        yield f


def run(coro):
    return asyncio.run(coro)


def backend(upstream, **kw):
    kw.setdefault("backoff_s", 0.01)
    return HTTPBackend.from_spec(f"tiny@{upstream.url}", **kw)


def test_chat_and_completion_with_usage_and_latency(upstream):
    async def go():
        async with backend(upstream) as b:
            s = await b.generate("hello there", SamplingParams(seed=3, max_tokens=8))
        async with backend(upstream, endpoint="completion") as b:
            c = await b.generate("plain", SamplingParams(seed=4))
        return s, c

    s, c = run(go())
    assert s.text == "echo:hello there#3" and s.prompt_tokens == 2 and s.finish_reason == "stop"
    assert s.latency_s > 0
    assert c.text == "echo:plain#4"
    sent = upstream.requests[0]
    assert sent["model"] == "tiny" and sent["max_tokens"] == 8 and sent["messages"][0]["role"] == "user"


def test_retries_through_429_and_500(upstream):
    upstream.faults.extend(["429", "500", "429"])

    async def go():
        async with backend(upstream) as b:
            return await b.generate("x", SamplingParams(seed=1))

    assert run(go()).text == "echo:x#1"
    assert len(upstream.requests) == 4


def test_gives_up_after_retries_and_does_not_retry_400(upstream):
    upstream.faults.extend(["500"] * 3)

    async def go(**kw):
        async with backend(upstream, **kw) as b:
            return await b.generate("x", SamplingParams())

    with pytest.raises(BackendError, match="gave up after 3 tries"):
        run(go(max_retries=2))
    upstream.faults.clear()
    upstream.faults.append("400")
    n = len(upstream.requests)
    with pytest.raises(BackendError, match="HTTP 400") as info:
        run(go())
    assert info.value.status == 400 and len(upstream.requests) == n + 1


def test_timeout_is_retried_then_succeeds(upstream):
    upstream.faults.append("sleep:1.0")

    async def go():
        async with backend(upstream, timeout_s=0.3) as b:
            return await b.generate("slow", SamplingParams(seed=2))

    assert run(go()).text == "echo:slow#2"


@pytest.mark.parametrize("fault", ["malformed", "nochoices"])
def test_malformed_bodies_are_clear_errors(upstream, fault):
    upstream.faults.append(fault)

    async def go():
        async with backend(upstream) as b:
            return await b.generate("x", SamplingParams())

    with pytest.raises(BackendError, match="malformed response body"):
        run(go())


def test_connection_refused_is_reported():
    async def go():
        async with HTTPBackend.from_spec("m@http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.01) as b:
            return await b.generate("x", SamplingParams())

    with pytest.raises(BackendError, match="gave up after 2 tries"):
        run(go())


def test_concurrency_limit_is_respected(upstream):
    upstream.faults.extend(["sleep:0.2"] * 6)

    async def go():
        async with backend(upstream, concurrency=2) as b:
            t0 = asyncio.get_running_loop().time()
            await asyncio.gather(*(b.generate(f"p{i}", SamplingParams()) for i in range(6)))
            return asyncio.get_running_loop().time() - t0

    assert run(go()) >= 0.55  # 6 requests of 0.2 s, two at a time: at least 3 rounds


def test_spec_errors(monkeypatch):
    with pytest.raises(ValueError, match="MODEL@http"):
        HTTPBackend.from_spec("gpt-4o")
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(ValueError, match="NOPE_KEY is not set"):
        HTTPBackend.from_spec("m@https://x/v1", api_key_env="NOPE_KEY")
    monkeypatch.setenv("MY_KEY", "sk-secret")
    b = HTTPBackend.from_spec("m@https://x/v1", api_key_env="MY_KEY")
    assert "sk-secret" not in repr(b)


def test_streamed_answers_arrive_piece_by_piece(upstream):
    pieces: list[str] = []

    async def go():
        async with backend(upstream) as b:
            s = await b.generate("one two three four", SamplingParams(seed=2), on_text=pieces.append)
        async with backend(upstream, endpoint="completion") as b:
            c = await b.generate("plain text", SamplingParams(seed=5), on_text=pieces.append)
        return s, c

    s, c = run(go())
    assert s.text == "echo:one two three four#2" and c.text == "echo:plain text#5"
    assert pieces == ["echo:one", " two", " three", " four#2", "echo:plain", " text#5"]
    assert s.completion_tokens == 4 and s.finish_reason == "stop"  # from the usage chunk asked for
    assert upstream.requests[0]["stream"] is True and upstream.requests[0]["stream_options"] == {"include_usage": True}


def test_stream_retries_before_its_first_piece_but_not_after(upstream):
    pieces: list[str] = []
    upstream.faults.extend(["429", "500"])

    async def go():
        async with backend(upstream) as b:
            return await b.generate("a b c d", SamplingParams(), on_text=pieces.append)

    assert run(go()).text == "echo:a b c d#None" and len(upstream.requests) == 3
    pieces.clear()
    upstream.requests.clear()
    upstream.faults.append("midstream")  # dies after two chunks
    with pytest.raises(BackendError, match="stream broke"):
        run(go())
    assert pieces == ["echo:a", " b"] and len(upstream.requests) == 1


def test_proxy_from_the_environment_applies_per_host(monkeypatch):
    """HTTPS_PROXY is used for a remote endpoint and NO_PROXY keeps local ones direct, as most HTTP
    clients do; looked up once per backend, not per request."""
    from hybridllm.backends._http import _env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp")
    assert _env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert _env_proxy("http://127.0.0.1:8000/v1") is None
    assert _env_proxy("http://vllm.corp:8000/v1") is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    assert _env_proxy("https://api.openai.com/v1") is None
