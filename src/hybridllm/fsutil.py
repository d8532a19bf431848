"""The one atomic-write helper: a file is either its old self or its new self, never half of each."""

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
