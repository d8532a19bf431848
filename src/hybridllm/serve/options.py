"""The running proxy's settings: one object, derived from a checked
:class:`~hybridllm.serve.config.ServeConfig` (or built by hand in a test), read by every piece of the
request path. An option named as a setting (serve/settings.py, where its meaning and bounds are
written) takes that setting's default and, in :meth:`ServeOptions.derive`, its value: neither is
written here again. The other options are made from settings or found by the built server."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from hybridllm.routing.capabilities import ModelCaps
from hybridllm.routing.money import Price

from .settings import ServeSettings
from .settle import Limits


def key_id(key: str) -> str:
    """The name of a client key given without one: a short digest, never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _setting(name: str) -> Any:
    """An option that is the setting ``name``: its default, and its value in :meth:`ServeOptions.derive`."""
    return field(default=ServeSettings.model_fields[name].default, metadata={"setting": name})


def as_price(p: Price | tuple[float, ...]) -> Price:
    """A model's prices: a :class:`~hybridllm.routing.money.Price`, or (input, output[, cached input])
    per 1M tokens."""
    if isinstance(p, Price):
        return p
    if isinstance(p, tuple) and len(p) in (2, 3):
        return Price(float(p[0]), float(p[1]), None if len(p) == 2 else float(p[2]))
    raise TypeError(f"a price is a Price or (input, output[, cached input]) per 1M tokens, got {p!r}")


@dataclass(frozen=True)
class ServeOptions:
    """The running proxy's settings (derived from a :class:`~hybridllm.serve.config.ServeConfig`).
    Frozen: what changes while the server runs lives elsewhere (the admin's knob in
    :class:`~hybridllm.serve.admin_knob.AdminKnob`, the hold in its decider)."""

    # the settings of the same name (serve/settings.py)
    fallback: bool = _setting("fallback")
    public_metrics: bool = _setting("public_metrics")
    api_docs: bool = _setting("api_docs")
    max_body_bytes: int = _setting("max_body_bytes")
    max_messages: int = _setting("max_messages")
    max_router_chars: int = _setting("max_router_chars")
    client_timeout_s: float = _setting("client_timeout_s")
    log_prompts: bool = _setting("log_prompts")
    batch_window_s: float = _setting("batch_window_s")
    shadow_rate: float = _setting("shadow_rate")
    shadow_concurrency: int = _setting("shadow_concurrency")
    shadow_per_minute: int = _setting("shadow_per_minute")
    shadow_max_tokens: int = _setting("shadow_max_tokens")
    shadow_max_prompt_chars: int = _setting("shadow_max_prompt_chars")
    shadow_sides: str | None = _setting("shadow_sides")
    hold: str | None = _setting("hold")
    hold_confidence: float = _setting("hold_confidence")
    hold_window: int = _setting("hold_window")
    feedback_per_minute: int = _setting("feedback_per_minute")
    feedback_index_mb: int = _setting("feedback_index_mb")
    on_cap: str = _setting("on_cap")
    state_lease_s: int = _setting("state_lease_s")
    settle_timeout_s: float = _setting("settle_timeout_s")
    router_watch_s: float = _setting("router_watch_s")
    sessions: bool = _setting("sessions")
    session_ttl_s: float = _setting("session_ttl_s")
    session_capacity: int = _setting("session_capacity")

    # made from settings by ServeConfig.options (a setting of the same name, where there is one, is
    # what it is made from: the file's path, the variable naming the URL)
    default_knob: str | None = None  # what plain "hybrid" means, as another routing name (None: the router's)
    judge_rubric: str | None = None  # the rubric's text (default: hybridllm.stages.score.JUDGE_RUBRIC)
    outcomes: str | None = None  # the outcomes log (shadow pairs, feedback): a path
    state: str | None = field(default=None, repr=False)  # redis://HOST:PORT/DB (may hold a password)
    api_keys: list[str] = field(default_factory=list, repr=False)  # keys clients must send; [] = open
    key_names: dict[str, str] = field(default_factory=dict, repr=False)  # client key -> its name (NAME:KEY)
    # keys that may change server-wide state (the default knob); never a client key (docs/serve.md)
    admin_keys: list[str] = field(default_factory=list, repr=False)
    # without client keys: Host names answered beside the loopback ones (the bound host, --allowed-host)
    allowed_hosts: list[str] = field(default_factory=list)
    budget_caps: list[str] = field(default_factory=list)  # KEY=AMOUNT/PERIOD
    judge_name: str | None = None  # the judge's name in the models file (its price in ``prices``, if any)
    # the key derived session ids are made with (from --session-secret-env); None: one made per server
    session_secret: bytes | None = field(default=None, repr=False)

    # found by the built server (serve/build.py)
    # each model's prices per 1M tokens (prompt, cached prompt, completion): /metrics then counts each
    # request's cost and what always using the reference (best) model would have cost. Given as a
    # routing.money.Price or an (input, output[, cached input]) tuple: held as Price
    prices: dict[str, Price] = field(default_factory=dict)
    # the workers of one `--workers N` server share the default knob and the live window here
    state_dir: str | None = None
    # the models file's max_output_tokens per model (a reservation's output bound; default 4096)
    max_output: dict[str, int] = field(default_factory=dict)
    # what each model can serve (the models file's context_window, max_output_tokens, supports): a
    # request is never routed to a model that lacks what it needs (docs/sessions.md)
    capabilities: dict[str, ModelCaps] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prices", {m: as_price(p) for m, p in self.prices.items()})

    @cached_property  # read for every request billed by its bound: built once
    def limits(self) -> Limits:
        """What a request's token bound is priced on: each model's maximum output and context window."""
        context = {m: c.context_window for m, c in self.capabilities.items() if c.context_window}
        return Limits(self.max_output, context)

    @classmethod
    def derive(cls, settings: ServeSettings, **made: Any) -> ServeOptions:
        """The options of ``settings``: each option that is a setting takes its value; ``made`` gives
        the others (made from settings, or found by the server)."""
        same = {f.name: getattr(settings, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata}
        return cls(**same, **made)
