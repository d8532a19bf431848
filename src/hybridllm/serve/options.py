"""The running proxy's settings: one object, built from a checked
:class:`~hybridllm.serve.config.ServeConfig` (or by hand in a test), read by every piece of the
request path."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def key_id(key: str) -> str:
    """The name of a client key given without one: a short digest, never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass
class ServeOptions:
    """The running proxy's settings (built from a :class:`~hybridllm.serve.config.ServeConfig`)."""

    fallback: bool = True  # routed requests retry on the other model when theirs fails
    api_keys: list[str] = field(default_factory=list, repr=False)  # keys clients must send; [] = open
    public_metrics: bool = False  # /metrics and /ready without a key even when keys are set
    api_docs: bool = False  # /docs, /redoc, /openapi.json
    max_body_bytes: int = 1_000_000
    max_messages: int = 512
    max_router_chars: int = 16_000  # what the router tokenises at most (head + tail beyond)
    client_timeout_s: float = 30.0  # to send the whole body
    log_prompts: bool = False
    batch_window_s: float = 0.0
    default_knob: str | None = None  # what plain "hybrid" means, as another routing name
    # price per 1M (input, output) tokens per model: /metrics then counts each request's estimated
    # cost and what always using the reference (best) model would have cost
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the workers of one `--workers N` server share the default knob and the live window here
    state_dir: str | None = None
    # live control (docs/control.md): the share of answered requests shadow-checked by the judge,
    # the shadow calls' own limits, the held target ("budget=30") and its confidence
    shadow_rate: float = 0.0
    shadow_concurrency: int = 4
    shadow_per_minute: int = 600  # shared equally by the client keys active in the last minute
    shadow_max_tokens: int = 1024  # a shadow replay's output cap (max_tokens, max_completion_tokens)
    shadow_max_prompt_chars: int = 32_000  # a request whose body holds more characters is not drawn
    judge_name: str | None = None  # the judge's name in the models file (its price in ``prices``, if any)
    hold: str | None = None
    hold_confidence: float = 0.95
    hold_window: int = 200  # requests the quality hold's bound is for (0: the recent mean)
    judge_rubric: str | None = None  # the judge's prompt (default: hybridllm.stages.score.JUDGE_RUBRIC)
    outcomes: str | None = None  # the outcomes log (shadow pairs, feedback): a path
    feedback_per_minute: int = 600  # /v1/feedback posts per client key and minute, all workers and replicas (0: off)
    feedback_index_mb: int = 64  # the answered requests /v1/feedback can name, in MiB (oldest forgotten first)
    key_names: dict[str, str] = field(default_factory=dict, repr=False)  # client key -> its name (NAME:KEY)
    budget_caps: list[str] = field(default_factory=list)  # KEY=AMOUNT/PERIOD
    # keys that may change server-wide state (the default knob); never a client key (docs/serve.md)
    admin_keys: list[str] = field(default_factory=list, repr=False)
    # without client keys: Host names answered beside the loopback ones (the bound host, --allowed-host)
    allowed_hosts: list[str] = field(default_factory=list)
    on_cap: str = "downgrade"  # or "refuse"
    state: str | None = field(default=None, repr=False)  # redis://HOST:PORT/DB (may hold a password)
    state_lease_s: int = 30  # a replica's open reservations outlive it by at most this (Redis state)
    # after a client left (or a relay ended early): its upstream answer is read on this long for its
    # usage, then closed and charged the request's bound (docs/control.md, "Hard budgets")
    settle_timeout_s: float = 60.0
    # the models file's max_output_tokens per model (a reservation's output bound; default 4096)
    max_output: dict[str, int] = field(default_factory=dict)
