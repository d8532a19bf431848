"""The on-disk embedding cache and the embedding pass that reads and fills it."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybridllm.fsutil import cache_dir
from hybridllm.progress import progress_bar

from .base import Encoder


class EmbeddingCache:
    """On-disk cache of embeddings keyed by (encoder fingerprint, text): re-training, new label types
    and evaluation never pay for the same embedding twice. SQLite: durable, one file, safe to share."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or (cache_dir() / "embeddings.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (enc TEXT, key BLOB, vec BLOB, PRIMARY KEY (enc, key))")
        self._db.commit()

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()[:20]

    def get_many(self, enc: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        keys = [self._key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, vec FROM emb WHERE enc=? AND key IN ({','.join('?' * len(chunk))})"
            for k, v in self._db.execute(q, [enc, *chunk]):
                found[bytes(k)] = np.frombuffer(v, dtype=np.float32)
        return [found.get(k) for k in keys]

    def put_many(self, enc: str, texts: Sequence[str], vecs: np.ndarray) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
            [(enc, self._key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vecs, strict=True)],
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def embed_texts(
    encoder: Encoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    desc: str = "embedding",
    show_progress: bool = True,
    chunk: int = 1024,
) -> np.ndarray:
    """Embed texts, reading and filling the on-disk cache; computed chunks are stored as they finish,
    so an interrupted run keeps what it already paid for."""
    texts = list(texts)
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    cached = cache.get_many(encoder.fingerprint, texts) if cache is not None else [None] * len(texts)
    todo = [i for i, v in enumerate(cached) if v is None]
    for i, v in enumerate(cached):
        if v is not None:
            out[i] = v
    if not todo:
        return out
    unique: dict[str, list[int]] = {}
    for i in todo:
        unique.setdefault(texts[i], []).append(i)
    utexts = list(unique)
    with progress_bar(len(utexts), desc, "text", enabled=show_progress, leave=False) as bar:
        for start in range(0, len(utexts), chunk):
            part = utexts[start : start + chunk]
            vecs = encoder.encode(part, batch_size=batch_size, progress=bar.update)
            if cache is not None:
                cache.put_many(encoder.fingerprint, part, vecs)
            for t, v in zip(part, vecs, strict=True):
                for i in unique[t]:
                    out[i] = v
    return out
