"""What installing hybridllm costs: the plain install (serve, route, evaluate) against the one with
the training stack (the ``train`` extra), each in a fresh virtualenv from the local package index.
In the plain one it also checks what the docs promise: torch is absent, ``hybridllm route`` and
``hybridllm serve`` work with the shipped router, and ``hybridllm train`` fails with one line naming
the extra.

    python benchmarks/install_size.py      # ~6 min; writes benchmarks/results/install_size.json

Times depend on the pip cache (warm here: every wheel already downloaded or built once); sizes do
not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from proxy_harness import free_port, git_commit, write_result  # noqa: E402

INSTALLS = [
    ("plain", ["pip", "install", "-q", str(REPO)]),
    ("with the train extra", ["pip", "install", "-q", "torch==2.13.0", f"{REPO}[train]"]),
]


class _Upstream(BaseHTTPRequestHandler):
    """An OpenAI-protocol upstream that answers every chat request with "ok"."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def install(name: str, args: list[str], root: Path) -> tuple[dict, Path]:
    venv = root / name.replace(" ", "-")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    t0 = time.perf_counter()
    got = subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if got.returncode != 0:
        raise SystemExit(f"{name}: pip failed: {got.stderr[-2000:]}")
    py = str(venv / "bin" / "python")
    listed = subprocess.run([py, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    torch = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0
    shown = " ".join(args).replace(str(REPO), ".")
    row = {"name": name, "command": shown, "seconds": round(seconds, 1), "mb": round(size_mb(venv), 1),
           "packages": len(json.loads(listed.stdout)), "torch": torch}  # fmt: skip
    print(f"{name}: {row['seconds']:.0f} s, {row['mb']:,.0f} MB, {row['packages']} packages, torch {torch}", flush=True)
    return row, venv


def lean_checks(venv: Path, root: Path) -> list[dict]:
    """What the plain install must do without the training stack."""
    exe = str(venv / "bin" / "hybridllm")
    py = str(venv / "bin" / "python")
    env = {"HYBRIDLLM_CACHE": str(root / "cache"), "HYBRIDLLM_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin"}
    shipped = subprocess.run([py, "-c", "import hybridllm; print(hybridllm.default_router_dir())"],
                             capture_output=True, text=True, env=env, check=True).stdout.strip()  # fmt: skip
    checks = []

    def check(cmd: list[str], want_rc: int, show: str) -> str:
        got = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        checks.append({"command": show, "rc": got.returncode})
        if got.returncode != want_rc:
            raise SystemExit(f"{show}: exit {got.returncode}, expected {want_rc}: {got.stderr[-1500:]}")
        return got.stdout + got.stderr

    check([py, "-c", "import torch"], 1, 'python -c "import torch"')
    check([exe, "route", shipped, "What is 2 + 3?"], 0, 'hybridllm route SHIPPED "What is 2 + 3?"')
    said = check([exe, "train", str(REPO / "data/default-pair/table.jsonl"), "--small", "qwen2.5-0.5b", "--large",
                  "qwen2.5-1.5b", "--output", str(root / "r")], 1, "hybridllm train ...")  # fmt: skip
    assert "pip install 'hybridllm[train]'" in said, said
    up = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{up.server_address[1]}/v1"
    port = free_port()
    cmd = [exe, "serve", "--router", shipped, "--small", f"s@{url}", "--large", f"l@{url}", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("hybridllm serve did not come up in the plain install") from None
                time.sleep(0.3)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json.dumps({"model": "hybrid", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}).encode(),
            {"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            answered = r.status == 200 and r.headers["x-hybridllm-model"] in ("qwen2.5-0.5b", "qwen2.5-1.5b")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        up.shutdown()
    checks.append({"command": "hybridllm serve --router SHIPPED ... + one chat request", "rc": 0 if answered else 1})
    return checks


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="hybridllm-install-"))
    try:
        rows, venvs = [], {}
        for name, args in INSTALLS:
            row, venv = install(name, args, root)
            rows.append(row)
            venvs[name] = venv
        checks = lean_checks(venvs["plain"], root)
        for c in checks:
            print(f"plain install: {c['command']}: exit {c['rc']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result(REPO / "benchmarks" / "results" / "install_size.json", {
        "benchmark": "install_size", "commit": git_commit(REPO), "installs": rows, "lean_checks": checks,
        "note": "a warm pip cache (every wheel already built once, llama-cpp-python not involved); load average "
        f"{os.getloadavg()[0]:.1f} at the end (2 cores)",
    })  # fmt: skip


if __name__ == "__main__":
    main()
