"""Whether this machine can run the installed llama-cpp-python build, asked before this process
loads a model with it.

``pip install 'hybridllm[local]'`` compiles llama.cpp from source, by default for the build host's
own CPU (``GGML_NATIVE``): on a CPU with AMX that means AMX kernels, and on a virtual machine whose
kernel will not let a process use the AMX tiles, the first generation dies with SIGSEGV, taking
``hybridllm chat`` or ``serve`` with it. Nothing in Python can catch that, so a child process loads
the model and generates two tokens first: if it dies by a signal, the parent refuses in one line
that names the fix (a portable rebuild) instead of crashing.

A pass is remembered under the cache directory, keyed by the llama-cpp-python build (its version and
the bytes of its native libraries), the model file and the CPU (model, flags, kernel), so later
starts pay nothing; a failure is not remembered (the next start probes again, and a rebuilt library
has another key anyway).
"""

from __future__ import annotations

import hashlib
import json
import platform
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from hybridllm.fsutil import atomic_write, cache_dir

from ._types import BackendError

FIX = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python'
MISSING = (
    "local models need llama-cpp-python: pip install 'hybridllm[local]' "
    "(builds from source, ~6 min; CMAKE_ARGS=-DGGML_NATIVE=OFF for portable binaries)"
)
PROBE_TIMEOUT_S = 600.0  # loading a 1.5B model on a slow machine takes seconds, not minutes
_NATIVE_SUFFIXES = (".so", ".dylib", ".dll")
_WINDOWS_CRASHES = {0xC0000005: "access violation", 0xC000001D: "illegal instruction"}

# The child: its first stderr line is the build's CPU features, then the model generates two tokens
# after a prompt long enough to run the batched (matrix-matrix) kernels as well as the one-token ones.
# sys.path[0] (the working directory under -c) is dropped so a folder there cannot stand in for the package.
_CHILD = """
import sys
if sys.path and sys.path[0] == "":
    sys.path.pop(0)
import llama_cpp
try:
    info = llama_cpp.llama_print_system_info()
    info = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
except Exception:
    info = ""
print("features:", " ".join(info.split()), file=sys.stderr, flush=True)
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=int(sys.argv[2]),
                      n_threads_batch=int(sys.argv[2]), verbose=False)
llm.create_completion(" ".join(["one two three four five six seven eight"] * 6), max_tokens=2, temperature=0.0)
print("generated", flush=True)
"""


def llama_cpp_dir() -> Path | None:
    """Where the importable ``llama_cpp`` package lives, found without importing it (importing loads
    the native library)."""
    spec = find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _cpu() -> str:
    """This CPU as the kernel presents it to this process: model name, feature flags, kernel release."""
    info = {"machine": platform.machine(), "kernel": platform.release()}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("model name", "flags", "Features") and k not in info:
                info[k] = " ".join(sorted(v.split())) if k != "model name" else v.strip()
    except OSError:
        info["processor"] = platform.processor()
    return json.dumps(info, sort_keys=True)


def probe_key(model: Path, package: Path) -> str:
    """The build (package folder, version file and native libraries, by content), the model file
    (path, size, mtime) and the CPU, hashed."""
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{package}\0".encode())
    native = (p for p in package.rglob("*") if p.is_file() and (p.suffix in _NATIVE_SUFFIXES or ".so." in p.name))
    for f in sorted(native):
        h.update(f"{f.relative_to(package)}\0".encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    if (package / "__init__.py").is_file():  # carries the version
        h.update((package / "__init__.py").read_bytes())
    st = model.stat()
    h.update(f"\0{model.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{_cpu()}".encode())
    return h.hexdigest()[:32]


def verdict_path(key: str) -> Path:
    return cache_dir() / "llama-probe" / f"{key}.json"


def _missing_features(stderr: str) -> list[str]:
    """The build's CPU features (its ``features:`` line, ``NAME = 1``) that /proc/cpuinfo does not
    list, for the message: AMX, AVX-512 and the like."""
    line = next((x for x in stderr.splitlines() if x.startswith("features:")), "")
    try:
        flags = set(Path("/proc/cpuinfo").read_text(errors="replace").lower().split())
    except OSError:
        return []
    built = [p.split("=")[0].split()[-1] for p in line[len("features:") :].split("|") if p.strip().endswith("= 1")]
    wanted = {"AVX512": "avx512f", "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16"}
    wanted |= {"AMX_INT8": "amx_int8", "AMX_BF16": "amx_bf16", "AVX_VNNI": "avx_vnni"}
    return [f for f in built if f in wanted and wanted[f] not in flags]


def _refusal(name: str, rc: int, stderr: str) -> str:
    sig = None
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
    elif rc in _WINDOWS_CRASHES:
        sig = _WINDOWS_CRASHES[rc]
    if sig is not None:
        missing = _missing_features(stderr)
        why = f" (built for {', '.join(missing)}, which this CPU does not report)" if missing else ""
        return (
            f"local model {name}: llama-cpp-python crashed ({sig}) generating in a probe process: its build"
            f" uses CPU instructions this machine cannot run{why}; rebuild it portable: {FIX}"
        )
    last = next((x for x in reversed(stderr.strip().splitlines()) if x.strip() and not x.startswith("features:")), "")
    return f"local model {name}: llama-cpp-python failed its probe (exit {rc}): {last.strip()[:300] or 'no message'}"


def ensure_runs(model: Path, name: str, threads: int) -> None:
    """Refuse with one line (a :class:`BackendError` naming the fix) unless the installed
    llama-cpp-python build has generated with ``model`` on this CPU: once per build, model file and
    CPU, in a child process; later calls read the remembered pass."""
    package = llama_cpp_dir()
    if package is None:
        raise BackendError(MISSING)
    verdict = verdict_path(probe_key(model, package))
    if verdict.is_file():
        return
    cmd = [sys.executable, "-c", _CHILD, str(model.resolve()), str(max(1, threads))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BackendError(
            f"local model {name}: llama-cpp-python did not generate two tokens within {PROBE_TIMEOUT_S:.0f} s"
            " in its probe process"
        ) from None
    if done.returncode != 0 or "generated" not in done.stdout:
        raise BackendError(_refusal(name, done.returncode, done.stderr))
    record = {"ok": True, "model": str(model.resolve()), "package": str(package), "at": time.time()}
    atomic_write(verdict, json.dumps(record, sort_keys=True) + "\n", durable=False)
