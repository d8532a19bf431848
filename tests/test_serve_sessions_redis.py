"""Session pins in Redis (``--state redis://``): the store's rules on a real redis-server (raise-only
under races, per-key share, capacity, expiry), and two ``hybridllm serve`` processes routing one
session's turns alike. Slow: a redis-server and subprocesses."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from hybridllm.serve.control.session_store import RedisSessionStore

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve
from .helpers.redis import start_redis

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_port(tmp_path):
    proc, port = start_redis(tmp_path)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _store(port: int, **kw) -> RedisSessionStore:
    import redis.asyncio

    return RedisSessionStore(redis.asyncio.Redis(port=port), **kw)


def test_the_redis_store_raises_only_bounds_each_key_and_expires(redis_port):
    async def run() -> None:
        s = _store(redis_port, capacity=6, ttl_s=3.0, per_key=3)
        now = time.time()
        pin, before = await s.raise_pin("team-a", "s:1", "small", 0, now)
        assert (pin.model, pin.rank, before) == ("small", 0, None)
        # 40 racing writers on one session, ranks 0..2 in any order: it ends on the highest, never lower
        await asyncio.gather(*(s.raise_pin("team-a", "s:1", ["small", "mid", "large"][i % 3], i % 3, now)
                               for i in range(40)))  # fmt: skip
        got = await s.get("team-a", "s:1", now + 0.1)
        assert got is not None and (got.model, got.rank) == ("large", 2) and got.turns == 2
        kept, was = await s.raise_pin("team-a", "s:1", "small", 0, now + 0.2)  # never down by a raise
        assert kept.model == "large" and was is not None and was.model == "large"
        assert (await s.set_pin("team-a", "s:1", "mid", 1, now + 0.3)).model == "large"  # a set moves it
        assert (await s.get("team-a", "s:1", now + 0.3)).model == "mid"
        assert await s.get("team-b", "s:1", now) is None  # another key's namespace: nothing there
        # team-b floods: its own least recently used pins go, team-a's stays
        for i in range(10):
            await s.raise_pin("team-b", f"s:f{i}", "small", 0, now + 0.4 + i / 100)
        assert (await s.get("team-a", "s:1", now + 0.5)).model == "mid"
        assert await s.get("team-b", "s:f6", now + 0.5) is None and await s.get("team-b", "s:f9", now + 0.5)
        assert s.evictions()["lru"] == 7
        # the whole store full (capacity 6): the namespace holding the most pays
        await s.raise_pin("team-a", "s:2", "small", 0, now + 0.6)
        await s.raise_pin("team-c", "s:x", "small", 0, now + 0.6)  # a: 2, b: 3, c: 1 -> 6 pins
        await s.raise_pin("team-c", "s:y", "small", 0, now + 0.7)  # b pays
        assert [await s.get("team-a", k, now + 0.8) is not None for k in ("s:1", "s:2")] == [True, True]
        assert await s.get("team-c", "s:x", now + 0.8) is not None
        await asyncio.sleep(4.5)  # Redis expires a pin ttl_s after its last use
        assert await s.get("team-a", "s:1", time.time()) is None
        await s.client.aclose()

    asyncio.run(run())


def test_a_redis_store_that_cannot_reach_redis_keeps_pins_here(tmp_path):
    async def run() -> None:
        s = _store(free_port(), capacity=10, ttl_s=60.0)  # nothing listens there
        pin, _ = await s.raise_pin("k", "s:1", "large", 1, 100.0)
        assert pin.model == "large" and (await s.get("k", "s:1", 101.0)).model == "large"
        assert s.down_since is not None
        await s.client.aclose()

    asyncio.run(run())


def test_two_serve_processes_share_session_pins_on_redis(router_dir, tmp_path, redis_port):
    import redis

    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        models = tmp_path / "models.toml"
        models.write_text(
            f'[models."{SMALL}"]\nspec = "s@{s_up.url}"\nprice_in = 1\nprice_out = 2\n'
            f'[models."{LARGE}"]\nspec = "l@{l_up.url}"\nprice_in = 10\nprice_out = 20\nprice_cached_in = 1\n'
        )
        ports = [free_port(), free_port()]
        base = ["--router", str(router_dir), "--models-file", str(models), "--serve-api-key-env", "HLLM_KEYS",
                "--state", f"redis://127.0.0.1:{redis_port}/0"]  # fmt: skip
        env = {"HLLM_KEYS": "team-a:ka,team-b:kb", "HYBRIDLLM_SESSION_SECRET": "a shared secret of replicas"}
        with (
            running_serve([*base, "--port", str(ports[0])], ports[0], env=env),
            running_serve([*base, "--port", str(ports[1])], ports[1], env=env),
        ):
            urls = [f"http://127.0.0.1:{p}/v1/chat/completions" for p in ports]

            def post(i: int, model: str, messages: list[dict], key: str = "ka", **headers: str) -> httpx.Response:
                r = httpx.post(urls[i], json={"model": model, "messages": messages},
                               headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)  # fmt: skip
                assert r.status_code == 200, r.text
                return r

            first = [{"role": "user", "content": "hi"}]
            later = [*first, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "go on"}]
            sid = {"x-session-id": "conv-r"}
            one = post(0, "hybrid-t-1.000001", first, **sid)  # pinned to the large model on replica 0
            two = post(1, "hybrid-t-0", later, **sid)  # replica 1 knows the pin
            other = post(1, "hybrid-t-0", later, key="kb", **sid)  # another key: its own session
            # a derived session (no id sent): the shared secret derives the same id on both replicas
            system = [{"role": "system", "content": "be brief"}]
            d1 = post(1, "hybrid-t-1.000001", [*system, *first])
            d2 = post(0, "hybrid-t-0", [*system, *later])
            pins = list(redis.Redis(port=redis_port).scan_iter("hybridllm:sess:*"))
    models_of = [r.headers["x-hybridllm-model"] for r in (one, two, other, d1, d2)]
    assert models_of == [LARGE, LARGE, SMALL, LARGE, LARGE]
    assert two.headers["x-hybridllm-reason"].endswith(f"session kept on {LARGE}")
    assert len(pins) == 3  # team-a's named and derived sessions, team-b's
