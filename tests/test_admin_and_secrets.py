"""Attacks on a running `hybridllm serve` (a real process on 127.0.0.1, real upstreams, a real
redis-server): a tenant turning everyone's knob with its client key, a browser page driving a keyless
server (a foreign Host after DNS rebinding, a cross-site text/plain POST), a Redis password read off
the process list, an upstream's key echoed back in its error body."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse

from hybridllm import default_router_dir
from hybridllm.backends import BackendError, HTTPBackend, SamplingParams
from hybridllm.serve import ServeConfig
from hybridllm.serve.errors import ServeConfigError

from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # `hybridllm serve` subprocesses, a browser, Redis

SMALL, LARGE = "qwen2.5-0.5b", "qwen2.5-1.5b"  # the shipped default router's pair
QUESTION = "Prove that there are infinitely many primes."
CLIENT, ADMIN = "sk-tenant-a-0001", "sk-admin-9f3e7c"


def _args(s_up: FakeOpenAI, l_up: FakeOpenAI, port: int) -> list[str]:
    return ["--router", str(default_router_dir()), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}",
            "--port", str(port)]  # fmt: skip


def _chat(base: str, model: str = "hybrid", key: str | None = None, **headers: str) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30)


def _knob(base: str, key: str | None = None) -> str:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{base}/dashboard/data", headers=headers, timeout=10).json()["router"]["knob"]


def _error(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


def _no_cors(*responses: httpx.Response) -> None:
    for r in responses:
        assert not any(h.lower().startswith("access-control-") for h in r.headers), (r.request.url, r.headers)


# --- the admin key --------------------------------------------------------------------------------


def test_a_client_key_cannot_turn_every_tenants_knob_and_the_admin_key_can():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"HLLM_KEYS": f"team-a:{CLIENT}", "HLLM_ADMIN": ADMIN}
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        args = [*_args(s_up, l_up, port), "--serve-api-key-env", "HLLM_KEYS", "--admin-key-env", "HLLM_ADMIN"]
        with running_serve(args, port, env=env):
            before = _knob(base, CLIENT)
            routed = _chat(base, key=CLIENT).headers
            # the tenant's own key, as JSON and as a cross-site text/plain body
            tenant = httpx.post(f"{base}/dashboard/knob", json={"model": "hybrid-t-0"},
                                headers={"authorization": f"Bearer {CLIENT}"})  # fmt: skip
            plain = httpx.post(f"{base}/dashboard/knob", content='{"model": "hybrid-t-0"}',
                               headers={"authorization": f"Bearer {CLIENT}", "content-type": "text/plain",
                                        "origin": "http://evil.example"})  # fmt: skip
            for r in (tenant, plain):
                assert r.status_code == 403 and "--admin-key-env" in _error(r), r.text
            anonymous = httpx.post(f"{base}/dashboard/knob", json={"model": "hybrid-t-0"})
            assert anonymous.status_code == 401 and "admin key" in _error(anonymous)
            assert _knob(base, CLIENT) == before
            again = _chat(base, key=CLIENT).headers  # still routed as before
            assert [again[h] for h in ("x-hybridllm-model", "x-hybridllm-threshold")] == [
                routed[h] for h in ("x-hybridllm-model", "x-hybridllm-threshold")
            ]
            # the admin key reads the dashboard and moves the knob
            assert _knob(base, ADMIN) == before
            as_admin = {"authorization": f"Bearer {ADMIN}", "origin": "http://evil.example"}
            admin = httpx.post(f"{base}/dashboard/knob", json={"model": "hybrid-t-0"}, headers=as_admin)
            assert admin.status_code == 200 and admin.json()["knob"] == "hybrid-t-0"
            moved = _chat(base, key=CLIENT).headers
            assert moved["x-hybridllm-model"] == SMALL and moved["x-hybridllm-threshold"] == "0.000000"
            # the admin key is not a client key: it spends nothing
            assert _chat(base, key=ADMIN).status_code == 401
            preflight = httpx.options(f"{base}/dashboard/knob", headers={
                "origin": "http://evil.example", "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type"})  # fmt: skip
            assert preflight.status_code >= 400
            _no_cors(tenant, plain, anonymous, admin, preflight)


def _serve_fails(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "hybridllm.cli", "serve", *args], capture_output=True, text=True,
                          env={**os.environ, "HYBRIDLLM_NO_PROGRESS": "1", **env}, timeout=120)  # fmt: skip
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stderr


def test_a_server_whose_admin_key_is_also_a_client_key_does_not_start():
    port = free_port()
    args = ["--router", str(default_router_dir()), "--small", "s@http://127.0.0.1:9/v1", "--large",
            "l@http://127.0.0.1:9/v1", "--port", str(port), "--serve-api-key-env", "HLLM_KEYS",
            "--admin-key-env", "HLLM_ADMIN"]  # fmt: skip
    err = _serve_fails(args, {"HLLM_KEYS": f"team-a:{CLIENT},team-b:sk-b", "HLLM_ADMIN": CLIENT})
    assert "admin_key_env" in err and "also a client key" in err and CLIENT not in err
    err = _serve_fails(args, {"HLLM_KEYS": CLIENT, "HLLM_ADMIN": " "})
    assert "admin_key_env" in err and "HLLM_ADMIN" in err
    with pytest.raises(httpx.ConnectError):  # it never bound its port
        httpx.get(f"http://127.0.0.1:{port}/health")


# --- a keyless server and a browser page ----------------------------------------------------------


def test_a_browser_page_cannot_drive_or_read_a_keyless_server():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    knob = f"{base}/dashboard/knob"
    body = '{"model": "hybrid-t-0"}'  # what a page sends as text/plain: no CORS preflight
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:  # noqa: SIM117
        with running_serve([*_args(s_up, l_up, port), "--allowed-host", "proxy.internal"], port):
            before = _knob(base)
            # DNS rebinding: evil.example resolves to 127.0.0.1, the page is same-origin with it
            rebound = {"host": f"evil.example:{port}", "content-type": "text/plain"}
            r_knob = httpx.post(knob, content=body, headers={**rebound, "origin": f"http://evil.example:{port}"})
            r_data = httpx.get(f"{base}/dashboard/data", headers={"host": f"evil.example:{port}"})
            r_metrics = httpx.get(f"{base}/metrics", headers={"host": f"evil.example:{port}"})
            r_chat = _chat(base, host=f"evil.example:{port}")
            for r in (r_knob, r_data, r_metrics, r_chat):
                assert r.status_code == 403 and "--allowed-host" in _error(r), r.text
            # a cross-site POST: the page is on evil.example, the request goes to 127.0.0.1
            cross = [
                httpx.post(knob, content=body, headers={"content-type": "text/plain", "origin": origin})
                for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}", "file://")
            ]
            for r in cross:
                assert r.status_code == 403 and "cross-origin" in _error(r), r.text
            spend = _chat(base, origin="http://evil.example")
            assert spend.status_code == 403  # nor can it spend the upstreams
            assert _knob(base) == before and len(s_up.requests) + len(l_up.requests) == 0
            # what the server's own page and a plain client send still works
            plain = httpx.post(knob, json={"model": "hybrid-t-1"})  # curl: loopback Host, no Origin
            assert plain.status_code == 200 and _knob(base) == "hybrid-t-1"
            own = httpx.post(knob, content=body, headers={"content-type": "text/plain", "origin": base})
            assert own.status_code == 200 and _knob(base) == "hybrid-t-0"
            named = httpx.post(knob, json={"model": "hybrid"},
                               headers={"host": f"localhost:{port}", "origin": f"http://localhost:{port}"})  # fmt: skip
            assert named.status_code == 200
            extra = httpx.get(f"{base}/dashboard/data", headers={"host": f"proxy.internal:{port}"})
            assert extra.status_code == 200 and extra.json()["router"]["knob"] == before
            assert _chat(base).status_code == 200
            _no_cors(r_knob, r_data, r_chat, *cross, spend, plain, own, named, extra)


def test_allowed_host_takes_names_not_urls():
    with pytest.raises(ServeConfigError, match="allowed_host"):
        ServeConfig.load(None, allowed_host=["http://proxy.internal:8000"])
    assert ServeConfig.load(None, allowed_host=["proxy.internal", "10.0.0.7", "[::1]", "*"]).options().allowed_hosts


# --- the state URL out of the process list --------------------------------------------------------


def _redis(tmp_path: Path, password: str) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
         "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)


def test_the_redis_password_stays_out_of_the_process_list(tmp_path):
    import redis

    password = "hunter2-redis-7c1d"
    rproc, rport = _redis(tmp_path, password)
    port = free_port()
    try:
        with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
            models = tmp_path / "models.toml"
            models.write_text(
                f'[models."{SMALL}"]\nspec = "s@{s_up.url}"\nprice_in = 0.1\nprice_out = 0.2\n'
                f'[models."{LARGE}"]\nspec = "l@{l_up.url}"\nprice_in = 1.0\nprice_out = 2.0\n'
            )
            args = ["--router", str(default_router_dir()), "--models-file", str(models), "--port", str(port),
                    "--serve-api-key-env", "HLLM_KEYS", "--budget-cap", "team-a=100/day",
                    "--state-env", "HLLM_STATE"]  # fmt: skip
            env = {"HLLM_KEYS": f"team-a:{CLIENT}", "HLLM_STATE": f"redis://:{password}@127.0.0.1:{rport}/0"}
            with running_serve(args, port, env=env) as proc:
                ok = _chat(f"http://127.0.0.1:{port}", key=CLIENT)
                assert ok.status_code == 200
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(proc.pid)], capture_output=True, text=True)
                assert "--state-env HLLM_STATE" in cmdline and "hybridllm.cli serve" in ps.stdout
                assert password not in cmdline and password not in ps.stdout
            # the server used the password it read from the environment: its spend is in that Redis
            r = redis.Redis(port=rport, password=password)
            spent = [float(r.get(k)) for k in r.scan_iter("hybridllm:spend:*")]
            assert spent and sum(spent) > 0
        assert password not in proc.stdout.read().decode()  # nor in what it printed
    finally:
        rproc.terminate()
        rproc.wait(timeout=10)


def test_state_env_refusals_name_the_setting(monkeypatch):
    monkeypatch.delenv("HLLM_NO_SUCH_VAR", raising=False)
    with pytest.raises(ServeConfigError, match=r"state_env: environment variable HLLM_NO_SUCH_VAR"):
        ServeConfig.load(None, state_env="HLLM_NO_SUCH_VAR").options()
    monkeypatch.setenv("HLLM_STATE_X", "redis://:pw@127.0.0.1:1/0")
    with pytest.raises(ServeConfigError, match="state and state_env"):
        ServeConfig.load(None, state_env="HLLM_STATE_X", state="redis://127.0.0.1:1/0").options()
    monkeypatch.setenv("HLLM_STATE_X", "http://:secretpw@host/0")
    with pytest.raises(ServeConfigError, match="state_env") as exc:
        ServeConfig.load(None, state_env="HLLM_STATE_X").options()
    assert "secretpw" not in str(exc.value)


def test_a_cap_on_a_server_without_client_keys_names_the_setting():
    with pytest.raises(ServeConfigError) as exc:
        ServeConfig.load(None, budget_cap=["team-a=5/day"]).options()
    assert "None" not in str(exc.value) and "--serve-api-key-env" in str(exc.value)


# --- an upstream that quotes its own key ------------------------------------------------------------

UPSTREAM_KEY = "sk-upstream-LEAKME-0123456789abcdef0123"
URL_KEY = "sk-up/LEAKME+0123456789abcdef0123=="  # a base64 key: a URL escapes three of its characters


class QuotingUpstream(FakeOpenAI):
    """An upstream whose errors quote the key it received, as some providers' 401s do; ``mode``:
    "401" (a 4xx the proxy relays), "500" (quoted in the first bytes), "500-cut" (the key straddles
    the 300 bytes the proxy reads of an error body), "bearer" (the Authorization header echoed), "url"
    (a 401 quoting the request as a URL, the key %-escaped in its query)."""

    mode = "401"

    async def _chat(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ")
        self.requests.append({"auth": auth})
        if self.mode == "401":
            said = {"message": f"Incorrect API key provided: {key}.", "code": "invalid_api_key"}
            return JSONResponse({"error": said}, status_code=401)
        if self.mode == "500":
            return JSONResponse({"error": {"message": f"internal error for key {key}"}}, status_code=500)
        if self.mode == "500-cut":
            pad = "x" * (300 - len('{"error":"') - 20)  # the first 300 bytes end inside the key
            return JSONResponse({"error": pad + key}, status_code=500)
        if self.mode == "url":
            said = {"message": f"no such key: GET /v1/check?key={quote(key, safe='')} (or {quote(key)})"}
            return JSONResponse({"error": said}, status_code=401)
        return JSONResponse({"error": {"message": f"request headers: Authorization: {auth}"}}, status_code=502)


@pytest.mark.parametrize("mode", ["401", "500", "500-cut", "bearer", "url"])
def test_an_upstreams_error_body_never_carries_its_key_to_the_client_or_the_log(tmp_path, mode):
    key = URL_KEY if mode == "url" else UPSTREAM_KEY
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with QuotingUpstream() as s_up, QuotingUpstream() as l_up, log.open("w") as out:
        s_up.mode = l_up.mode = mode
        args = [*_args(s_up, l_up, port), "--api-key-env", "small=UP_KEY", "--api-key-env", "large=UP_KEY",
                "--no-fallback"]  # fmt: skip
        with running_serve(args, port, env={"UP_KEY": key}, log=out):
            got = [_chat(base, "small"), _chat(base, "large"), _chat(base, "hybrid")]
    assert s_up.requests and l_up.requests
    assert all(r["auth"] == f"Bearer {key}" for r in s_up.requests + l_up.requests)  # the key was sent
    text = log.read_text()
    assert '"status": ' in text  # the access log has the failed requests
    for r in got:
        assert r.status_code >= 400 and r.json()["error"]["message"], r.text
        assert "[redacted]" in r.text, r.text  # the body said something there, and it is gone
        for leak in (key, key[:12], "LEAKME"):
            assert leak not in r.text and leak not in text, (leak, r.text)


def test_collect_errors_do_not_quote_the_upstreams_key():
    async def ask(url: str) -> str:
        backend = HTTPBackend(model="m", base_url=url, api_key=UPSTREAM_KEY, max_retries=0, concurrency=1)
        async with backend:
            with pytest.raises(BackendError) as exc:
                await backend.generate("hi", SamplingParams(max_tokens=4))
        return str(exc.value)

    for mode in ("401", "500", "bearer"):
        with QuotingUpstream() as up:
            up.mode = mode
            message = asyncio.run(ask(up.url))
        assert "[redacted]" in message and "LEAKME" not in message, message
