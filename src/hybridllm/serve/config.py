"""Serving configuration: one object built from a TOML file and command-line flags (flags win), with
every key checked by name, then turned into the upstreams and the app's options.

Security defaults: API docs off; ``/metrics`` and ``/ready`` need the client key when keys are set
(``public_metrics = true`` opens them); binding an address other than loopback without client keys
is refused unless ``allow_unauthenticated = true``; each upstream gets only its own API key.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..specs import key_envs, parse_spec, read_key, redact_url
from .app import ServeOptions
from .errors import ServeConfigError
from .knobs import KnobError, parse_name
from .upstream import Upstream


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    router: Path | None = None
    small: str | None = None  # SPEC: MODEL@BASE_URL, a local model name, or a .gguf path
    large: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # per model: {small = "VAR"} / {"gpt-4o" = "VAR"}, or ["large=VAR"]; a bare "VAR" only with one HTTP model
    api_key_env: str | list[str] | dict[str, str] | None = None
    serve_api_key_env: str | None = None  # variable with comma-separated keys clients must send
    allow_unauthenticated: bool = False
    public_metrics: bool = False
    api_docs: bool = False
    fallback: bool = True
    route_on: Literal["all", "last"] | None = None
    timeout_s: float = Field(120.0, gt=0)
    client_timeout_s: float = Field(30.0, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    max_body_bytes: int = Field(1_000_000, gt=0)
    max_messages: int = Field(512, gt=0)
    max_router_chars: int = Field(16_000, ge=256)
    default_knob: str | None = None
    log_prompts: bool = False
    batch_window_s: float = Field(0.0, ge=0)

    @field_validator("default_knob")
    @classmethod
    def _knob(cls, v: str | None) -> str | None:
        if v is not None and v != "hybrid":
            try:
                knob = parse_name(v, {})
            except KnobError:
                raise ValueError(f"{v!r} is not a routing name (e.g. hybrid-qd-2, hybrid-ca-50)") from None
            if knob.force:
                raise ValueError(f"{v!r} is not a routing name")
        return v

    @classmethod
    def load(cls, path: Path | None = None, **flags: Any) -> ServeConfig:
        """The file's settings, overridden by the flags that are not None."""
        data: dict[str, Any] = {}
        where = "flags"
        if path is not None:
            import tomllib

            where = str(path)
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ServeConfigError(f"{path}: {exc}") from None
        data.update({k: v for k, v in flags.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            e = exc.errors()[0]
            key = ".".join(str(x) for x in e["loc"]) or "config"
            if e["type"] == "extra_forbidden":
                known = ", ".join(cls.model_fields)
                raise ServeConfigError(f"{where}: unknown key {key!r} (known: {known})") from None
            raise ServeConfigError(f"{where}: {key}: {e['msg']}") from None

    def default_point(self, router: Any) -> str:
        """What plain ``hybrid`` means, in words for the banner."""
        if self.default_knob and self.default_knob != "hybrid":
            return self.default_knob
        op = router.config["default_operating_point"]
        return f"{op['kind']} {op['value']:g} (the router's default)"

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def client_keys(self) -> list[str]:
        if not self.serve_api_key_env:
            return []
        keys = [k.strip() for k in os.environ.get(self.serve_api_key_env, "").split(",") if k.strip()]
        if not keys:
            raise ServeConfigError(f"environment variable {self.serve_api_key_env} holds no keys")
        return keys

    def options(self) -> ServeOptions:
        keys = self.client_keys()
        if not keys and not self.is_loopback() and not self.allow_unauthenticated:
            raise ServeConfigError(
                f"refusing to serve on {self.host} with no client key: anyone who can reach it spends your "
                "upstreams; set --serve-api-key-env, or --allow-unauthenticated if that is what you want"
            )
        return ServeOptions(
            fallback=self.fallback,
            api_keys=keys,
            public_metrics=self.public_metrics,
            api_docs=self.api_docs,
            max_body_bytes=self.max_body_bytes,
            max_messages=self.max_messages,
            max_router_chars=self.max_router_chars,
            client_timeout_s=self.client_timeout_s,
            log_prompts=self.log_prompts,
            batch_window_s=self.batch_window_s,
            default_knob=None if self.default_knob == "hybrid" else self.default_knob,
        )

    def upstream_specs(self, router: Any) -> tuple[str, str]:
        """The two SPECs; with none named, a router trained on named local models serves them."""
        from ..models import LOCAL_MODELS

        small = self.small or (router.small if router.small in LOCAL_MODELS else None)
        large = self.large or (router.large if router.large in LOCAL_MODELS else None)
        if not small or not large:
            raise ServeConfigError("give --small and --large (MODEL@BASE_URL), or a --config file naming them")
        return small, large

    def upstreams(self, router: Any, load_local: Any = None) -> tuple[Upstream, Upstream]:
        """Small and large upstreams, each with its own key. ``load_local(spec, name)`` is called
        before an in-process model is loaded (progress output)."""
        specs = dict(zip(("small", "large"), self.upstream_specs(router), strict=True))
        parsed = {k: parse_spec(v) for k, v in specs.items()}
        names = {"small": router.small, "large": router.large}
        http = [names[k] for k, p in parsed.items() if p.is_http]
        aliases = {"small": names["small"], "large": names["large"]}
        aliases.update({p.model: names[k] for k, p in parsed.items()})
        try:
            envs = key_envs(self.api_key_env, http, aliases)
        except ValueError as exc:
            raise ServeConfigError(f"api_key_env: {exc}") from None
        out = []
        for k in ("small", "large"):
            p, name = parsed[k], names[k]
            if p.is_http:
                try:
                    key = read_key(name, envs.get(name))
                except ValueError as exc:
                    raise ServeConfigError(str(exc)) from None
                out.append(Upstream(name, p.base_url or "", p.model, api_key=key, timeout_s=self.timeout_s))
            else:
                from ..backends import LocalBackend

                local = LocalBackend(p.model)
                if load_local is not None:
                    load_local(p.model, name)
                local.load()
                out.append(
                    Upstream(name, "http://in-process.invalid/v1", p.model, local=local, timeout_s=self.timeout_s)
                )
        return out[0], out[1]

    def describe_upstreams(self, small: Upstream, large: Upstream) -> str:
        return " | ".join(
            f"{u.name} → {'in-process ' + u.model if u.local is not None else redact_url(u.base_url)}"
            + (" (with key)" if u.api_key else "")
            for u in (small, large)
        )
