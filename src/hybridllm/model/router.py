"""The Python API of a trained router: load an artifact, score prompts, route one prompt with a knob."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridllm.features.base import Encoder
from hybridllm.features.featurize import featurize, make_encoder
from hybridllm.features.text import routing_text
from hybridllm.routing.knob import resolve
from hybridllm.routing.policy import Fleet, choose
from hybridllm.routing.value import Policy

from .artifact import ArtifactError, RouterNotFoundError, load_config, load_tensors
from .head import HeadWeights, embedding_width


@dataclass(frozen=True)
class Decision:
    """Which model answers and why: the score, the threshold it was compared with, and the knob."""

    model: str
    use_small: bool  # a model other than the reference (the large / best one) answers
    score: float  # the chosen model's score (the best candidate's when the reference answers)
    threshold: float
    knob: str
    scores: dict[str, float] | None = None  # every scored model's score, when it scores more than one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Router:
    """A loaded router artifact. Thread-safe for scoring (the encoder serialises its own runs)."""

    _fitted: Any = None  # a router from memory keeps its fitted model (and a fine-tuned encoder's files)

    def __init__(self, directory: str | Path, encoder: Encoder | None = None, backend: str = "auto") -> None:
        self.directory = Path(directory)
        self._setup(load_config(self.directory), load_tensors(self.directory), encoder, backend)

    @classmethod
    def from_fitted(cls, fitted: Any, encoder: Encoder | None = None, backend: str = "auto") -> Router:
        """A router straight from a fitted model in memory (:func:`hybridllm.fit_router`), no files:
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
        # the models (cost order, reference), read once here: threshold() and decide() run on every
        # request. A two-model router is a fleet of two
        self.fleet: Fleet = Fleet.from_dict(config["fleet"])
        self.candidates: list[str] = list(config["candidates"])
        # how the head's scores become the scores the threshold reads (formats 1-3: as they are)
        self.policy = Policy.from_dict(config.get("policy"))
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
        return list(self.fleet.models)

    @property
    def small(self) -> str:
        return self.config["small"]

    @property
    def large(self) -> str:
        return self.config["large"]

    def score(
        self, prompts: Sequence[str | list[dict[str, Any]]], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """The routing scores per prompt, [n, K] for the models cheaper than the reference in cost
        order ([n] when the router scores one model): what the threshold is compared with. Under the
        threshold rule on raw scores (every artifact of formats 1-3) the head's predicted chance
        that each model answers well enough; under the quality-minus-cost rule the score of m is
        1 / (1 + λ*_m / scale), λ*_m the cost weight from which m is argmax of predicted quality
        minus λ·cost (:mod:`hybridllm.routing.value`)."""
        return self.policy.decision_scores(self.head_scores(prompts, batch_size, show_progress), self.fleet)

    def head_scores(
        self, prompts: Sequence[str | list[dict[str, Any]]], batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """The head's own outputs, before the policy reads them: each cheaper model's predicted
        chance of answering well enough (its label's mean)."""
        texts = [routing_text(p, self.turns, self.harden) for p in prompts]
        feats = featurize(self.encoder, texts, self.extra, batch_size=batch_size, show_progress=show_progress)
        return self.head.predict(feats)

    def expected_gaps(self, prompts: Sequence[str | list[dict[str, Any]]]) -> np.ndarray | None:
        """Each cheaper model's predicted quality gap to the reference, [n, K], comparable across
        models (calibrated on validation); None when the router's policy does not predict gaps."""
        if self.policy.rule != "value":
            return None
        return self.policy.gaps(self.head_scores(prompts))

    def threshold(
        self,
        max_quality_drop: float | None = None,
        cost_advantage: float | None = None,
        threshold: float | None = None,
        budget: float | None = None,
    ) -> tuple[float, str]:
        """One knob → (threshold, description) (:func:`hybridllm.routing.knob.resolve`):
        ``max_quality_drop`` (%), ``cost_advantage`` (% of queries away from the reference model),
        ``budget`` (average cost, % of always using the reference; needs the models' costs) or a raw
        ``threshold``; none = the artifact's default point."""
        cal, default = self.config["calibration"], self.config["default_operating_point"]
        return resolve(cal, default, max_quality_drop, cost_advantage, budget, threshold, self.fleet.costs_given)

    def decide(self, score: float | np.ndarray, threshold: float, knob: str) -> Decision:
        """The policy's choice for one prompt's scores: the cheapest model whose score reaches the
        threshold, else the reference (:func:`hybridllm.routing.policy.choose`)."""
        fl = self.fleet
        row = np.asarray(score, dtype=np.float64).reshape(-1)
        pick = int(choose(row[None, :], fl, threshold)[0])
        chosen = float(row[pick]) if pick < len(row) else float(row.max())
        scores = {m: float(v) for m, v in zip(self.candidates, row, strict=True)} if len(row) > 1 else None
        return Decision(fl.models[pick], pick != fl.ref, chosen, float(threshold), knob, scores)

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


SHIPPED_ROUTER = Path(__file__).resolve().parents[1] / "routers" / "default"


def default_router_dir() -> Path:
    """The router used when none is named: ``$HYBRIDLLM_ROUTER`` if set, else the one shipped in
    the package for the default local pair (``qwen2.5-0.5b`` → ``qwen2.5-1.5b``)."""
    import os

    env = os.environ.get("HYBRIDLLM_ROUTER")
    path = Path(env).expanduser() if env else SHIPPED_ROUTER
    if not (path / "config.json").is_file():
        where = "HYBRIDLLM_ROUTER" if env else "this install"
        raise RouterNotFoundError(
            f"no router at {path} ({where}); pass --router DIR (train one with `hybridllm train`)"
        )
    return path
