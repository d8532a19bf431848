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

import numpy as np

from hybridllm.evaluate.metrics import apgr, quality_curve
from hybridllm.features.base import resolve_encoder_path
from hybridllm.features.onnx_export import load_torch_encoder
from hybridllm.features.onnx_export import torch_pooled_module as torch_pooled_module
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
    import torch
    from tokenizers import Tokenizer


    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, path = resolve_encoder_path(encoder_spec)
    base = load_torch_encoder(path)
    enc = torch_pooled_module(base).to(device)
    dim = int(base.config.hidden_size)
    head = torch.nn.Sequential(
        torch.nn.Dropout(0.1),
        torch.nn.Linear(dim, hidden),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(hidden, 1),
    ).to(device)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()

    def batch(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encs = tok.encode_batch([t or " " for t in texts])
        w = max(len(e.ids) for e in encs)
        ids = torch.zeros((len(encs), w), dtype=torch.long)
        mask = torch.zeros((len(encs), w), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        return ids.to(device), mask.to(device)

    params = [{"params": enc.parameters(), "lr": lr}, {"params": head.parameters(), "lr": lr * 30}]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    steps = epochs * math.ceil(len(train_texts) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr * 30], total_steps=max(steps, 1), pct_start=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    yt = torch.tensor(np.asarray(y, dtype=np.float32))

    def predict(texts: Sequence[str]) -> np.ndarray:
        enc.eval()
        head.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                ids, mask = batch(texts[i : i + 64])
                out.append(torch.sigmoid(head(enc(ids, mask)).squeeze(-1)).cpu().numpy())
        return np.concatenate(out)

    best, best_epoch, history = -math.inf, -1, []
    best_path = out_dir.with_name(out_dir.name + ".best.pt")
    for epoch in range(epochs):
        enc.train()
        head.train()
        perm = torch.randperm(len(train_texts), generator=gen).tolist()
        starts = range(0, len(perm), batch_size)
        for i in progress_iter(starts, len(starts), f"finetune epoch {epoch + 1}/{epochs}", "batch"):
            idx = perm[i : i + batch_size]
            ids, mask = batch([train_texts[j] for j in idx])
            loss = loss_fn(head(enc(ids, mask)).squeeze(-1), yt[idx].to(device))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(enc.parameters()) + list(head.parameters()), 1.0)
            opt.step()
            sched.step()
        pv = predict(val_texts)
        a = apgr(quality_curve(pv, qs_val, ql_val), float(qs_val.mean()), float(ql_val.mean()))
        score = -1.0 if a is None else a
        history.append({"epoch": epoch, "val_apgr": score})
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs}: validation APGR {score:.4f}")
        if score > best:
            best, best_epoch = score, epoch
            torch.save({"enc": enc.state_dict(), "head": head.state_dict()}, best_path)
    state = torch.load(best_path, weights_only=True)
    best_path.unlink()
    enc.load_state_dict(state["enc"])
    head.load_state_dict(state["head"])
    out_dir.mkdir(parents=True, exist_ok=True)
    enc.m.to("cpu").save_pretrained(str(out_dir), safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (path / name).exists():
            shutil.copy(path / name, out_dir / name)
    head.to("cpu")
    sd = head.state_dict()
    weights = HeadWeights(
        w1=sd["1.weight"].numpy().T[None],
        b1=sd["1.bias"].numpy()[None],
        w2=sd["3.weight"].numpy()[0][None],
        b2=sd["3.bias"].numpy().astype(np.float32),
        mu=np.zeros(dim, np.float32),
        sd=np.ones(dim, np.float32),
    )
    enc.to("cpu")
    device = "cpu"
    return weights, predict(val_texts), {"best_epoch": best_epoch, "history": history}
