"""The static encoder: a bag-of-token-vectors distillation of a transformer encoder, derived once
from the locally installed weights (nothing is downloaded) and cached. The router's default: one
prompt costs a tokenizer pass and a table lookup.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hybridllm.errors import require
from hybridllm.fsutil import cache_dir
from hybridllm.progress import progress_iter

from .base import EncoderError, encoder_fingerprint, resolve_encoder_path
from .onnx_export import export_onnx
from .tokenizer import Tokenizer
from .wordpiece import WordpieceCache

#: the default static encoder (all-MiniLM-L6-v2's), shipped in the package
BUNDLED = Path(__file__).resolve().parent / "minilm_static"


class StaticEncoder:
    """A static (bag-of-token-vectors) distillation of a transformer encoder, model2vec style.

    Each vocabulary token's vector is the transformer's own mean-pooled embedding of that token
    alone; a text is the normalised mean of its tokens' vectors. It keeps much of the encoder's
    topical knowledge while costing a table lookup: about 100x faster than the transformer on a
    2-core CPU, which is what lets one routing decision stay far below the LLM's own latency.
    The default's table ships in the package (:data:`BUNDLED`, written by
    ``scripts/export_static_encoder.py``), so routing with it needs neither torch nor the
    transformer's weights; the static form of any other encoder (``NAME:static``) is derived once
    from the installed encoder and cached (nothing is downloaded).
    """

    def __init__(self, spec: str | None = None, max_length: int = 512) -> None:
        self.spec = spec
        self.max_length = max_length
        if spec is None:
            meta = json.loads((BUNDLED / "meta.json").read_text())
            self.name, self.path = meta["name"], BUNDLED
            table = np.load(BUNDLED / "table.npy", mmap_mode="r", allow_pickle=False)
            base = meta["fingerprint"].removeprefix("static-")
            same = max_length == meta["max_length"]  # the fingerprint it had when distilled at run time
            self.fingerprint = "static-" + (
                base if same else hashlib.sha256(f"{base};{max_length}".encode()).hexdigest()[:16]
            )
        else:
            name, self.path = resolve_encoder_path(spec)
            self.name = f"{name}-static"
            self.fingerprint = "static-" + encoder_fingerprint(self.path, max_length)
            table = self._load_table()
        self.tokenizer = Tokenizer(self.path, max_length)
        self.backend = "static"
        self.table = table
        self.dim = int(self.table.shape[1])
        specials = {self.tokenizer.tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>")}
        self._specials = np.array(sorted(i for i in specials if i is not None), dtype=np.int64)
        # ASCII text by a per-word cache, the rest by the tokenizer: same ids, a fraction of the work
        self._ids = WordpieceCache(self.tokenizer.raw).ids
        self._dense = np.asarray(self.table)  # a plain view of the (memory-mapped) table
        self._is_special = np.zeros(self.table.shape[0], dtype=bool)
        self._is_special[self._specials] = True

    def _load_table(self) -> np.ndarray:
        target = cache_dir() / "static" / f"{self.name}-{encoder_fingerprint(self.path, 0)}.npy"
        if target.exists():
            return np.load(target, mmap_mode="r")
        target.parent.mkdir(parents=True, exist_ok=True)
        table = distill_static_table(self.path)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp.npy")
        np.save(tmp, table)
        tmp.replace(target)
        return table

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_with_lengths(texts)[1]

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return self.encode_with_lengths(texts, batch_size, progress)[0]

    def encode_with_lengths(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and untruncated token counts (with the special tokens, as the ``log_tokens``
        feature counts them) from one tokenizer pass: the serving hot path needs both, and a
        second pass with truncation toggled on the shared tokenizer was both slower and unsafe
        across threads. Truncation is applied here exactly as the tokenizer's right truncation
        would: the first ``max_length - n_special`` content tokens."""
        keep = self.max_length - self.tokenizer.n_added
        if len(texts) <= _GATHER_MAX and progress is None:  # the proxy's lone prompts: no batch set-up
            ids = self._ids(texts)
            lengths = np.array([len(x) + self.tokenizer.n_added for x in ids], dtype=np.int64)
            return np.stack([self._pool(x[:keep]) for x in ids]), lengths
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        lengths = np.zeros(len(texts), dtype=np.int64)
        step = max(batch_size, 256)
        for start in range(0, len(texts), step):
            part = texts[start : start + step]
            ids = self._ids(part)
            lengths[start : start + len(part)] = [len(x) + self.tokenizer.n_added for x in ids]
            out[start : start + len(part)] = self._pool_many([x[:keep] for x in ids])
            if progress is not None:
                progress(len(part))
        return out, lengths

    def _pool(self, ids: list[int]) -> np.ndarray:
        """One text's vector by a plain gather: for a lone prompt (the proxy's one-client path) the
        sparse product's set-up costs ten times the arithmetic (0.2 ms of NumPy and SciPy calls
        against 0.02 ms here). Same sum and normalisation as :meth:`_pool_many`, bit for bit (tested)."""
        a = np.asarray(ids, dtype=np.int64)
        a = a[~self._is_special[a]]
        if not len(a):
            return np.zeros(self.dim, dtype=np.float32)
        v = self._dense[a].sum(axis=0, keepdims=True) / np.float32(len(a))
        return (v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12))[0]

    def _pool_many(self, kept: list[list[int]]) -> np.ndarray:
        """A batch's vectors in one sparse product (token counts per text @ table), not a NumPy
        gather per text: the serving hot path scores micro-batches of prompts."""
        from scipy.sparse import csr_matrix  # heavy to import (0.3 s): only batches of five or more need it

        out = np.zeros((len(kept), self.dim), dtype=np.float32)
        counts = np.fromiter(map(len, kept), dtype=np.int64, count=len(kept))
        flat = np.fromiter(itertools.chain.from_iterable(kept), dtype=np.int64, count=int(counts.sum()))
        real = ~self._is_special[flat]
        row = np.repeat(np.arange(len(kept)), counts)[real]
        flat = flat[real]
        n_real = np.bincount(row, minlength=len(kept))
        has = np.flatnonzero(n_real)
        if len(has):
            # CSR built directly (each row's tokens in text order; a repeated token is summed
            # twice, which is exact): no COO conversion on the per-request path
            indptr = np.concatenate([[0], np.cumsum(n_real)])
            tokens = csr_matrix(
                (np.ones(len(flat), dtype=np.float32), flat, indptr), shape=(len(kept), self._dense.shape[0])
            )
            v = np.asarray(tokens @ self._dense)[has] / n_real[has, None].astype(np.float32)
            out[has] = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)
        return out


#: batches up to this size are pooled text by text (see ``StaticEncoder._pool``)
_GATHER_MAX = 4


def distill_static_table(path: Path, batch_size: int = 512) -> np.ndarray:
    """Run every vocabulary token through the encoder alone ([CLS] tok [SEP]); keep its pooled vector."""
    ort = require("onnxruntime", "train", f"distilling a static encoder from {path}")

    tokenizer = Tokenizer(path, 8)
    target = cache_dir() / "onnx" / f"{path.name}-{encoder_fingerprint(path, 8)}-static-src.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        export_onnx(path, target, tokenizer)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(target), so, providers=["CPUExecutionProvider"])
    vocab = tokenizer.tok.get_vocab_size()
    cls_id = tokenizer.tok.token_to_id("[CLS]")
    sep_id = tokenizer.tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise EncoderError(f"static distillation needs a BERT-style tokenizer with [CLS]/[SEP] ({path})")
    table = np.zeros((vocab, int(sess.get_outputs()[0].shape[-1] or 384)), dtype=np.float32)
    starts = range(0, vocab, batch_size)
    for start in progress_iter(starts, len(starts), "distilling static encoder (once)", "batch"):
        ids = np.arange(start, min(vocab, start + batch_size), dtype=np.int64)
        batch = np.stack([np.full_like(ids, cls_id), ids, np.full_like(ids, sep_id)], axis=1)
        table[ids] = sess.run(None, {"input_ids": batch, "attention_mask": np.ones_like(batch)})[0]
    return table
