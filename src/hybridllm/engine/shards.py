"""The Ray engine's durable store: a directory of Parquet shard files with the job's settings, and
the conversions between rows/vectors and Arrow tables. Paths are absolute on the driver."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.errors import HybridLLMError
from hybridllm.fsutil import cache_dir
from hybridllm.tables.format import Row


class EngineError(HybridLLMError, RuntimeError):
    """A Ray job failed: one line with the worker's own error, or a refused shard directory."""


class ShardStore:
    """A directory of ``part-NNNNN.parquet`` files plus ``_job.json`` (the job's settings). Opening a
    store written by a job with other settings is refused, as the collect journal does."""

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        # absolute on the driver: a worker on a cluster runs in its own directory
        self.dir = Path(directory).expanduser().resolve()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise EngineError(f"{self.dir}: work directory not usable ({exc.strerror or exc})") from None
        job = self.dir / "_job.json"
        if job.exists():
            old = json.loads(job.read_text())
            if old != json.loads(json.dumps(settings)):
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise EngineError(
                    f"{self.dir}: shards written by a job with other settings ({', '.join(changed)} differ); "
                    "rerun the original command, or delete the directory to start over"
                )
        else:
            tmp = job.with_name(f"_job.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
            tmp.replace(job)

    def path(self, shard: int) -> Path:
        return self.dir / f"part-{shard:05d}.parquet"

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")}

    @staticmethod
    def write(path: str | Path, table: Any) -> None:
        import pyarrow.parquet as pq

        p = Path(path)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(p)

    def read(self, shard: int) -> Any:
        import pyarrow.parquet as pq

        return pq.read_table(self.path(shard))

    def rows(self, shards: int) -> list[Row]:
        """Shards 0..shards-1 of row results, joined in order."""
        return [r for i in range(shards) for r in table_rows(self.read(i))]

    def vectors(self, shards: int) -> np.ndarray:
        """Shards 0..shards-1 of vector results, stacked in order."""
        return np.concatenate([table_vectors(self.read(i)) for i in range(shards)])


def rows_table(rows: Sequence[Row]) -> Any:
    """Rows as a one-column Parquet table of JSON text: lossless for any row shape."""
    import pyarrow as pa

    return pa.table({"row": pa.array([json.dumps(r, ensure_ascii=False) for r in rows], pa.string())})


def table_rows(table: Any) -> list[Row]:
    return [json.loads(x) for x in table.column("row").to_pylist()]


def vectors_table(x: np.ndarray) -> Any:
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = pa.array(x.reshape(-1), pa.float32())
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})


def table_vectors(table: Any) -> np.ndarray:
    col = table.column("vector").combine_chunks()
    return np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), -1)


def absolute_if_path(spec: str | None) -> str | None:
    """A SPEC or a model/encoder path as a worker elsewhere must see it: an existing local path made
    absolute on the driver; model names and URLs as they are."""
    if spec is None or "://" in spec:
        return spec
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def default_work_dir(kind: str, key: Any) -> Path:
    return cache_dir() / "ray" / f"{kind}-{digest(key)}"
