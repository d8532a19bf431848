"""The models registry: one TOML file (``models.toml``) names each model once, with its cost and,
for ``collect`` and ``serve``, its upstream SPEC and its own API-key variable.

```toml
[models."qwen2.5-0.5b"]
spec = "qwen2.5-0.5b"                         # a local model: no key
cost = 0.5                                     # relative cost (any unit)

[models."gpt-4o"]
spec = "gpt-4o@https://api.openai.com/v1"
price_in = 2.50                                # per 1M input tokens
price_out = 10.00                              # per 1M output tokens
price_cached_in = 1.25                         # per 1M cached prompt tokens (default: price_in)
api_key_env = "OPENAI_API_KEY"                 # sent to this model's endpoint only
max_output_tokens = 16384                      # its longest answer (budget reservations; default 4096)
api = "chat"                                   # its protocol: "chat" (default), "messages", "responses"
context_window = 128000                        # prompt + answer, in tokens (absent: no limit known)
supports = ["tools", "vision", "json_schema", "json_object"]  # absent: everything (CAPABILITIES)
```

``context_window`` and ``supports`` say which requests a model can serve
(:mod:`hybridllm.routing.capabilities`, docs/sessions.md): a request needing a capability a model's
``supports`` does not list, or whose estimated prompt plus answer passes its ``context_window`` (or
whose ``max_tokens`` passes its ``max_output_tokens``), is never routed there. An absent key is no
limit: a models file without them routes as before. ``supports = []`` is a text-only model.

A top-level ``judge = "NAME"`` names the model of the file that ``serve --shadow-rate`` asks to score
shadow pairs (its SPEC and key variable); ``--judge NAME`` does the same for any model of the file.

A model's relative cost is ``cost`` when given, else its blended token price
``(3 * price_in + price_out) / 4`` (three input tokens per output token, a common chat mix).
A request's cost in money is :func:`hybridllm.routing.money.cost` of its usage at these prices.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from hybridllm.errors import HybridLLMError


class RegistryError(HybridLLMError, ValueError):
    """The models file is malformed: one line naming the file, the model and the key."""


#: what a model's ``supports`` may list: tools (function calling: ``tools``/``functions`` or tool
#: calls in the history), vision (image content parts), audio (``input_audio`` parts), files (``file``
#: parts), json_schema (``response_format`` of type ``json_schema``), json_object (JSON mode)
Capability = Literal["tools", "vision", "audio", "files", "json_schema", "json_object"]
CAPABILITIES: tuple[str, ...] = get_args(Capability)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: str | None = None
    cost: float | None = Field(None, gt=0, allow_inf_nan=False)
    price_in: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_out: float | None = Field(None, ge=0, allow_inf_nan=False)
    # per 1M prompt tokens the upstream reports as read from its cache (usage.prompt_tokens_details.cached_tokens)
    price_cached_in: float | None = Field(None, ge=0, allow_inf_nan=False)
    api_key_env: str | None = None
    # the most tokens one answer of this model can have: bounds a budget reservation (serve's default: 4096),
    # and a request asking more is not routed there (hybridllm.routing.capabilities)
    max_output_tokens: int | None = Field(None, ge=1, le=10_000_000)
    # the protocol its endpoint speaks: a request reaches only the models of its own protocol
    api: Literal["chat", "messages", "responses"] = "chat"
    # its context window in tokens (prompt + answer); None: no limit known
    context_window: int | None = Field(None, ge=1, le=100_000_000)
    # the capabilities it has (CAPABILITIES); None: all of them
    supports: list[Capability] | None = None

    @field_validator("context_window")
    @classmethod
    def _window_holds_answer(cls, v: int | None, info: ValidationInfo) -> int | None:
        out = info.data.get("max_output_tokens")
        if v is not None and out is not None and out > v:
            raise ValueError(f"context_window {v} is smaller than max_output_tokens {out}")
        return v

    @field_validator("supports")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"names a capability twice: {v}")
        return v

    @model_validator(mode="after")
    def _api_over_http(self) -> ModelEntry:
        if self.api != "chat" and self.spec is not None and "://" not in self.spec:
            raise ValueError(f"api {self.api!r} needs an HTTP spec (MODEL@https://HOST/v1), not a local model")
        return self

    @model_validator(mode="after")
    def _priced(self) -> ModelEntry:
        if self.cost is None and (self.price_in is None or self.price_out is None):
            raise ValueError("give cost, or both price_in and price_out")
        if self.cost is None and (3 * (self.price_in or 0) + (self.price_out or 0)) <= 0:
            raise ValueError("prices must not both be 0")
        if self.price_cached_in is not None and self.price_in is None:
            raise ValueError("price_cached_in needs price_in (the uncached price it discounts)")
        return self

    @property
    def relative_cost(self) -> float:
        if self.cost is not None:
            return float(self.cost)
        return (3 * float(self.price_in or 0) + float(self.price_out or 0)) / 4


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEntry]
    judge: str | None = None  # the model (of this file) that scores shadow pairs

    @model_validator(mode="after")
    def _judge_known(self) -> Registry:
        if self.judge is not None and self.judge not in self.models:
            raise ValueError(f"judge {self.judge!r} is not one of the [models.NAME] tables")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Registry:
        import tomllib

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegistryError(f"{p}: {exc}") from None
        try:
            reg = cls.model_validate(data)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            if e["type"] == "literal_error":  # a name not among the allowed: say which
                msg += f", got {str(e['input'])[:64]!r}"
            line = _line_of(text, e["loc"])
            raise RegistryError(f"{p}{f':{line}' if line else ''}: {where}: {msg}") from None
        if len(reg.models) < 1:
            raise RegistryError(f"{p}: no [models.NAME] tables")
        return reg

    def costs(self, names: list[str]) -> dict[str, float]:
        missing = [n for n in names if n not in self.models]
        if missing:
            raise RegistryError(f"not in the models file: {', '.join(missing)} (has {', '.join(self.models)})")
        return {n: self.models[n].relative_cost for n in names}


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) of the key a validation error names, ``models.NAME.KEY`` written under a
    ``[models.NAME]`` table (the model's table line when the key is not written there); None where
    the file writes it otherwise."""
    if len(loc) < 2 or loc[0] != "models":
        return None
    name = re.escape(str(loc[1]))
    header = re.compile(rf"\s*\[\s*models\s*\.\s*(?:\"{name}\"|'{name}'|{name})\s*\]")
    key = re.compile(rf"\s*(?:\"{re.escape(str(loc[2]))}\"|{re.escape(str(loc[2]))})\s*=") if len(loc) > 2 else None
    at = None
    for i, line in enumerate(text.splitlines(), 1):
        if at is None:
            at = i if header.match(line) else None
        elif line.lstrip().startswith("["):
            break
        elif key is not None and key.match(line):
            return i
    return at
