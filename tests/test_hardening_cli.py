"""Issue 14 through the command line: keys only where they belong, no secret in logs, a server that
refuses bad settings in one line, slow clients cut off, bad artifacts and tables named, finished
collections kept."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from hybridllm.model.router import SHIPPED_ROUTER

from .helpers.cli import run
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # the CLI and `hybridllm serve` in subprocesses


def test_each_upstream_gets_only_its_own_key_and_no_secret_is_logged(tmp_path):
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        port = free_port()
        # the small endpoint's URL carries credentials: they must not show up in any log line
        s_url = s_up.url.replace("http://", "http://alice:hunter2@")
        args = ["--small", f"s@{s_url}", "--large", f"l@{l_up.url}", "--port", str(port)]
        args += ["--api-key-env", "large=LARGE_KEY"]
        env = {"LARGE_KEY": "sk-large-secret", "OTHER_KEY": "sk-other"}
        with running_serve(args, port, env=env) as proc:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            for model in ("small", "large", "hybrid"):
                r = httpx.post(url, json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
                assert r.status_code == 200
            s_up.faults.append("500")  # an upstream error: its message must not carry the URL either
            httpx.post(url, json={"model": "small", "messages": [{"role": "user", "content": "x"}]}, timeout=20)
        out = proc.stdout.read().decode()
    assert "sk-large-secret" not in "".join(a or "" for a in s_up.auth)
    assert all(a is None or "sk-large" not in a for a in s_up.auth)
    assert l_up.auth and all(a == "Bearer sk-large-secret" for a in l_up.auth)
    assert "hunter2" not in out and "sk-large-secret" not in out
    banner = [line for line in out.splitlines() if line.startswith("·")]
    rest = [line for line in out.splitlines() if line and not line.startswith("·")]
    assert banner and rest, out
    for line in rest:  # default verbosity: only the JSON access log after the banner
        assert isinstance(json.loads(line), dict), line


def test_one_bare_key_for_two_http_upstreams_is_refused():
    proc = run(
        "serve", "--small", "s@http://127.0.0.1:9/v1", "--large", "l@http://127.0.0.1:9/v1",
        "--api-key-env", "OPENAI_API_KEY", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "say which model" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_collect_sends_each_key_to_its_own_model(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(3)))
    with FakeOpenAI() as a, FakeOpenAI() as b:
        env = {**os.environ, "B_KEY": "sk-b"}
        proc = subprocess.run(
            [sys.executable, "-m", "hybridllm.cli", "collect", str(prompts), "--model", f"a=ma@{a.url}",
             "--model", f"b=mb@{b.url}", "--api-key-env", "b=B_KEY", "--samples", "1", "--output",
             str(tmp_path / "t.jsonl")],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert a.auth == [None] * 3 and b.auth == ["Bearer sk-b"] * 3


def test_open_bind_without_client_key_is_refused():
    proc = run("serve", "--small", "s@http://127.0.0.1:9/v1", "--large", "l@http://127.0.0.1:9/v1",
               "--host", "0.0.0.0", ok=False)  # fmt: skip
    assert proc.returncode != 0 and "refusing to serve on 0.0.0.0" in proc.stderr


def test_config_file_unknown_key_banner_and_port_in_use(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('small = "s@http://127.0.0.1:9/v1"\nlarge = "l@http://127.0.0.1:9/v1"\nprot = 8004\n')
    proc = run("serve", "--config", str(cfg), ok=False)
    assert proc.returncode != 0 and f"{cfg}: unknown key 'prot'" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run("serve", "--small", "s@http://127.0.0.1:9/v1", "--large", "l@http://127.0.0.1:9/v1",
                   "--port", str(port), ok=False)  # fmt: skip
    assert proc.returncode != 0 and proc.stderr.strip() == f"error: port {port} is in use: choose another with --port"
    with FakeOpenAI() as up:
        port = free_port()
        cfg.write_text(f'small = "s@{up.url}"\nlarge = "l@{up.url}"\nport = {port}\ndefault_knob = "hybrid-ca-30"\n')
        with running_serve(["--config", str(cfg)], port) as proc:
            pass
        out = proc.stdout.read().decode()
    assert "hybrid (= hybrid-ca-30)" in out


def test_a_port_in_use_fails_before_the_router_and_models_load(tmp_path):
    """The port is bound first: a busy one is the one error, though the router named cannot be read
    (it once loaded the router and both models, 35 s, before saying the port was taken)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run("serve", "--router", str(tmp_path / "no-router"), "--small", "qwen2.5-0.5b", "--large",
                   "qwen2.5-1.5b", "--port", str(port), ok=False)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: port {port} is in use: choose another with --port"
    # the same command on a free port reaches the router, and stops there
    proc = run("serve", "--router", str(tmp_path / "no-router"), "--port", str(free_port()), ok=False)
    assert proc.returncode == 1 and "no-router" in proc.stderr and "in use" not in proc.stderr


def test_slow_headers_and_slow_bodies_are_cut_off(tmp_path):
    with FakeOpenAI() as up:
        port = free_port()
        cfg = tmp_path / "serve.toml"
        cfg.write_text(
            f'small = "s@{up.url}"\nlarge = "l@{up.url}"\nport = {port}\n'
            "header_timeout_s = 1.0\nclient_timeout_s = 1.0\n"
        )
        with running_serve(["--config", str(cfg)], port):
            conns = []
            for i in range(20):  # stalled in the headers, or silent from the start
                s = socket.create_connection(("127.0.0.1", port))
                if i % 2:
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                conns.append(s)
            time.sleep(2.5)
            closed = 0
            for s in conns:
                s.settimeout(1.0)
                try:
                    closed += s.recv(100) == b""
                except (TimeoutError, ConnectionResetError):
                    closed += isinstance(sys.exc_info()[1], ConnectionResetError)
                s.close()
            assert closed == 20
            # a body that never finishes: 408 after client_timeout_s
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"mo')
                assert s.recv(200).startswith(b"HTTP/1.1 408")
            # and the server still answers
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           json={"model": "small", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            assert r.status_code == 200


def _corrupt(tmp_path: Path, name: str, change) -> Path:
    d = tmp_path / name
    shutil.copytree(SHIPPED_ROUTER, d)
    change(d)
    return d


def _edit_config(fn):
    def change(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg = fn(cfg)
        (d / "config.json").write_text(json.dumps(cfg))

    return change


def _edit_tensors(fn):
    def change(d):
        from safetensors.numpy import load_file, save_file

        t = load_file(str(d / "head.safetensors"))
        save_file(fn(t), str(d / "head.safetensors"))

    return change


BAD_ARTIFACTS = {
    "truncated": (lambda d: (d / "head.safetensors").write_bytes((d / "head.safetensors").read_bytes()[:5000]),
                  "head.safetensors: not a readable safetensors file"),
    "empty": (lambda d: (d / "head.safetensors").write_bytes(b""), "head.safetensors: not a readable"),
    "config-list": (_edit_config(lambda c: [c]), "config.json: expected a JSON object"),
    "renamed": (_edit_tensors(lambda t: {("W1" if k == "w1" else k): v for k, v in t.items()}), "unknown tensors W1"),
    "shape": (_edit_tensors(lambda t: {**t, "b2": t["b2"][:1]}), "tensor 'b2': expected shape"),
    "nan": (_edit_tensors(lambda t: {**t, "w2": np.full_like(t["w2"], np.nan)}), "tensor 'w2' holds NaN"),
    "calibration": (_edit_config(lambda c: {**c, "calibration": {"a": 1}}), "field 'calibration'"),
    "cal-order": (_edit_config(lambda c: {**c, "calibration": c["calibration"][::-1]}), "calibration[1]"),
    "default": (_edit_config(lambda c: {**c, "default_operating_point": {"kind": "vibes", "value": 1}}),
                "default_operating_point.kind"),
    "width": (_edit_tensors(lambda t: {k: (v[..., :10, :] if k == "w1" else v[:10] if k in ("mu", "sd", "lin_w",
              "lin_mu", "lin_sd") else v) for k, v in t.items()}), "the head takes 10 inputs"),
    "memory-part": (_edit_tensors(lambda t: {**t, "knn_x": np.zeros((5, 4), np.float32)}),
                    "memory member incomplete (has knn_x)"),
    "memory-dims": (_edit_tensors(lambda t: {**t, **_memory(10)}), "the memory member compares 10-d prompt embeddings"),
    "memory-k": (_edit_tensors(lambda t: {**t, **_memory(384), "knn_k": np.array([9.0], np.float32)}),
                 "tensor 'knn_k' must be within 1..5"),
}  # fmt: skip


def _memory(dim: int) -> dict[str, np.ndarray]:
    """A memory member of 5 prompts compared in a 4-d subspace of ``dim``-d embeddings."""
    return {"knn_x": np.eye(5, 4, dtype=np.float32), "knn_y": np.full(5, 0.5, np.float32),
            "knn_mu": np.zeros(dim, np.float32), "knn_proj": np.eye(dim, 4, dtype=np.float32),
            "knn_k": np.array([3.0], np.float32), "knn_mix": np.array([0.5], np.float32)}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ARTIFACTS))
def test_bad_artifact_is_refused_in_one_line(tmp_path, case):
    change, expected = BAD_ARTIFACTS[case]
    d = _corrupt(tmp_path, case, change)
    proc = run("route", str(d), "What is 2+2?", ok=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(d) in proc.stderr


def test_serve_refuses_to_start_on_a_bad_artifact(tmp_path):
    d = _corrupt(tmp_path, "nan", BAD_ARTIFACTS["nan"][0])
    port = free_port()
    proc = run("serve", "--router", str(d), "--small", "s@http://127.0.0.1:9/v1", "--large",
               "l@http://127.0.0.1:9/v1", "--port", str(port), ok=False)  # fmt: skip
    assert proc.returncode == 1 and "holds NaN" in proc.stderr


@pytest.mark.parametrize(
    "line,expected",
    [
        (b'{"id": "b", "prompt": "caf\xe9"}\n', "t.jsonl:2: row: not UTF-8 (byte 0xe9 at column 27)"),
        (
            b'{"id": "b", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            "t.jsonl:2: row: JSON nested too deeply",
        ),
        (b'{"id": "b", "prompt": "x", "meta": {"n": 1' + b"0" * 5000 + b"}}\n", "t.jsonl:2: row: unreadable JSON"),
        (b'{"id": "b", "prompt": "x \\ud800 y"}\n', "t.jsonl:2: prompt: string holds a lone surrogate"),
    ],
)
def test_table_errors_name_file_and_line(tmp_path, line, expected):
    t = tmp_path / "t.jsonl"
    t.write_bytes(b'{"id": "a", "prompt": "fine"}\n' + line)
    proc = run("stats", str(t), ok=False)
    assert proc.returncode == 1 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_finished_collection_is_never_re_requested_or_overwritten(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(4)))
    out = tmp_path / "t.jsonl"
    with FakeOpenAI() as up:
        base = ["collect", str(prompts), "--model", f"a=ma@{up.url}", "--output", str(out), "--samples", "2"]
        run(*base)
        assert len(up.requests) == 8
        before = out.read_bytes()
        again = run(*base)  # identical rerun: a no-op
        assert len(up.requests) == 8 and out.read_bytes() == before and "0 requested now" in again.stdout
        other = run(*base[:-1], "3", ok=False)  # other settings: refused, table untouched
        assert other.returncode == 1 and "samples differ" in other.stderr and "--overwrite" in other.stderr
        assert out.read_bytes() == before and len(up.requests) == 8
        run(*base[:-1], "3", "--overwrite")
        assert len(up.requests) == 8 + 12
        assert all(len(r["responses"]["a"]) == 3 for r in map(json.loads, out.read_text().splitlines()))
        foreign = tmp_path / "mine.jsonl"
        foreign.write_text('{"id": "x", "prompt": "hand-made"}\n')
        refused = run("collect", str(prompts), "--model", f"a=ma@{up.url}", "--output", str(foreign), ok=False)
        assert refused.returncode == 1 and "not this collection's finished table" in refused.stderr
        assert foreign.read_text() == '{"id": "x", "prompt": "hand-made"}\n'


def test_collect_takes_specs_and_keys_from_the_models_file(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(2)))
    with FakeOpenAI() as a, FakeOpenAI() as b:
        models = tmp_path / "models.toml"
        models.write_text(
            f'[models.a]\nspec = "ma@{a.url}"\ncost = 1\n'
            f'[models.b]\nspec = "mb@{b.url}"\ncost = 9\napi_key_env = "B_KEY"\n'
        )
        env = {**os.environ, "B_KEY": "sk-b"}
        proc = subprocess.run(
            [sys.executable, "-m", "hybridllm.cli", "collect", str(prompts), "--models-file", str(models),
             "--model", "a", "--model", "b", "--samples", "1", "--output", str(tmp_path / "t.jsonl")],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert a.auth == [None, None] and b.auth == ["Bearer sk-b"] * 2
        assert [r["model"] for r in b.requests] == ["mb", "mb"]
