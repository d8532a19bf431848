"""A llama-cpp-python build that cannot run on this CPU (compiled for the build host's AMX, say) kills
the process on its first generation. The attack: such a build installed, then `hybridllm chat` /
`serve` on a local model. Defended by a probe in a child process that turns the crash into one line
naming the fix; a build that runs is probed once per build, model file and CPU.

The crashing build is a fake ``llama_cpp`` package first on PYTHONPATH that kills its own process
with SIGSEGV when asked to generate: a real process really dying by the signal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hybridllm.backends._probe import FIX

pytestmark = pytest.mark.slow  # probes llama.cpp builds in subprocesses

CRASHING = '''
"""A llama-cpp-python build for a CPU this one is not: loads, then dies by SIGSEGV on generation."""
import os
import signal

__version__ = "0.0.0-crashes"


def llama_print_system_info():
    return b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | "


class Llama:
    def __init__(self, model_path, **kw):
        self.model_path = model_path

    def _die(self, *a, **kw):
        os.kill(os.getpid(), signal.SIGSEGV)

    create_completion = create_chat_completion = __call__ = _die
'''


def _crashing_build(root: Path) -> Path:
    pkg = root / "crashing-build" / "llama_cpp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(CRASHING)
    return pkg.parent


def _env(cache: Path, pythonpath: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HYBRIDLLM_CACHE": str(cache), "HYBRIDLLM_NO_PROGRESS": "1", "COLUMNS": "200"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _hybridllm(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridllm.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def _assert_one_line_refusal(proc: subprocess.CompletedProcess, where: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, f"{where}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr, proc.stderr
    (line,) = [x for x in lines if x.startswith("error:")]
    assert line == lines[-1], proc.stderr  # the refusal is the last word: nothing ran after it
    assert "SIGSEGV" in line and FIX in line, line
    return line


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    """A model file for the crashing build (which never reads it)."""
    p = tmp_path / "tiny.gguf"
    p.write_bytes(b"GGUF" + bytes(60))
    return p


def test_chat_on_a_build_that_segfaults_refuses_in_one_line(tmp_path, gguf):
    cache = tmp_path / "cache"
    env = _env(cache, _crashing_build(tmp_path))
    proc = _hybridllm("chat", "What is 2+2?", "--small", str(gguf), "--large", str(gguf), "--threshold", "0", env=env)
    line = _assert_one_line_refusal(proc, "chat")
    assert line.startswith(f"error: local model {gguf}: llama-cpp-python crashed (SIGSEGV)"), line
    if not _cpu_has("amx_int8"):  # the build's features that this CPU does not report are named
        assert "(built for AMX_INT8, which this CPU does not report)" in line, line
    assert not list((cache / "llama-probe").glob("*.json"))  # a failure is not remembered


def test_serve_on_a_build_that_segfaults_refuses_in_one_line_before_listening(tmp_path, gguf):
    env = _env(tmp_path / "cache", _crashing_build(tmp_path))
    proc = _hybridllm("serve", "--small", str(gguf), "--large", str(gguf), "--port", "0", env=env)
    line = _assert_one_line_refusal(proc, "serve")
    assert re.match(r"error: local model \S+: llama-cpp-python crashed \(SIGSEGV\) generating", line), line


def test_a_model_the_build_cannot_load_is_one_line_too(tmp_path, gguf):
    """The real llama-cpp-python, a file that is no model: the child fails (no signal), the parent says so."""
    pytest.importorskip("llama_cpp")
    from hybridllm.backends import BackendError, LocalBackend

    os.environ["HYBRIDLLM_CACHE"] = str(tmp_path / "cache")
    with pytest.raises(BackendError, match=r"^local model \S+tiny\.gguf: llama-cpp-python failed its probe \(exit 1\)"):
        LocalBackend(str(gguf)).load()
    assert not list((tmp_path / "cache" / "llama-probe").glob("*.json"))


# a start of the backend in a fresh process, counting the probe processes it spawns (an audit hook
# sees every subprocess this interpreter starts)
START = textwrap.dedent(
    """
    import json, sys
    spawned = []
    sys.addaudithook(lambda ev, args: spawned.append(args[1]) if ev == "subprocess.Popen" else None)
    from hybridllm.backends import LocalBackend, SamplingParams
    b = LocalBackend(sys.argv[1], n_ctx=256, chat=False)
    b.load()
    s = b.generate_sync("One, two, three,", SamplingParams(temperature=0.0, max_tokens=4))
    print(json.dumps({"probes": sum("llama_cpp" in " ".join(map(str, a)) for a in spawned), "text": s.text}))
    """
)


def test_a_build_that_runs_is_probed_once_then_remembered(tmp_path, cache_env):
    pytest.importorskip("llama_cpp")
    from hybridllm.backends.packages import model_path

    model = model_path("gemma-3-270m")  # the tiny fixture model, assembled once per test session
    cache = tmp_path / "cache"
    env = _env(cache)

    def start() -> dict:
        p = subprocess.run(
            [sys.executable, "-c", START, str(model)], capture_output=True, text=True, env=env, timeout=600
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    first = start()
    assert first["probes"] == 1 and first["text"].strip()
    (verdict,) = (cache / "llama-probe").glob("*.json")
    assert json.loads(verdict.read_text())["ok"] is True
    second = start()
    assert second == {"probes": 0, "text": first["text"]}  # no probe: the pass is remembered

    # the remembered pass is the real build's: a crashing build on the same model and CPU is probed anew
    proc = _hybridllm(
        "chat",
        "hi",
        "--small",
        str(model),
        "--large",
        str(model),
        "--threshold",
        "0",
        env=_env(cache, _crashing_build(tmp_path)),
    )
    _assert_one_line_refusal(proc, "chat after a cached pass")
