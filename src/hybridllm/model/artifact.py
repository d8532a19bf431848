"""Router artifacts on disk (docs/method.md, The artifact): ``config.json`` + ``head.safetensors``
(+ ``encoder/`` with fine-tuned weights in finetune mode). Never pickle: an artifact is data, and
loading one from a colleague or a bucket must not be able to run code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.errors import HybridLLMError
from hybridllm.fsutil import atomic_write
from hybridllm.routing.knob import KNOBS
from hybridllm.routing.policy import Fleet
from hybridllm.routing.value import check_policy

#: 2: a head with a memory member (tensors ``knn_*``), which a reader of version 1 would drop.
#: 3: one kind for any number of models (a pair is a fleet of two): ``fleet`` and ``candidates``
#: always, calibration rows with cost, cost advantage, quality drop and shares. Versions 1 and 2
#: (two-model routers, and fleets) are read by :func:`upgrade_config` into the same form.
#: 4: ``policy`` (the rule, the scores it reads with their per-model maps, the λ scale; chosen on
#: validation) and the memory's ``knn_uniform``, which a reader of version 3 would ignore or refuse.
#: A version 1-3 artifact routes as it always did (the threshold rule on raw scores).
FORMAT_VERSION = 4
SUPPORTED_VERSIONS = (1, 2, 3, 4)
CONFIG = "config.json"
HEAD = "head.safetensors"


class ArtifactError(HybridLLMError, ValueError):
    """A router artifact that cannot be used: the file and the field."""


class RouterNotFoundError(ArtifactError, FileNotFoundError):
    """No router where one was named (a directory, ``$HYBRIDLLM_ROUTER``, the install)."""


def save_artifact(directory: str | Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"format_version": needed_version(config, tensors), **config}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(d / HEAD))
    atomic_write(d / CONFIG, json.dumps(cfg, indent=2, sort_keys=False) + "\n")
    return d


def needed_version(config: dict[str, Any], tensors: dict[str, np.ndarray]) -> int:
    """The oldest format that routes this artifact as written: 3 (which older readers load) unless
    it routes by another rule or scores than the threshold on raw scores, or weighs its memory
    uniformly, which a reader of version 3 would ignore."""
    pol = config.get("policy") or {}
    new = (pol.get("rule", "threshold"), pol.get("scores", "raw")) != ("threshold", "raw") or "knn_uniform" in tensors
    return FORMAT_VERSION if new else 3


def load_config(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    f = d / CONFIG
    if not f.exists():
        raise ArtifactError(f"{d}: not a router artifact ({CONFIG} not found)")
    try:
        cfg = json.loads(f.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{f}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ArtifactError(f"{f}: not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{f}: expected a JSON object, got {type(cfg).__name__}")
    version = cfg.get("format_version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ArtifactError(
            f"{f}: format_version {version!r} is not supported by this hybridllm "
            f"(supports {', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade hybridllm or retrain the router"
        )
    for key in ("small", "large", "encoder", "calibration", "default_operating_point"):
        if key not in cfg:
            raise ArtifactError(f"{f}: field {key!r} missing")
    if version < 3:
        cfg = upgrade_config(cfg, f)
    _check_config(cfg, f)
    return cfg


def upgrade_config(cfg: dict[str, Any], f: Path) -> dict[str, Any]:
    """A version 1 or 2 config in the form of version 3, in memory (the file is left as it is).
    A two-model router becomes a fleet of its two models without costs; its calibration rows gain
    each model's share and the cost they imply; a fleet's rows gain the cost advantage."""
    cfg = {**cfg, "format_version": 3}  # the form of version 3: no policy, the threshold on raw scores
    cal = cfg.get("calibration")
    if not (isinstance(cal, list) and all(isinstance(r, dict) for r in cal)):
        cal = None  # refused with the field by _check_config
    if cfg.pop("kind", None) == "fleet":
        fl = cfg.get("fleet")
        if not (isinstance(fl, dict) and isinstance(fl.get("models"), list) and fl.get("reference") in fl["models"]):
            return cfg  # refused with the field by _check_fleet
        ref = fl["models"].index(fl["reference"])
        if cal is not None:
            cfg["calibration"] = [
                {**r, "cost_advantage": round(100.0 - float(r["shares"][ref]), 8)} if _shares_ok(r, ref) else r
                for r in cal
            ]
        return cfg
    small, large = cfg["small"], cfg["large"]
    if not (isinstance(small, str) and isinstance(large, str)) or small == large:
        return cfg  # refused with the field by _check_config
    pair = Fleet.pair(small, large)
    cfg["fleet"] = pair.to_dict()
    cfg["candidates"] = [small]
    if not isinstance(cfg.get("t_star"), dict):
        cfg["t_star"] = {small: cfg.get("t_star")}
    if cal is not None:
        (c_small, c_large), rows = pair.costs, []
        for r in cal:
            ca = r.get("cost_advantage")
            if _finite(ca):  # the cost this share implies with the pair's costs, as the sweep computes it
                cost = (ca * c_small + (100.0 - ca) * c_large) / c_large
                r = {**r, "cost": round(cost, 6), "shares": [ca, 100.0 - ca]}
            rows.append(r)
        cfg["calibration"] = rows
    return cfg


def _shares_ok(r: dict[str, Any], ref: int) -> bool:
    shares = r.get("shares")
    return isinstance(shares, list) and len(shares) > ref and _finite(shares[ref])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_fleet(cfg: dict[str, Any], f: Path) -> None:
    fl = cfg.get("fleet")
    ok = (
        isinstance(fl, dict)
        and isinstance(fl.get("models"), list)
        and isinstance(fl.get("costs"), list)
        and len(fl["models"]) == len(fl["costs"]) >= 2
        and all(isinstance(m, str) and m for m in fl["models"])
        and all(_finite(c) and c > 0 for c in fl["costs"])
        and fl.get("reference") in fl["models"]
    )
    if not ok or not isinstance(fl, dict):
        raise ArtifactError(f"{f}: field 'fleet': expected models, positive costs and a reference among the models")
    ref = fl["models"].index(fl["reference"])
    if cfg.get("candidates") != fl["models"][:ref] or ref == 0:
        raise ArtifactError(f"{f}: field 'candidates': expected the models cheaper than the reference")
    if not isinstance(fl.get("costs_given", True), bool):
        raise ArtifactError(f"{f}: field 'fleet.costs_given': expected true or false")


def _check_config(cfg: dict[str, Any], f: Path) -> None:
    """Everything routing reads from config.json, checked once at load: a bad artifact is refused
    with the file and the field, instead of failing on the first request."""
    for key in ("small", "large"):
        if not isinstance(cfg[key], str) or not cfg[key]:
            raise ArtifactError(f"{f}: field {key!r}: expected a model name")
    if cfg["small"] == cfg["large"]:
        raise ArtifactError(f"{f}: fields 'small' and 'large' name the same model")
    enc = cfg["encoder"]
    if not isinstance(enc, dict) or not isinstance(enc.get("spec", ""), (str, type(None))):
        raise ArtifactError(f"{f}: field 'encoder': expected an object with a 'spec'")
    if not isinstance(enc.get("max_length", 256), int) or not 8 <= enc.get("max_length", 256) <= 8192:
        raise ArtifactError(f"{f}: field 'encoder.max_length': expected an integer in 8..8192")
    _check_fleet(cfg, f)
    cal = cfg["calibration"]
    if not isinstance(cal, list) or not cal:
        raise ArtifactError(f"{f}: field 'calibration': expected a non-empty list of points")
    prev: dict[str, Any] | None = None
    for i, pt in enumerate(cal):
        where = f"{f}: field 'calibration[{i}]'"
        if not isinstance(pt, dict):
            raise ArtifactError(f"{where}: expected an object")
        for k in ("threshold", "cost", "cost_advantage", "quality_drop"):
            if not _finite(pt.get(k)):
                raise ArtifactError(f"{where}.{k}: expected a finite number, got {pt.get(k)!r}")
        if not 0 <= pt["threshold"] <= KNOBS["threshold"] or not 0 <= pt["cost"] <= 100 + 1e-6:
            raise ArtifactError(f"{where}: threshold or cost out of range")
        if not 0 <= pt["cost_advantage"] <= 100 + 1e-6:
            raise ArtifactError(f"{where}: cost_advantage out of range")
        if prev is not None and (pt["cost"] - prev["cost"] > 1e-9 or pt["threshold"] > prev["threshold"]):
            raise ArtifactError(f"{where}: points not ordered by falling threshold and falling cost")
        prev = pt
    knobs = dict(KNOBS)
    if not cfg["fleet"].get("costs_given", True):
        del knobs["budget"]  # a budget is a share of spend: it needs the models' costs
    op = cfg["default_operating_point"]
    if not isinstance(op, dict) or op.get("kind") not in knobs:
        raise ArtifactError(f"{f}: field 'default_operating_point.kind': expected one of {', '.join(knobs)}")
    if not _finite(op.get("value")) or not 0 <= op["value"] <= knobs[op["kind"]]:
        raise ArtifactError(
            f"{f}: field 'default_operating_point.value': expected a number in 0..{knobs[op['kind']]:g}"
        )
    if "policy" in cfg:
        why = check_policy(cfg["policy"], cfg["candidates"])
        if why is not None:
            raise ArtifactError(f"{f}: field 'policy': {why}")
    if cfg.get("prompt_turns", "all") not in ("all", "last"):
        raise ArtifactError(f"{f}: field 'prompt_turns': expected 'all' or 'last'")
    head = cfg.get("head", {})
    if not isinstance(head, dict) or not isinstance(head.get("extra", []), list):
        raise ArtifactError(f"{f}: field 'head.extra': expected a list of feature names")
    for name in head.get("extra", []):
        if name not in ("log_tokens", "head_embed"):
            raise ArtifactError(f"{f}: field 'head.extra': unknown feature {name!r}")


# name → number of dimensions; E members, d inputs, h hidden
_HEAD_SHAPES = {"w1": 3, "b1": 2, "w2": 2, "b2": 1, "mu": 1, "sd": 1}
_LINEAR_SHAPES = {"lin_w": 1, "lin_b": 1, "lin_mu": 1, "lin_sd": 1, "mix": 1}
# the memory member (hybridllm.memory): N prompts' keys and labels, the subspace they live in
_KNN = ("knn_x", "knn_y", "knn_mu", "knn_proj", "knn_k", "knn_mix")


def load_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """The head's tensors, checked: known names, consistent shapes, finite values."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    f = Path(directory) / HEAD
    if not f.exists():
        raise ArtifactError(f"{Path(directory)}: {HEAD} not found")
    try:
        t = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{f}: not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    unknown = set(t) - set(_HEAD_SHAPES) - set(_LINEAR_SHAPES) - set(_KNN) - {"knn_uniform"}
    if unknown:
        raise ArtifactError(f"{f}: unknown tensors {', '.join(sorted(unknown))}")
    multi = "w2" in t and t["w2"].ndim == 3  # a head scoring K models: w2 [E, h, K]
    for name, ndim in _HEAD_SHAPES.items():
        if name not in t:
            raise ArtifactError(f"{f}: tensor {name!r} missing")
        ndim += int(multi and name in ("w2", "b2"))
        if t[name].ndim != ndim:
            raise ArtifactError(f"{f}: tensor {name!r}: expected {ndim} dimensions, got shape {tuple(t[name].shape)}")
    e, d, h = t["w1"].shape
    k = t["w2"].shape[2] if multi else None
    want = {"b1": (e, h), "w2": (e, h) + ((k,) if k else ()), "b2": (e,) + ((k,) if k else ()), "mu": (d,), "sd": (d,)}
    linear = [x for x in _LINEAR_SHAPES if x in t]
    if linear:
        if len(linear) != len(_LINEAR_SHAPES):
            raise ArtifactError(f"{f}: linear member incomplete (has {', '.join(linear)})")
        lin_w, lin_b = ((d, k), (k,)) if k else ((d,), (1,))
        want.update({"lin_w": lin_w, "lin_b": lin_b, "lin_mu": (d,), "lin_sd": (d,), "mix": (1,)})
    memory = [x for x in _KNN if x in t]
    if memory:
        if len(memory) != len(_KNN):
            raise ArtifactError(f"{f}: memory member incomplete (has {', '.join(memory)})")
        dim, r = t["knn_proj"].shape if t["knn_proj"].ndim == 2 else (0, 0)
        if not 0 < r <= dim <= d:
            raise ArtifactError(f"{f}: tensor 'knn_proj': expected shape (<= {d}, r), got {tuple(t['knn_proj'].shape)}")
        n = t["knn_x"].shape[0] if t["knn_x"].ndim else 0
        want.update(
            {"knn_x": (max(n, 1), r), "knn_y": (n, k) if k else (n,), "knn_mu": (dim,), "knn_k": (1,), "knn_mix": (1,)}
        )
    if "knn_uniform" in t:
        if not memory:
            raise ArtifactError(f"{f}: tensor 'knn_uniform' without a memory member")
        want["knn_uniform"] = (1,)
    for name, shape in want.items():
        if tuple(t[name].shape) != shape:
            raise ArtifactError(f"{f}: tensor {name!r}: expected shape {shape}, got {tuple(t[name].shape)}")
    for name, arr in t.items():
        if not np.all(np.isfinite(arr)):
            raise ArtifactError(f"{f}: tensor {name!r} holds NaN or infinite values")
    for name in ("sd", "lin_sd"):
        if name in t and np.any(t[name] == 0):
            raise ArtifactError(f"{f}: tensor {name!r} has zeros (division by zero)")
    for name in ("mix", "knn_mix"):
        if name in t and not 0 <= float(t[name][0]) <= 1:
            raise ArtifactError(f"{f}: tensor {name!r} must be within 0..1")
    if memory and not 1 <= float(t["knn_k"][0]) <= len(t["knn_x"]):
        raise ArtifactError(f"{f}: tensor 'knn_k' must be within 1..{len(t['knn_x'])}")
    return t


def save_config(directory: str | Path, cfg: dict[str, Any]) -> None:
    atomic_write(Path(directory) / CONFIG, json.dumps(cfg, indent=2) + "\n")
