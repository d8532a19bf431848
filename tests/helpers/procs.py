"""`hybridllm serve` as a real subprocess on 127.0.0.1, for the tests that go through the CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx


@contextlib.contextmanager
def running_serve(
    args: list[str],
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    log: Any = None,
    cwd: Any = None,
    cli: list[str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Start `hybridllm serve ARGS`, wait for /health, yield the process; the caller reads its
    combined output from ``proc.stdout`` after the block (the process is stopped by then). Heavy
    traffic would fill that pipe and stall the server: pass ``log`` (an open file) instead.
    ``cli``: the command that runs `hybridllm` (default: this interpreter's ``-m hybridllm.cli``)."""
    proc = subprocess.Popen(
        [*(cli or [sys.executable, "-m", "hybridllm.cli"]), "serve", *args],
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, "HYBRIDLLM_NO_PROGRESS": "1", **(env or {})},
    )
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read().decode() if proc.poll() is not None and proc.stdout else ""
                raise AssertionError(f"serve did not come up: {out[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)
