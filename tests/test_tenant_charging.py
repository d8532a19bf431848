"""Issue 33, items 1 and 2, as a hostile tenant tries them: every answer made upstream is charged
(streams whose client hangs up before the usage chunk, requests whose client times out), and each
request reserves its own bound per key (64 concurrent long answers on a 1,000 cap, cold and warm;
``max_tokens=1e12``; one key's reservations never block another key; two replicas on one Redis).

Everything runs against real HTTP servers on 127.0.0.1: fake OpenAI upstreams that report usage,
the proxy app under uvicorn, `hybridllm serve` processes and a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from hybridllm import Router
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.caps import parse_cap
from hybridllm.serve.settle import DEFAULT_MAX_OUTPUT_TOKENS, token_bound

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.poll import sample, wait_for
from .helpers.procs import running_serve
from .helpers.proxy import Proxy, upstream
from .helpers.redis import start_redis

#: per 1M tokens: one token of the large model costs 0.1 (in or out), of the small one 0.01
PRICES = {SMALL: (10_000.0, 10_000.0), LARGE: (100_000.0, 100_000.0)}
LONG = " ".join(["word"] * 2000)  # a long answer: 2,000 completion tokens, cost 200 on the large model
CAP = 1000.0


def cost(model: str, usage: dict[str, int]) -> float:
    pin, pout = PRICES[model]
    return (usage["prompt_tokens"] * pin + usage["completion_tokens"] * pout) / 1e6


def bound(model: str, body: dict[str, Any], max_output: int = DEFAULT_MAX_OUTPUT_TOKENS) -> float:
    """What a request reserves (and is charged when no usage comes): its own bound, priced."""
    return cost(model, token_bound(body).usage(max_output))


def chat(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": LARGE, "messages": [{"role": "user", "content": text}], **kw}


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    return sample(httpx.get(f"{base}/metrics", headers={"authorization": "Bearer kb"}).text, name, **labels)


@contextmanager
def stack(
    router: Router, caps: list[str], wrap: Callable[[Any], Any] = lambda app: app, **opts: Any
) -> Iterator[tuple[str, FakeOpenAI, Any]]:
    """The proxy app (keys team-a: ka, team-b: kb, caps ``caps``) on 127.0.0.1 (served as
    ``wrap(app)``) before two fake upstreams; yields (base URL, the large model's upstream, the app)."""
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        options = ServeOptions(
            api_keys=["ka", "kb"], key_names={"ka": "team-a", "kb": "team-b"}, prices=dict(PRICES),
            budget_caps=caps, on_cap="refuse", **opts,
        )  # fmt: skip
        app = create_app(router, upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l"), options=options)
        with Proxy(wrap(app)) as proxy:
            yield f"http://127.0.0.1:{proxy.port}", l_up, app


def spent(app: Any, cap: str) -> float:
    """What a cap's counter holds now (the in-process store)."""
    store = app.state.store
    return store.spend.get(parse_cap(cap).bucket(time.time()), 0.0)


def settled(base: str, app: Any, cap: str | None, total: float) -> Callable[[], bool]:
    """Whether ``total`` has been counted on /metrics and, with a cap, settled in its counter."""
    return lambda: (
        metric(base, "hybridllm_cost_total", model=LARGE) >= total - 1e-9
        and (cap is None or spent(app, cap) >= total - 1e-9)
    )


def access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "hybridllm.access"]


def hang_up_after_the_answer(base: str, key: str, body: dict[str, Any]) -> int:
    """Read a streamed answer up to its last choice chunk and hang up before the usage chunk: the
    status the proxy answered."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as r,
    ):
        if r.status_code != 200:
            return r.status_code
        for line in r.iter_lines():
            assert '"usage"' not in line  # the proxy asked for usage; this client did not
            if '"finish_reason": "stop"' in line:
                break  # leaving the block closes the connection
        return 200


# --- item 1: every answer is charged ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("capped", [True, False])
def test_streams_whose_client_hangs_up_before_the_usage_chunk_are_charged(router, caplog, capped):
    caplog.set_level("INFO", logger="hybridllm.access")
    cap = "team-a=1000/day" if capped else None
    with stack(router, [cap] if cap else []) as (base, l_up, app):
        l_up.reply = lambda p: " ".join(["word"] * 600)  # 600 completion tokens: cost 60.1 each
        l_up.usage_delay = 0.3  # the usage chunk comes after the client has gone
        each = cost(LARGE, {"prompt_tokens": 1, "completion_tokens": 600})
        statuses = []
        for i in range(20):
            statuses.append(hang_up_after_the_answer(base, "ka", chat(f"q{i}", stream=True)))
            answered = statuses.count(200)
            # the answer is charged once its upstream's usage arrives, after the client left
            wait_for(settled(base, app, cap, answered * each), f"{answered} hung-up streams counted")
        answered = statuses.count(200)
        assert metric(base, "hybridllm_cost_total", model=LARGE) == pytest.approx(answered * each)
        assert len(l_up.requests) == answered  # each answer made upstream is one counted
        if capped:
            # 17 answers fit under 1,000 (17 x 60.1 = 1021.7: the 17th passes the ceiling by < one request)
            assert statuses == [200] * 17 + [429] * 3
            assert spent(app, "team-a=1000/day") == pytest.approx(17 * each)
        else:
            assert statuses == [200] * 20
    left = [x for x in access(caplog) if x.get("outcome") == "client_left"]
    assert len(left) == answered and all(x["cost"] == pytest.approx(each) for x in left)
    assert all(x["key"] == "team-a" and x["status"] == 499 and "charged" not in x for x in left)


@pytest.mark.slow
@pytest.mark.parametrize("capped", [True, False])
def test_requests_whose_client_times_out_are_charged(router, caplog, capped):
    caplog.set_level("INFO", logger="hybridllm.access")
    cap = "team-a=1000/day" if capped else None
    with stack(router, [cap] if cap else []) as (base, l_up, app):
        l_up.reply = lambda p: LONG
        l_up.delay = 0.4  # the client gives up at 0.15 s; the answer is made upstream all the same
        each = cost(LARGE, {"prompt_tokens": 1, "completion_tokens": 2000})
        timed_out = refused = 0
        for i in range(8):
            try:
                r = httpx.post(f"{base}/v1/chat/completions", json=chat(f"q{i}"),
                               headers={"authorization": "Bearer ka"}, timeout=0.15)  # fmt: skip
                assert r.status_code == 429 and "budget_cap team-a=1000/day" in r.json()["error"]["message"]
                refused += 1
                continue
            except httpx.ReadTimeout:
                timed_out += 1
            wait_for(settled(base, app, cap, timed_out * each), f"{timed_out} timed-out answers counted")
        wait_for(lambda: len(l_up.requests) == timed_out, "the upstream asked once per timed-out request")
        assert metric(base, "hybridllm_cost_total", model=LARGE) == pytest.approx(timed_out * each)
        if capped:  # 5 answers of 200.1 reach the ceiling; the rest are refused
            assert (timed_out, refused) == (5, 3)
            assert spent(app, "team-a=1000/day") == pytest.approx(5 * each)
        else:
            assert (timed_out, refused) == (8, 0)
    left = [x for x in access(caplog) if x.get("outcome") == "client_left"]
    assert len(left) == timed_out and all(x["cost"] == pytest.approx(each) for x in left)


def test_an_upstream_that_never_sends_usage_is_charged_the_bound_after_the_settle_timeout(router, caplog):
    """A client that hangs up on a stream whose usage never comes within --settle-timeout: the
    upstream call is closed and the request is charged its bound (max_tokens=1e12 clamped by the
    model's max_output_tokens)."""
    caplog.set_level("INFO", logger="hybridllm.access")
    max_out = {LARGE: 700}
    with stack(router, ["team-a=1000/day"], settle_timeout_s=0.3, max_output=max_out) as (base, l_up, app):
        l_up.reply = lambda p: "a short answer"
        l_up.usage_delay = 30  # far past the settle timeout
        body = chat("q", stream=True, max_tokens=10**12)
        assert hang_up_after_the_answer(base, "ka", body) == 200
        sent = dict(body, stream_options={"include_usage": True})  # what the proxy sent upstream
        charge = bound(LARGE, sent, 700)
        wait_for(lambda: metric(base, "hybridllm_cost_total", model=LARGE) > 0, "the bound charged")
        assert metric(base, "hybridllm_cost_total", model=LARGE) == pytest.approx(charge)
        assert spent(app, "team-a=1000/day") == pytest.approx(charge)
        assert 70 <= charge < 100  # 700 output tokens at 0.1, plus the prompt's bound: never 1e11
    (line,) = [x for x in access(caplog) if x.get("outcome") == "client_left"]
    assert line["charged"] == "bound" and line["cost"] == pytest.approx(charge)


# --- item 2: fair reservations ------------------------------------------------------------------


async def _burst(base: str, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256)) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(f"{base}/v1/chat/completions", json=b, headers={"authorization": f"Bearer {key}"})
                    for b in bodies
                )
            )
        )


def burst(base: str, *work: tuple[str, list[dict[str, Any]]]) -> list[list[httpx.Response]]:
    """Every request of every key at once."""

    async def run() -> list[list[httpx.Response]]:
        return list(await asyncio.gather(*(_burst(base, key, bodies) for key, bodies in work)))

    return asyncio.run(run())


def charged(responses: list[httpx.Response]) -> float:
    """What the upstream reported for the answered requests, priced."""
    return sum(cost(LARGE, r.json()["usage"]) for r in responses if r.status_code == 200)


@pytest.mark.parametrize("warm", [False, True])
def test_64_concurrent_long_answers_overshoot_each_key_cap_by_at_most_one_request(router, warm):
    caps = ["team-a=1000/day", "team-b=1000/day"]
    with stack(router, caps) as (base, l_up, app):
        l_up.reply = lambda p: "five" if p.startswith("warm") else LONG
        l_up.delay = 0.3  # all 64 are in flight together
        if warm:  # cheap answers first: a reservation learnt from them would let every long one in
            for key in ("ka", "kb"):
                assert burst(base, (key, [chat("warm up")]))[0][0].status_code == 200
        bodies = {key: [chat(f"{key} question {i}") for i in range(64)] for key in ("ka", "kb")}
        got_a, got_b = burst(base, ("ka", bodies["ka"]), ("kb", bodies["kb"]))
        for key, cap, got in (("ka", caps[0], got_a), ("kb", caps[1], got_b)):
            one = max(bound(LARGE, b) for b in bodies[key])  # the dearest request's own bound
            answered = [r for r in got if r.status_code == 200]
            refused = [r for r in got if r.status_code == 429]
            assert answered and len(answered) + len(refused) == 64
            assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
            total = spent(app, cap)
            assert total == pytest.approx(charged(answered) + (cost(LARGE, {"prompt_tokens": 2, "completion_tokens": 1})
                                                               if warm else 0))  # fmt: skip
            assert total <= CAP + one  # the overshoot: at most one request's bound


def test_huge_max_tokens_from_one_key_does_not_block_another(router):
    caps = ["team-a=1000/day", "team-b=1000/day"]
    with stack(router, caps, max_output={LARGE: 3000}) as (base, l_up, app):
        l_up.reply = lambda p: LONG if p.startswith("huge") else "five"
        l_up.delay = 0.3
        # team-a: one dear answer, then requests asking for 1e12 tokens (an int and a float), in flight
        assert burst(base, ("ka", [chat("huge one")]))[0][0].status_code == 200
        huge = [chat("huge again", max_tokens=10**12), chat("huge float", max_tokens=1e12)]
        small = [chat(f"small {i}", max_tokens=10) for i in range(20)]
        got_a, got_b = burst(base, ("ka", huge), ("kb", small))
        # team-b's reservations are its own: every one of its small requests fits its own cap
        assert [r.status_code for r in got_b] == [200] * 20
        # team-a's 1e12 is clamped to the model's 3,000: its reservation is ~300, not 1e11
        assert [r.status_code for r in got_a] == [200, 200] and bound(LARGE, huge[0], 3000) < 320
        assert spent(app, caps[1]) == pytest.approx(charged(got_b))


# --- two replicas on one Redis ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_replicas_on_redis_hold_each_key_within_one_request(router_dir, tmp_path):
    import redis

    rproc, rport = start_redis(tmp_path)
    try:
        with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
            l_up.reply = lambda p: LONG
            l_up.delay = 0.3
            models = tmp_path / "models.toml"
            models.write_text(
                f'[models."{SMALL}"]\nspec = "s@{s_up.url}"\nprice_in = 10000\nprice_out = 10000\n'
                f'[models."{LARGE}"]\nspec = "l@{l_up.url}"\nprice_in = 100000\nprice_out = 100000\n'
                "max_output_tokens = 2500\n"
            )
            ports = [free_port(), free_port()]
            base = [
                "--router", str(router_dir), "--models-file", str(models), "--serve-api-key-env", "HLLM_KEYS",
                "--budget-cap", "team-a=1000/day", "--budget-cap", "team-b=1000/day", "--on-cap", "refuse",
                "--state", f"redis://127.0.0.1:{rport}/0", "--settle-timeout", "5",
            ]  # fmt: skip
            env = {"HLLM_KEYS": "team-a:ka,team-b:kb"}
            with (
                running_serve([*base, "--port", str(ports[0])], ports[0], env=env),
                running_serve([*base, "--port", str(ports[1])], ports[1], env=env),
            ):
                urls = [f"http://127.0.0.1:{p}" for p in ports]
                bodies = [chat(f"question {i}") for i in range(32)]

                async def run() -> list[list[httpx.Response]]:
                    work = [_burst(u, k, bodies) for u in urls for k in ("ka", "kb")]
                    return list(await asyncio.gather(*work))

                got = asyncio.run(run())
            r = redis.Redis(port=rport)
            by_key = {}
            for k in r.scan_iter("hybridllm:spend:*"):
                by_key[k.decode()] = float(r.get(k))
            held = [float(r.get(k) or 0) for k in r.scan_iter("hybridllm:reserved:*")]
        one = max(bound(LARGE, b, 2500) for b in bodies)
        for key, cap in (("ka", "team-a=1000/day"), ("kb", "team-b=1000/day")):
            answers = [x for i, batch in enumerate(got) if i % 2 == (key == "kb") for x in batch]
            total = by_key[f"hybridllm:spend:{parse_cap(cap).bucket(time.time())}"]
            assert any(x.status_code == 429 for x in answers)  # the ceiling bit
            assert total == pytest.approx(charged(answers))  # every answer counted, across replicas
            assert CAP - 200.2 < total <= CAP + one  # the ceiling used, overshoot at most one request's bound
        assert sum(held) < 1e-9  # no reservation is left open
    finally:
        rproc.terminate()
        rproc.wait(timeout=10)


def test_models_file_max_output_tokens_is_checked(tmp_path):
    from hybridllm.tables.registry import Registry, RegistryError

    p = tmp_path / "models.toml"
    p.write_text('[models.m]\nspec = "m@http://127.0.0.1:1/v1"\nprice_in = 1\nprice_out = 2\nmax_output_tokens = 0\n')
    with pytest.raises(RegistryError, match=re.escape("models.m.max_output_tokens")):
        Registry.load(p)
    p.write_text('[models.m]\nspec = "m@http://127.0.0.1:1/v1"\nprice_in = 1\nprice_out = 2\nmax_output_tokens = 64\n')
    assert Registry.load(p).models["m"].max_output_tokens == 64


class GoneClientServer:
    """The app as an ASGI 2.4 server runs it (hypercorn, granian): ``send`` raises ``OSError`` once
    the client is gone (``gone`` set), and Starlette then stops a streamed response before its
    body's first step, where uvicorn (2.3) would still start it. The client hangs up while the
    upstream call is in flight."""

    def __init__(self, app: Any) -> None:
        self.app, self.gone = app, threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)

        async def sending(message: Any) -> None:
            if self.gone.is_set():
                raise OSError("client gone")
            await send(message)

        await self.app({**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.4"}}, receive, sending)


def test_a_stream_whose_client_left_before_the_relay_started_is_charged(router, caplog):
    """The response never iterates its body; the upstream's answer is still read to its usage,
    charged and its reservation settled."""
    caplog.set_level("INFO", logger="hybridllm.access")
    cap = "team-a=1000/day"
    server: list[GoneClientServer] = []
    with stack(router, [cap], wrap=lambda app: server.append(GoneClientServer(app)) or server[0]) as (base, l_up, app):
        l_up.reply = lambda p: " ".join(["word"] * 600)
        l_up.delay = 0.3  # the stream's headers come after the client has gone
        each = cost(LARGE, {"prompt_tokens": 1, "completion_tokens": 600})
        for n in range(1, 4):
            server[0].gone.clear()
            with httpx.Client(timeout=10) as client:
                calling = threading.Thread(target=_post_and_lose, args=(client, base))
                calling.start()
                wait_for(lambda n=n: len(l_up.requests) == n, "the upstream was asked")
                server[0].gone.set()
                calling.join()
            wait_for(settled(base, app, cap, n * each), f"{n} streams left before the relay counted")
        assert spent(app, cap) == pytest.approx(3 * each)
        assert app.state.store.reserved.get(parse_cap(cap).bucket(time.time()), 0.0) == pytest.approx(0)
    left = [x for x in access(caplog) if x.get("outcome") == "client_left"]
    assert len(left) == 3 and all(x["cost"] == pytest.approx(each) for x in left)


def _post_and_lose(client: httpx.Client, base: str) -> None:
    """A streamed request whose connection the server drops (what a client that left sees)."""
    with contextlib.suppress(httpx.HTTPError):
        client.post(f"{base}/v1/chat/completions", json=chat("q", stream=True), headers={"authorization": "Bearer ka"})


@pytest.mark.slow
@contextmanager
def far_redis(port: int, delay_s: float) -> Iterator[int]:
    """A real TCP relay to the Redis on ``port`` whose replies each arrive ``delay_s`` later (a Redis on
    another host); yields its own port."""
    loop = asyncio.new_event_loop()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await asyncio.sleep(delay)
                dst.write(data)
                await dst.drain()
        dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r_reader, r_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(reader, r_writer, 0.0), pipe(r_reader, writer, delay_s))

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def test_256_concurrent_streams_whose_client_hangs_up_at_their_last_event_are_settled_on_redis(
    router, tmp_path, caplog
):
    """256 streams at once, each client closing its connection as soon as it has read ``[DONE]``:
    the relay's end (the record, the settlement of its reservation in Redis) must not be cut short
    by that hang-up, or the answer goes uncounted and its reservation stays held in Redis (68 of 256
    were, 28,678 held); and more calls at once than Redis connections must wait for one, not read as
    Redis down (every replica then on its own counters)."""
    import redis

    caplog.set_level("WARNING", logger="hybridllm.serve")

    rproc, rport = start_redis(tmp_path)
    cap = "team-a=10000000/day"
    try:
        # Redis on another host: each reply comes 5 ms later (the window a hang-up falls into)
        with (
            far_redis(rport, 0.005) as far,
            stack(router, [cap], state=f"redis://127.0.0.1:{far}/0") as (base, l_up, _),
        ):
            l_up.reply = lambda p: "a short answer"
            each = cost(LARGE, {"prompt_tokens": 1, "completion_tokens": 3})
            n = 256

            async def one(client: httpx.AsyncClient, i: int) -> None:
                async with client.stream("POST", f"{base}/v1/chat/completions", json=chat(f"q{i}", stream=True),
                                         headers={"authorization": "Bearer ka"}) as r:  # fmt: skip
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.strip() == "data: [DONE]":
                            break  # hang up at once

            async def run() -> None:
                async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                    await asyncio.gather(*(one(client, i) for i in range(n)))

            asyncio.run(run())
            r = redis.Redis(port=rport)
            bucket = parse_cap(cap).bucket(time.time())
            wait_for(lambda: float(r.get(f"hybridllm:spend:{bucket}") or 0) >= n * each - 1e-9, "every answer settled")
            assert float(r.get(f"hybridllm:spend:{bucket}")) == pytest.approx(n * each)
            held = [float(r.get(k) or 0) for k in r.scan_iter(f"hybridllm:reserved:{bucket}:*")]
            assert sum(held) < 1e-9
        assert not [x.getMessage() for x in caplog.records if "unreachable" in x.getMessage()]
    finally:
        rproc.terminate()
        rproc.wait(timeout=10)


def test_max_tokens_and_max_completion_tokens_disagreeing_reserve_the_larger(router):
    """``max_tokens=1`` with ``max_completion_tokens=2000``: an upstream that obeys the second (vLLM
    does) answers 2,000 tokens; a reservation of the first let all 64 concurrent requests in (12,800
    spent on a 1,000 cap)."""
    with stack(router, ["team-a=1000/day"]) as (base, l_up, app):

        def obeying_max_completion_tokens(prompt: str) -> str:
            body = l_up.requests[-1]  # every request of the burst asks the same
            return " ".join(["word"] * (body.get("max_completion_tokens") or body.get("max_tokens") or 2000))

        l_up.reply = obeying_max_completion_tokens
        l_up.delay = 0.3  # all 64 are in flight together
        bodies = [chat(f"question {i}", max_tokens=1, max_completion_tokens=2000) for i in range(64)]
        (got,) = burst(base, ("ka", bodies))
        answered = [r for r in got if r.status_code == 200]
        assert answered and all(r.json()["usage"]["completion_tokens"] == 2000 for r in answered)
        one = cost(LARGE, {"prompt_tokens": 200, "completion_tokens": 2000})  # the dearest request, generously
        assert spent(app, "team-a=1000/day") <= CAP + one


@pytest.mark.parametrize("n", ["8", 8.0, True, 0])
def test_answer_counts_that_are_not_counts_are_refused(router, n):
    """``n: "8"`` is 8 answers to a lax upstream but none to count: refused, naming the field."""
    with stack(router, ["team-a=1000/day"]) as (base, l_up, _):
        r = httpx.post(f"{base}/v1/chat/completions", json=chat("q", n=n), headers={"authorization": "Bearer ka"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        assert "'n' must be a positive integer" in r.json()["error"]["message"]
        assert l_up.requests == []


def test_a_redis_blip_mid_request_leaves_no_reservation_held(tmp_path):
    """A request admitted in Redis whose settlement falls in a Redis outage (the server paused, as a
    network blip looks): when Redis is back the kept cost is written and its reservation released,
    or it stays held (its lease renewed while the process serves that counter) and the key is
    refused having spent 1 of its 10."""
    import os
    import signal

    import redis

    from hybridllm.serve.state import RedisStore

    rproc, rport = start_redis(tmp_path)

    async def run() -> tuple[bool, float]:
        store = RedisStore(f"redis://127.0.0.1:{rport}/0", lease_s=30)
        try:
            assert await store.admit("k", 9.0, 10.0, 60)
            os.kill(rproc.pid, signal.SIGSTOP)
            try:
                await store.settle("k", 9.0, 1.0, 60)  # Redis does not answer: settled on this process
            finally:
                os.kill(rproc.pid, signal.SIGCONT)
            await asyncio.sleep(store.RETRY_S + 0.1)
            again = await store.admit("k", 5.0, 10.0, 60)  # Redis answers again: the kept cost written first
            held = float(redis.Redis(port=rport).get(store._reserved("k")) or 0)
            return again, held
        finally:
            await store.close()

    try:
        again, held = asyncio.run(run())
        assert float(redis.Redis(port=rport).get("hybridllm:spend:k")) == pytest.approx(1.0)
        assert again and held == pytest.approx(5.0)  # only the new request's reservation
    finally:
        rproc.terminate()
        rproc.wait(timeout=10)
