"""Files: the one atomic-write helper (a file is either its old self or its new self, never half of
each) and the cache directory every derived file lives under."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str, durable: bool = True) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``. Readers see
    the old or the new file, never half of one. ``durable=False`` skips the fsync: for state that
    only lives while the process does (a reader must not see a torn file, but a crash loses nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with tmp.open("wb") as fh:
        fh.write(raw)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def cache_dir() -> Path:
    """Where derived files live (ONNX exports, embedding cache, assembled models):
    ``$HYBRIDLLM_CACHE``, else ``$XDG_CACHE_HOME/hybridllm`` (``~/.cache/hybridllm``)."""
    root = os.environ.get("HYBRIDLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hybridllm"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p
