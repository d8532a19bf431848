"""Router artifacts on disk (DESIGN.md section 6): ``config.json`` + ``head.safetensors``
(+ ``encoder/`` with fine-tuned weights in finetune mode). Never pickle: an artifact is data, and
loading one from a colleague or a bucket must not be able to run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
CONFIG = "config.json"
HEAD = "head.safetensors"


class ArtifactError(ValueError):
    pass


def save_artifact(directory: str | Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"format_version": FORMAT_VERSION, **config}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(d / HEAD))
    tmp = d / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
    tmp.replace(d / CONFIG)
    return d


def load_config(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    f = d / CONFIG
    if not f.exists():
        raise ArtifactError(f"{d}: not a router artifact ({CONFIG} not found)")
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{f}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{f}: format_version {version!r} is not supported by this hybridllm "
            f"(supports {FORMAT_VERSION}); upgrade hybridllm or retrain the router"
        )
    for key in ("small", "large", "encoder", "calibration", "default_operating_point"):
        if key not in cfg:
            raise ArtifactError(f"{f}: field {key!r} missing")
    return cfg


def load_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    f = Path(directory) / HEAD
    if not f.exists():
        raise ArtifactError(f"{Path(directory)}: {HEAD} not found")
    return load_file(str(f))


def save_config(directory: str | Path, cfg: dict[str, Any]) -> None:
    d = Path(directory)
    tmp = d / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.replace(d / CONFIG)
