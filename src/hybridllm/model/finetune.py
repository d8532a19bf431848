"""``--mode finetune``: the paper's setup, the whole encoder trained with the head (torch).

Meant for a GPU but runs on CPU (about 11 examples/s at 128 tokens on 2 cores). The fine-tuned
encoder is saved inside the artifact (``encoder/``, safetensors) and served through the same
mean-pool + head path as head mode, so serving code does not know which mode made a router.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.errors import require
from hybridllm.evaluate.metrics import apgr, quality_curve
from hybridllm.features.base import resolve_encoder_path
from hybridllm.features.onnx_export import load_torch_encoder, torch_pooled_module
from hybridllm.progress import progress_iter

from .head import HeadWeights

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "spm.model",
    "sentencepiece.bpe.model",
    "merges.txt",
    "vocab.json",
)


def finetune(
    encoder_spec: str | None,
    train_texts: Sequence[str],
    y: np.ndarray,
    val_texts: Sequence[str],
    qs_val: np.ndarray,
    ql_val: np.ndarray,
    out_dir: Path,
    max_length: int = 256,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 3e-5,
    seed: int = 0,
    hidden: int = 256,
    progress: Callable[[str], None] | None = None,
) -> tuple[HeadWeights, np.ndarray, dict]:
    """Fine-tune the encoder with a one-member head on the labels ``y``; keep the epoch with the
    best validation APGR; save the encoder to ``out_dir``. Returns (head, validation scores, info)."""
    torch = require("torch", "train", "fine-tuning an encoder")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tuner = _FineTuner(torch, encoder_spec, max_length, hidden)
    steps = epochs * math.ceil(len(train_texts) / batch_size)
    tuner.optimiser(lr, steps)
    yt = torch.tensor(np.asarray(y, dtype=np.float32))
    best, best_epoch, history = -math.inf, -1, []
    best_path = out_dir.with_name(out_dir.name + ".best.pt")
    for epoch in range(epochs):
        tuner.train_epoch(train_texts, yt, batch_size, gen, f"finetune epoch {epoch + 1}/{epochs}")
        pv = tuner.predict(val_texts)
        a = apgr(quality_curve(pv, qs_val, ql_val), float(qs_val.mean()), float(ql_val.mean()))
        score = -1.0 if a is None else a
        history.append({"epoch": epoch, "val_apgr": score})
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs}: validation APGR {score:.4f}")
        if score > best:
            best, best_epoch = score, epoch
            torch.save({"enc": tuner.enc.state_dict(), "head": tuner.head.state_dict()}, best_path)
    state = torch.load(best_path, weights_only=True)
    best_path.unlink()
    tuner.enc.load_state_dict(state["enc"])
    tuner.head.load_state_dict(state["head"])
    weights = tuner.save(out_dir)
    return weights, tuner.predict(val_texts), {"best_epoch": best_epoch, "history": history}


class _FineTuner:
    """The encoder, pooled, under a small head, with the tokenizer that feeds it."""

    def __init__(self, torch: Any, encoder_spec: str | None, max_length: int, hidden: int) -> None:
        from tokenizers import Tokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        _, self.path = resolve_encoder_path(encoder_spec)
        base = load_torch_encoder(self.path)
        self.enc = torch_pooled_module(base).to(self.device)
        self.dim = int(base.config.hidden_size)
        self.head = torch.nn.Sequential(
            torch.nn.Dropout(0.1),
            torch.nn.Linear(self.dim, hidden),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Linear(hidden, 1),
        ).to(self.device)
        self.tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tok.enable_truncation(max_length=max_length)
        self.tok.no_padding()
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def optimiser(self, lr: float, steps: int) -> None:
        torch = self.torch
        params = [{"params": self.enc.parameters(), "lr": lr}, {"params": self.head.parameters(), "lr": lr * 30}]
        self.opt = torch.optim.AdamW(params, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=[lr, lr * 30], total_steps=max(steps, 1), pct_start=0.1
        )

    def batch(self, texts: Sequence[str]) -> tuple[Any, Any]:
        torch = self.torch
        encs = self.tok.encode_batch([t or " " for t in texts])
        w = max(len(e.ids) for e in encs)
        ids = torch.zeros((len(encs), w), dtype=torch.long)
        mask = torch.zeros((len(encs), w), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        return ids.to(self.device), mask.to(self.device)

    def train_epoch(self, texts: Sequence[str], yt: Any, batch_size: int, gen: Any, desc: str) -> None:
        torch = self.torch
        self.enc.train()
        self.head.train()
        perm = torch.randperm(len(texts), generator=gen).tolist()
        starts = range(0, len(perm), batch_size)
        for i in progress_iter(starts, len(starts), desc, "batch"):
            idx = perm[i : i + batch_size]
            ids, mask = self.batch([texts[j] for j in idx])
            loss = self.loss_fn(self.head(self.enc(ids, mask)).squeeze(-1), yt[idx].to(self.device))
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(self.enc.parameters()) + list(self.head.parameters()), 1.0)
            self.opt.step()
            self.sched.step()

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        self.enc.eval()
        self.head.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                ids, mask = self.batch(texts[i : i + 64])
                out.append(torch.sigmoid(self.head(self.enc(ids, mask)).squeeze(-1)).cpu().numpy())
        return np.concatenate(out)

    def save(self, out_dir: Path) -> HeadWeights:
        """The encoder and its tokenizer files into ``out_dir``; the head as :class:`HeadWeights`
        (everything moved to the CPU, where serving runs)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.enc.m.to("cpu").save_pretrained(str(out_dir), safe_serialization=True)
        for name in _TOKENIZER_FILES:
            if (self.path / name).exists():
                shutil.copy(self.path / name, out_dir / name)
        self.head.to("cpu")
        sd = self.head.state_dict()
        self.enc.to("cpu")
        self.device = "cpu"
        return HeadWeights(
            w1=sd["1.weight"].numpy().T[None],
            b1=sd["1.bias"].numpy()[None],
            w2=sd["3.weight"].numpy()[0][None],
            b2=sd["3.bias"].numpy().astype(np.float32),
            mu=np.zeros(self.dim, np.float32),
            sd=np.ones(self.dim, np.float32),
        )
