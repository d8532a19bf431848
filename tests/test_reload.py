"""A router swapped in while the server runs (hybridllm.serve.reload): from a router slot (a symbolic
link), on POST /admin/reload (the admin key only), a watch of the slot, or SIGHUP; a broken or
different-fleet artifact refused while the old one keeps serving; a hold re-anchored on the new
calibration; and, under load, every answer decided whole by one router or the other."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybridllm import Router
from hybridllm.serve import ServeOptions, create_app
from hybridllm.serve.reload import RouterSlot, router_version

from .conftest import LARGE, SMALL
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.proxy import InProcess, Proxy, upstream

CLIENT, ADMIN = "sk-client", "sk-admin"
AUTH = {"Authorization": f"Bearer {CLIENT}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
PROMPTS = [f"Question {i}: what is {i} times {i + 3}, and why?" for i in range(40)]


def shifted_copy(src: Path, dst: Path, shift: float) -> Path:
    """The router at ``src`` with every calibrated threshold moved by ``shift``: the same scores,
    other thresholds (so which router decided shows in the threshold header)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for row in cfg["calibration"]:
        row["threshold"] = min(1.0, max(0.0, float(row["threshold"]) + shift))
    for point in (cfg.get("operating_points") or {}).values():
        if isinstance(point, dict) and "threshold" in point:
            point["threshold"] = min(1.0, max(0.0, float(point["threshold"]) + shift))
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def repoint(slot: Path, target: Path) -> None:
    tmp = slot.with_name(slot.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, slot)


@pytest.fixture
def slots(tmp_path: Path, router_dir: Path) -> dict[str, Path]:
    a = shutil.copytree(router_dir, tmp_path / "a")
    b = shifted_copy(router_dir, tmp_path / "b", 0.15)
    slot = tmp_path / "current"
    os.symlink(a, slot)
    return {"a": a, "b": b, "slot": slot}


def app_for(slot: Path, s_up: FakeOpenAI, l_up: FakeOpenAI, **opts: Any) -> Any:
    ups = [upstream(SMALL, s_up.url, "s"), upstream(LARGE, l_up.url, "l")]
    options = ServeOptions(api_keys=[CLIENT], admin_keys=[ADMIN], **opts)
    return create_app(RouterSlot(Router(slot), slot, Router), *ups, options=options)


def ask(proxy: InProcess, text: str = "What is 2 + 2?", model: str = "hybrid") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return proxy.http.post("/v1/chat/completions", json=body, headers=AUTH)


def metric(proxy: InProcess, name: str) -> list[str]:
    page = proxy.http.get("/metrics", headers=AUTH).text
    return [line for line in page.splitlines() if line.startswith(name)]


def test_admin_reload_swaps_the_router_and_only_the_admin_may(slots):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, InProcess(app_for(slots["slot"], s_up, l_up)) as proxy:
        t_before = float(ask(proxy).headers["x-hybridllm-threshold"])
        assert proxy.http.post("/admin/reload", headers=AUTH).status_code == 403  # a client key
        assert proxy.http.post("/admin/reload").status_code == 401
        assert proxy.http.post("/admin/reload", headers=ADMIN_AUTH).json()["status"] == "unchanged"
        repoint(slots["slot"], slots["b"])
        got = proxy.http.post("/admin/reload", headers=ADMIN_AUTH)
        assert got.status_code == 200 and got.json()["status"] == "ok", got.text
        assert got.json()["version"] == router_version(slots["b"]) != got.json()["previous"]
        t_after = float(ask(proxy).headers["x-hybridllm-threshold"])
        assert t_after == pytest.approx(min(1.0, t_before + 0.15))  # the new calibration's point
        assert metric(proxy, "hybridllm_router_info") == [
            f'hybridllm_router_info{{version="{got.json()["version"]}"}} 1.0'
        ]
        assert 'hybridllm_router_reloads_total{status="ok"} 1.0' in metric(proxy, "hybridllm_router_reloads_total")
        # the dashboard shows the threshold plain hybrid routes at now: the new router's
        assert proxy.http.get("/dashboard/data", headers=ADMIN_AUTH).json()["router"]["threshold"] == pytest.approx(
            t_after
        )


def test_a_broken_or_foreign_artifact_is_refused_and_the_old_router_keeps_serving(slots, tmp_path):
    broken = shutil.copytree(slots["a"], tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    foreign = shutil.copytree(slots["a"], tmp_path / "foreign")
    cfg = json.loads((foreign / "config.json").read_text())
    cfg["small"] = cfg["fleet"]["models"][0] = cfg["candidates"][0] = "another-small-model"
    (foreign / "config.json").write_text(json.dumps(cfg))
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, InProcess(app_for(slots["slot"], s_up, l_up)) as proxy:
        version = router_version(slots["a"])
        for bad, why in ((broken, ""), (foreign, "restart to change the fleet"), (tmp_path / "missing", "")):
            repoint(slots["slot"], bad)
            got = proxy.http.post("/admin/reload", headers=ADMIN_AUTH)
            assert got.status_code == 409 and got.json()["status"] == "refused", got.text
            assert why in got.json()["error"] and "\n" not in got.json()["error"]
            assert got.json()["version"] == version
            assert ask(proxy).status_code == 200  # still serving, on the old router
        assert 'hybridllm_router_reloads_total{status="refused"} 3.0' in metric(proxy, "hybridllm_router_reloads_total")


def test_a_hold_re_anchors_on_the_new_calibration(slots):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        app = app_for(slots["slot"], s_up, l_up, hold="cost_advantage=50")
        with InProcess(app) as proxy:
            hold = app.state.hold
            for text in PROMPTS[:5]:
                assert ask(proxy, text).status_code == 200
            start = hold.threshold
            repoint(slots["slot"], slots["b"])
            assert proxy.http.post("/admin/reload", headers=ADMIN_AUTH).json()["status"] == "ok"
            assert hold.threshold == pytest.approx(min(1.0, start + 0.15))
            assert "a new router" in hold.reason and len(hold.scores) == 0


def test_the_watch_picks_up_a_promoted_router(slots):
    with (
        FakeOpenAI() as s_up,
        FakeOpenAI() as l_up,
        InProcess(app_for(slots["slot"], s_up, l_up, router_watch_s=0.05)) as proxy,
    ):
        repoint(slots["slot"], slots["b"])
        deadline = time.time() + 10
        want = f'hybridllm_router_info{{version="{router_version(slots["b"])}"}} 1.0'
        while metric(proxy, "hybridllm_router_info") != [want]:
            assert time.time() < deadline, metric(proxy, "hybridllm_router_info")
            time.sleep(0.05)


def test_under_load_every_answer_is_decided_whole_by_one_router(slots, router):
    """Reloads flip the slot between two routers while 480 requests are under way: none fails,
    and each answer's threshold is one router's point with the decision that threshold gives."""
    t_a = router.threshold()[0]
    t_b = min(1.0, t_a + 0.15)
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up, Proxy(app_for(slots["slot"], s_up, l_up)) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"

        async def load() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                sem = asyncio.Semaphore(16)

                async def one(i: int) -> httpx.Response:
                    async with sem:
                        body = {"model": "hybrid", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
                        return await client.post("/v1/chat/completions", json=body, headers=AUTH)

                async def flip() -> list[str]:
                    out = []
                    for k in range(8):
                        await asyncio.sleep(0.05)
                        repoint(slots["slot"], slots["b" if k % 2 == 0 else "a"])
                        r = await client.post("/admin/reload", headers=ADMIN_AUTH)
                        out.append(r.json()["status"])
                    return out

                got = await asyncio.gather(*(one(i) for i in range(480)), flip())
                statuses = got[-1]
                assert statuses.count("ok") == 8, statuses
                return list(got[:-1])

        answers = asyncio.run(load())
    assert [r.status_code for r in answers] == [200] * len(answers)
    seen = set()
    for r in answers:
        thr, score = float(r.headers["x-hybridllm-threshold"]), float(r.headers["x-hybridllm-score"])
        which = "a" if thr == pytest.approx(t_a) else "b" if thr == pytest.approx(t_b) else None
        assert which is not None, (thr, t_a, t_b)
        seen.add(which)
        assert r.headers["x-hybridllm-model"] == (SMALL if score >= thr else LARGE)
    assert seen == {"a", "b"}


@pytest.mark.slow
def test_sighup_reloads_a_served_router_slot(slots, tmp_path, cache_env):
    """`hybridllm serve --router SLOT` in its own process: repoint the slot, send SIGHUP, and the
    next /metrics names the new router."""
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        port = free_port()
        env = {**os.environ, "HYBRIDLLM_TEST_CLIENT": CLIENT}
        cmd = [sys.executable, "-m", "hybridllm.cli", "serve", "--router", str(slots["slot"]), "--port", str(port),
               "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}", "--public-metrics"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.time() < deadline, "serve did not start"
                time.sleep(0.2)
            repoint(slots["slot"], slots["b"])
            proc.send_signal(signal.SIGHUP)
            want = f'hybridllm_router_info{{version="{router_version(slots["b"])}"}} 1.0'
            deadline = time.time() + 30
            while want not in httpx.get(f"{base}/metrics").text:
                assert proc.poll() is None and time.time() < deadline, "not reloaded"
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
