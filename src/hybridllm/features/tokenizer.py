"""The fast tokenizer of an encoder directory (tokenizer.json through the Rust tokenizers package),
with truncation and untruncated token counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Tokenizer:
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
