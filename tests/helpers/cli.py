"""The CLI as a user runs it: `hybridllm ARGS` in a subprocess of this interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

#: `hybridllm collect` in a subprocess of this interpreter
COLLECT = [sys.executable, "-m", "hybridllm.cli", "collect"]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`hybridllm ARGS` to its end (output captured as text); with ``ok`` its exit status must be 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=900,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def collect_cmd(
    prompts: Any, upstream: Any, output: Any, samples: int = 3, concurrency: int = 4, extra: Sequence[str] = ()
) -> list[str]:
    """`hybridllm collect` over a small and a large model on one fake upstream."""
    return [
        *COLLECT,
        str(prompts),
        "--model",
        f"small=tiny@{upstream.url}",
        "--model",
        f"large=big@{upstream.url}",
        "--samples",
        str(samples),
        "--concurrency",
        str(concurrency),
        "--output",
        str(output),
        "--temperature",
        "0.8",
        *extra,
    ]
