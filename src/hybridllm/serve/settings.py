"""Every setting of ``hybridllm serve``, written once: its name (the TOML key of ``--config``), type,
default, bounds and help. The command line's options, the TOML file's keys, ``--help`` and the
serve table of docs/cli.md are all made from these fields (``hybridllm.cli._settings``); adding a
setting is one field here.

A setting's flag is its name with dashes, less a trailing ``_s`` (``state_lease_s`` →
``--state-lease``); :class:`Flag` in a field's ``Annotated`` metadata adds an environment variable
or the command line's own type. The parsers that check values import lazily: ``hybridllm --help``
reads this module, and loads neither the server nor its backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class Flag:
    """The command line's view of a setting, where the rule (name → flag, type as declared) is not
    enough: an environment variable the flag also reads, or the flag's own type."""

    env: str | None = None
    type: Any = None


def flag_name(setting: str) -> str:
    """``state_lease_s`` → ``--state-lease``."""
    return "--" + setting.removesuffix("_s").replace("_", "-")


class ServeSettings(BaseModel):
    """What ``hybridllm serve`` is told: a TOML file's keys, overridden by the flags given."""

    # defer_build: the validator is built on first use, not when `hybridllm --help` reads the fields
    model_config = ConfigDict(extra="forbid", defer_build=True)

    router: Path | None = Field(None, description="router artifact (default: $HYBRIDLLM_ROUTER or the shipped one)")
    router_watch_s: float = Field(
        0.0, ge=0, le=86400,
        description="look at --router (a slot link) every S seconds and reload the router when it points "
        "elsewhere; 0: only on SIGHUP or POST /admin/reload (docs/retrain.md)",
    )  # fmt: skip
    small: str | None = Field(None, description="small upstream: MODEL@BASE_URL, a local model name or .gguf")
    large: str | None = Field(None, description="large upstream: MODEL@BASE_URL, a local model name or .gguf")
    model: list[str] | None = Field(None, description="routers over N models: NAME=SPEC, once per model")
    models_file: Path | None = Field(None, description="models.toml: each model's SPEC, key variable and price")
    host: Annotated[str, Flag(env="HYBRIDLLM_HOST")] = Field("127.0.0.1", description="bind address")
    port: Annotated[int, Flag(env="HYBRIDLLM_PORT")] = Field(8000, ge=0, le=65535, description="port")
    # TOML also takes a table per model ({small = "VAR"} / {"gpt-4o" = "VAR"}) or one bare "VAR"
    api_key_env: Annotated[str | list[str] | dict[str, str] | None, Flag(type=list[str])] = Field(
        None,
        description="NAME=VAR: the upstream NAME (small, large or its model name) gets the key in $VAR; "
        "repeat per upstream. A bare VAR only when one upstream is HTTP",
    )
    serve_api_key_env: str | None = Field(
        None, description="env var with comma-separated keys clients must send (Bearer)"
    )
    allow_unauthenticated: bool = Field(False, description="allow a non-loopback --host with no client key")
    public_metrics: bool = Field(False, description="serve /metrics and /ready without the client key")
    api_docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json")
    fallback: bool = Field(True, description="retry a routed request on the other model when an upstream fails")
    route_on: Literal["all", "last"] | None = Field(
        None, description="what the router reads: 'all' user turns or the 'last' one (default: the router's)"
    )
    timeout_s: float = Field(120.0, gt=0, description="seconds per upstream attempt in total, streams included")
    client_timeout_s: float = Field(30.0, gt=0, description="seconds a client has to send its whole body (else 408)")
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a client has to send its request headers (else the connection is closed)"
    )
    max_body_bytes: int = Field(1_000_000, gt=0, description="larger request bodies get 413")
    max_messages: int = Field(512, gt=0, description="requests with more messages get 400")
    max_router_chars: int = Field(
        16_000, ge=256, description="the router reads at most this much of a prompt (its head and its tail)"
    )
    default_knob: str | None = Field(
        None, description="what plain 'hybrid' means, as a routing name (hybrid-qd-2); default: the router's point"
    )
    log_prompts: bool = Field(False, description="put the routed text into the access log and outcomes records")
    batch_window_s: float = Field(
        0.0, ge=0, description="seconds to wait to group routing decisions into one encoder pass"
    )
    workers: int = Field(1, ge=1, le=64, description="processes on the one port; each loads the router and its models")
    # sessions (docs/sessions.md)
    sessions: bool = Field(
        True,
        description="keep each conversation on its model: it only moves up, a tool loop stays whole "
        "(x-session-id, user, metadata.session_id, else derived)",
    )
    session_ttl_s: float = Field(
        3600.0, gt=0, le=30 * 86400, allow_inf_nan=False, description="seconds a session's pin outlives its last turn"
    )
    session_capacity: int = Field(
        100_000, ge=1, le=100_000_000,
        description="session pins held (per process, or in --state); a client key holds at most a share of them",
    )  # fmt: skip
    session_secret_env: str = Field(
        "HYBRIDLLM_SESSION_SECRET",
        description="env var with the secret derived session ids are keyed with (16+ characters; replicas "
        "sharing --state need the same); unset: a secret per server (a warning when --state shares the pins)",
    )
    # live control (docs/control.md)
    shadow_rate: float = Field(
        0.0, ge=0, le=1, description="share of answered requests also answered by the other side and judged (0..1)"
    )
    judge: str | None = Field(
        None,
        description="scorer of shadow pairs: MODEL@BASE_URL, a local model, a models-file name or reward-model:DIR",
    )
    judge_api_key_env: str | None = Field(None, description="env var with the judge's API key")
    judge_rubric: Path | None = Field(
        None,
        description="judge rubric file: {response}, optional {prompt}, {reference} (delimited data; verdict format "
        "added)",
    )
    shadow_concurrency: int = Field(4, ge=1, le=256, description="shadow calls under way at once")
    shadow_per_minute: int = Field(
        600, ge=1, description="shadow calls per minute, shared equally by the client keys active in the last minute"
    )
    shadow_max_tokens: int = Field(
        1024, ge=1, description="a shadow replay's output cap: min of the request's max_tokens and this"
    )
    shadow_max_prompt_chars: int = Field(
        32_000, ge=1, description="requests whose body holds more characters are not shadow-checked"
    )
    shadow_sides: Literal["pair", "policy", "all"] | None = Field(
        None,
        description="which models a drawn request asks: 'pair' (the other side), 'policy' (each model the policy "
        "picks at some threshold), 'all' (every model: complete rows for retraining a fleet; M-1 calls a draw); "
        "default: policy under a quality hold over 3+ models, else pair",
    )
    hold: str | None = Field(
        None, description="target held on live traffic: max_quality_drop=1, budget=30, cost_advantage=40"
    )
    hold_confidence: float = Field(
        0.95, ge=0.5, lt=1, description="one-sided confidence of the quality hold's upper bound"
    )
    hold_window: int = Field(
        200,
        ge=0,
        le=10_000_000,
        description="requests over which the quality hold's bound holds (0: on the recent mean)",
    )
    outcomes: Path | None = Field(
        None, description="outcomes log (shadow pairs, /v1/feedback) for `hybridllm outcomes export`"
    )
    feedback_per_minute: int = Field(
        600, ge=0, description="/v1/feedback posts per client key and minute (0: no limit)"
    )
    feedback_index_mb: int = Field(
        64, ge=1, le=1 << 20, description="MiB of answered requests /v1/feedback can name, oldest forgotten first"
    )
    budget_cap: list[str] = Field(
        default_factory=list,
        description="hard spend ceiling KEY=AMOUNT/PERIOD (key name or *), e.g. team-a=5/day",
    )
    on_cap: Literal["downgrade", "refuse"] = Field(
        "downgrade", description="past a ceiling: 'downgrade' to the cheapest model or 'refuse'"
    )
    state: str | None = Field(
        None, description="state shared by replicas (spend counters, the controller's pairs): redis://HOST:PORT/DB"
    )
    state_lease_s: int = Field(
        30, ge=1, le=86400, description="seconds a replica's open budget reservations outlive it (killed mid-request)"
    )
    settle_timeout_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds an answer is read on after its client left, for its usage (then charged its bound)",
    )
    state_env: str | None = Field(
        None, description="env var holding the --state URL (keeps a Redis password out of `ps`); instead of --state"
    )
    admin_key_env: str | None = Field(
        None, description="env var with the admin key(s), comma-separated: only they change the default knob"
    )
    allowed_host: list[str] = Field(
        default_factory=list,
        description="without client keys: a Host name answered beside loopback and --host (repeat; * for any)",
    )

    @field_validator("allowed_host")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        from .env_secrets import check_host_name

        return [check_host_name(item) for item in v]

    @field_validator("budget_cap")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        from .caps import parse_cap

        for item in v:
            parse_cap(item)
        return v

    @field_validator("hold")
    @classmethod
    def _hold(cls, v: str | None) -> str | None:
        from hybridllm.routing.live import parse_hold

        if v is not None:
            try:
                parse_hold(v)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("default_knob")
    @classmethod
    def _knob(cls, v: str | None) -> str | None:
        from .knobs import KnobError, parse_name

        if v is not None and v != "hybrid":
            try:
                knob = parse_name(v, {})
            except KnobError:
                raise ValueError(f"{v!r} is not a routing name (e.g. hybrid-qd-2, hybrid-ca-50)") from None
            if knob.force:
                raise ValueError(f"{v!r} is not a routing name")
        return v
