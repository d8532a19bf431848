"""A real redis-server on 127.0.0.1 for the shared-state tests (Debian's, which .ci/run installs)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .net import free_port


def start_redis(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A fresh redis-server (no persistence, its files under ``tmp_path``) and its port; the caller
    terminates the process."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)
    return proc, port
