"""The Python API of a trained router: load an artifact, score prompts, route one prompt with a knob."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import ArtifactError, load_config, load_tensors
from .calibrate import CalibrationError, resolve_knob
from .encoder import EmbeddingCache, Encoder, embed_texts, make_encoder
from .head import HeadWeights, embedding_width
from .policy import Fleet, choose
from .policy import resolve as resolve_fleet_knob
from .routing_text import routing_text


@dataclass(frozen=True)
class Decision:
    """Which model answers and why: the score, the threshold it was compared with, and the knob."""

    model: str
    use_small: bool  # a model other than the reference (the large / best one) answers
    score: float  # the chosen model's score (the best candidate's when the reference answers)
    threshold: float
    knob: str
    scores: dict[str, float] | None = None  # every scored model's score (a router over N models)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``head_embed`` reads the prompt's first words alone: text appended to a prompt cannot move it
HEAD_WORDS = 24


def extra_features(
    encoder: Encoder, texts: Sequence[str], names: Sequence[str], lengths: np.ndarray | None = None
) -> np.ndarray:
    """Query features beside the embedding. ``log_tokens``: the encoder's token count before
    truncation (log-scaled); long prompts are harder for small models, and mean pooling hides length.
    ``head_embed``: the embedding of the prompt's first ``HEAD_WORDS`` words alone, which a suffix
    cannot move (a router that weighs it resists appended text). ``lengths``: the token counts when
    the encoder already produced them with the vectors."""
    cols = []
    for name in names:
        if name == "log_tokens":
            if lengths is None:
                lengths = _token_lengths(encoder, texts)
            cols.append(np.log1p(np.asarray(lengths, dtype=np.float32))[:, None])
        elif name == "head_embed":
            heads = [" ".join(t.split()[:HEAD_WORDS]) for t in texts]
            cols.append(np.asarray(encoder.encode(heads), dtype=np.float32))
        else:
            raise ValueError(f"unknown extra feature {name!r}")
    if not cols:
        return np.zeros((len(texts), 0), dtype=np.float32)
    return np.concatenate(cols, axis=1).astype(np.float32)


def _token_lengths(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    if hasattr(encoder, "token_lengths"):
        return encoder.token_lengths(texts)
    return np.array([len(t.split()) for t in texts], dtype=np.float32)


def featurize(
    encoder: Encoder,
    texts: Sequence[str],
    extra: Sequence[str] = (),
    cache: EmbeddingCache | None = None,
    show_progress: bool = False,
    batch_size: int = 64,
) -> np.ndarray:
    if not extra:
        return embed_texts(encoder, texts, cache=cache, show_progress=show_progress, batch_size=batch_size)
    lengths = None
    if cache is None and "log_tokens" in extra and hasattr(encoder, "encode_with_lengths"):
        emb, lengths = encoder.encode_with_lengths(texts, batch_size)  # one tokenizer pass (serving)
    else:
        emb = embed_texts(encoder, texts, cache=cache, show_progress=show_progress, batch_size=batch_size)
    return np.concatenate([emb, extra_features(encoder, texts, extra, lengths)], axis=1)


class Router:
    """A loaded router artifact. Thread-safe for scoring (the encoder serialises its own runs)."""

    def __init__(self, directory: str | Path, encoder: Encoder | None = None, backend: str = "auto") -> None:
        self.directory = Path(directory)
        self._setup(load_config(self.directory), load_tensors(self.directory), encoder, backend)

    @classmethod
    def from_fitted(cls, fitted: Any, encoder: Encoder | None = None, backend: str = "auto") -> Router:
        """A router straight from a fitted model in memory (``fit_router`` / ``fit_fleet``), no files:
        ``crossval`` scores each fold this way. A fine-tuned encoder is read from its work directory."""
        self = cls.__new__(cls)
        self._fitted = fitted  # keeps a fine-tuned encoder's work directory for as long as this router
        self.directory = Path(getattr(fitted, "work_dir", None) or ".")
        self._setup(fitted.config, fitted.tensors(), encoder, backend)
        return self

    def _setup(
        self, config: dict[str, Any], tensors: dict[str, np.ndarray], encoder: Encoder | None, backend: str
    ) -> None:
        self.config = config
        # the models of a router over N models (cost order, reference); None for a pair. Read once
        # here: threshold() and decide() run on every request
        self.fleet: Fleet | None = Fleet.from_dict(config["fleet"]) if config.get("kind") == "fleet" else None
        self.head = HeadWeights.from_tensors(tensors)
        enc_cfg = self.config["encoder"]
        if encoder is None:
            spec = enc_cfg.get("spec")
            if enc_cfg.get("bundled"):
                spec = str(self.directory / "encoder")
            encoder = make_encoder(spec, max_length=int(enc_cfg.get("max_length", 256)), backend=backend)
        self.encoder = encoder
        self.extra: list[str] = list(self.config.get("head", {}).get("extra", []))
        # a chat is routed on its last user turn (earlier turns cannot hide or steer the question);
        # `serve --route-on all` reads every user turn, the last one first
        self.turns: str = "last"
        self.harden = True  # collapse repeated words and punctuation runs (routing_text)
        # the head must fit what the encoder produces: refused here, not on the first request
        width = featurize(self.encoder, ["dimension check"], self.extra).shape[1]
        if width != self.head.mu.shape[0]:
            raise ArtifactError(
                f"{self.directory / 'head.safetensors'}: the head takes {self.head.mu.shape[0]} inputs but the "
                f"encoder gives {width} (encoder {enc_cfg.get('spec')!r} + {len(self.extra)} extra features)"
            )
        mem = self.head.knn_mu
        if mem is not None and len(mem) != embedding_width(width, self.extra):
            raise ArtifactError(
                f"{self.directory / 'head.safetensors'}: the memory member compares {len(mem)}-d prompt embeddings "
                f"but the encoder's are {embedding_width(width, self.extra)}-d"
            )

    @property
    def models(self) -> list[str]:
        fl = self.fleet
        return list(fl.models) if fl else [self.small, self.large]

    @property
    def small(self) -> str:
        return self.config["small"]

    @property
    def large(self) -> str:
        return self.config["large"]

    def score(
        self, prompts: Sequence[str | list[dict[str, Any]]], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """p(x) per prompt: the predicted chance that the small model's answer is good enough; for a
        router over N models, [n, K]: one column per model cheaper than the reference (cost order)."""
        texts = [routing_text(p, self.turns, self.harden) for p in prompts]
        feats = featurize(self.encoder, texts, self.extra, batch_size=batch_size, show_progress=show_progress)
        p = self.head.predict(feats)
        return p.reshape(len(texts), -1) if self.config.get("kind") == "fleet" else p

    def threshold(
        self,
        max_quality_drop: float | None = None,
        cost_advantage: float | None = None,
        threshold: float | None = None,
        budget: float | None = None,
    ) -> tuple[float, str]:
        """One knob → (threshold, description). ``cost_advantage`` (share to the small model, %) is
        a two-model knob; ``budget`` (average cost, % of always using the best model) needs costs,
        so it is a knob of routers over N models."""
        cal, default = self.config["calibration"], self.config["default_operating_point"]
        if self.fleet is not None:
            if cost_advantage is not None:
                raise CalibrationError(
                    "a router over several models takes budget (% of always-best), not cost_advantage"
                )
            return resolve_fleet_knob(cal, default, max_quality_drop, budget, threshold)
        if budget is not None:
            raise CalibrationError(
                "budget needs model costs: train over --models with costs (two-model: cost_advantage)"
            )
        return resolve_knob(
            cal, default, max_quality_drop=max_quality_drop, cost_advantage=cost_advantage, threshold=threshold
        )

    def decide(self, score: float | np.ndarray, threshold: float, knob: str) -> Decision:
        fl = self.fleet
        if fl is None:
            use_small = bool(float(score) >= threshold)
            return Decision(self.small if use_small else self.large, use_small, float(score), float(threshold), knob)
        row = np.asarray(score, dtype=np.float64).reshape(-1)
        cands = self.config["candidates"]
        pick = int(choose(row[None, :], fl, threshold)[0])
        chosen = float(row[pick]) if pick < len(cands) else float(row.max())
        return Decision(
            fl.models[pick],
            pick != fl.ref,
            chosen,
            float(threshold),
            knob,
            {m: float(v) for m, v in zip(cands, row, strict=True)},
        )

    def route(
        self,
        prompt: str | list[dict[str, Any]],
        max_quality_drop: float | None = None,
        cost_advantage: float | None = None,
        threshold: float | None = None,
        budget: float | None = None,
    ) -> Decision:
        thr, knob = self.threshold(max_quality_drop, cost_advantage, threshold, budget)
        return self.decide(self.score([prompt])[0], thr, knob)

    def route_batch(
        self,
        prompts: Sequence[str | list[dict[str, Any]]],
        max_quality_drop: float | None = None,
        cost_advantage: float | None = None,
        threshold: float | None = None,
        budget: float | None = None,
    ) -> list[Decision]:
        thr, knob = self.threshold(max_quality_drop, cost_advantage, threshold, budget)
        return [self.decide(s, thr, knob) for s in self.score(prompts)]


def load_router(directory: str | Path, backend: str = "auto") -> Router:
    return Router(directory, backend=backend)


SHIPPED_ROUTER = Path(__file__).resolve().parent / "routers" / "default"


def default_router_dir() -> Path:
    """The router used when none is named: ``$HYBRIDLLM_ROUTER`` if set, else the one shipped in
    the package for the default local pair (``qwen2.5-0.5b`` → ``qwen2.5-1.5b``)."""
    import os

    env = os.environ.get("HYBRIDLLM_ROUTER")
    path = Path(env).expanduser() if env else SHIPPED_ROUTER
    if not (path / "config.json").is_file():
        where = "HYBRIDLLM_ROUTER" if env else "this install"
        raise FileNotFoundError(f"no router at {path} ({where}); pass --router DIR (train one with `hybridllm train`)")
    return path
