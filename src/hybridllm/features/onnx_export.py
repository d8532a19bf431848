"""A transformer encoder as a pooled torch module and its one-time ONNX export (needs the train extra:
torch and transformers)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from hybridllm.errors import require

from .base import EncoderError
from .tokenizer import Tokenizer


def torch_pooled_module(model: Any) -> Any:
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
    require("torch", "train", f"loading the encoder weights of {path}")
    from transformers import AutoModel, logging  # the train extra, checked above

    logging.set_verbosity_error()
    logging.disable_progress_bar()  # a weights bar per load is noise in serve logs and CI output
    try:
        model = AutoModel.from_pretrained(str(path), attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot load encoder weights from {path}: {exc}".splitlines()[0]) from None
    return model.eval()


def export_onnx(path: Path, target: Path, tokenizer: Tokenizer) -> None:
    import torch

    module = torch_pooled_module(load_torch_encoder(path)).eval()
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
