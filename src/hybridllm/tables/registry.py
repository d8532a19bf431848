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
api_key_env = "OPENAI_API_KEY"                 # sent to this model's endpoint only
max_output_tokens = 16384                      # its longest answer (budget reservations; default 4096)
```

A top-level ``judge = "NAME"`` names the model of the file that ``serve --shadow-rate`` asks to score
shadow pairs (its SPEC and key variable); ``--judge NAME`` does the same for any model of the file.

A model's relative cost is ``cost`` when given, else its blended token price
``(3 * price_in + price_out) / 4`` (three input tokens per output token, a common chat mix).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hybridllm.errors import HybridLLMError


class RegistryError(HybridLLMError, ValueError):
    """The models file is malformed: one line naming the file, the model and the key."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: str | None = None
    cost: float | None = Field(None, gt=0, allow_inf_nan=False)
    price_in: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_out: float | None = Field(None, ge=0, allow_inf_nan=False)
    api_key_env: str | None = None
    # the most tokens one answer of this model can have: bounds a budget reservation (serve's default: 4096)
    max_output_tokens: int | None = Field(None, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _priced(self) -> ModelEntry:
        if self.cost is None and (self.price_in is None or self.price_out is None):
            raise ValueError("give cost, or both price_in and price_out")
        if self.cost is None and (3 * (self.price_in or 0) + (self.price_out or 0)) <= 0:
            raise ValueError("prices must not both be 0")
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
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegistryError(f"{p}: {exc}") from None
        try:
            reg = cls.model_validate(data)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            raise RegistryError(f"{p}: {where}: {msg}") from None
        if len(reg.models) < 1:
            raise RegistryError(f"{p}: no [models.NAME] tables")
        return reg

    def costs(self, names: list[str]) -> dict[str, float]:
        missing = [n for n in names if n not in self.models]
        if missing:
            raise RegistryError(f"not in the models file: {', '.join(missing)} (has {', '.join(self.models)})")
        return {n: self.models[n].relative_cost for n in names}
