"""Serving configuration: the settings (:mod:`.settings`, each written once) read from a TOML file and
command-line flags (flags win), every key checked by name, then turned into the upstreams, the judge
and the app's options.

Security defaults: API docs off; ``/metrics`` and ``/ready`` need the client key when keys are set
(``public_metrics = true`` opens them); binding an address other than loopback without client keys
is refused unless ``allow_unauthenticated = true``; each upstream gets only its own API key.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, ValidationError

from hybridllm.backends import Backend, make_backend
from hybridllm.backends.packages import LOCAL_MODELS
from hybridllm.routing.capabilities import ModelCaps, fleet_caps
from hybridllm.routing.money import Price
from hybridllm.stages.score import check_rubric
from hybridllm.tables.registry import Registry
from hybridllm.tables.specs import key_envs, parse_spec

from .caps import parse_cap
from .control.shadow import RewardScorer
from .env_secrets import admin_keys, session_secret, state_url
from .errors import ServeConfigError
from .options import ServeOptions, key_id
from .settings import ServeSettings


class ServeConfig(ServeSettings):
    """The settings (:class:`~hybridllm.serve.settings.ServeSettings`) and what is made from them: the
    upstreams, the judge, the running proxy's :class:`ServeOptions`."""

    _registry: Any = PrivateAttr(default=None)

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
        return list(self.named_keys())

    def named_keys(self) -> dict[str, str]:
        """Client key -> its name: entries ``NAME:KEY`` are named (what budget caps and the log
        call them); a bare key is named by a digest of it."""
        if not self.serve_api_key_env:
            return {}
        out: dict[str, str] = {}
        for item in os.environ.get(self.serve_api_key_env, "").split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, key = item.partition(":")
            if sep and name and key:
                out[key] = name
            else:
                out[item] = key_id(item)
        if not out:
            raise ServeConfigError(f"environment variable {self.serve_api_key_env} holds no keys")
        return out

    def options(self, **built: Any) -> ServeOptions:
        """The running proxy's options; refuses what cannot be served (a cap naming no key, caps
        across workers without shared state, an open bind without keys). ``built``: what only the
        built server knows (``state_dir``, ``prices``, ``max_output``)."""
        named = self.named_keys()
        keys = list(named)
        unknown = [k for k in (parse_cap(c).key for c in self.budget_cap) if k not in {"*", *named.values()}]
        if unknown:
            where = (
                f"name keys as NAME:KEY in ${self.serve_api_key_env}"
                if self.serve_api_key_env
                else "this server has no client keys: set --serve-api-key-env VAR with NAME:KEY entries"
            )
            raise ServeConfigError(f"budget_cap: no client key named {unknown[0]!r} ({where})")
        state = state_url(self.state, self.state_env)
        if self.budget_cap and self.workers > 1 and not state:
            raise ServeConfigError(
                f"budget_cap with {self.workers} workers needs --state redis://HOST:PORT/DB: each worker would "
                "count its own spend, and a ceiling would hold per worker, not per key"
            )
        if not keys and not self.is_loopback() and not self.allow_unauthenticated:
            raise ServeConfigError(
                f"refusing to serve on {self.host} with no client key: anyone who can reach it spends your "
                "upstreams; set --serve-api-key-env, or --allow-unauthenticated if that is what you want"
            )
        # every option named as a setting is copied from it (ServeOptions.derive); these are made
        return ServeOptions.derive(
            self,
            api_keys=keys,
            key_names=named,
            admin_keys=admin_keys(self.admin_key_env, keys),
            allowed_hosts=[self.host, *self.allowed_host],
            budget_caps=list(self.budget_cap),
            default_knob=None if self.default_knob == "hybrid" else self.default_knob,
            judge_name=self.judge_name(),
            judge_rubric=self.rubric(),  # the file's text
            outcomes=None if self.outcomes is None else str(self.outcomes),
            state=state,  # from --state or --state-env
            session_secret=session_secret(self.session_secret_env) if self.sessions else None,
            **built,
        )

    def rubric(self) -> str | None:
        if self.judge_rubric is None:
            return None
        try:
            text = Path(self.judge_rubric).read_text(encoding="utf-8")
            return check_rubric(text)
        except OSError as exc:
            raise ServeConfigError(f"judge_rubric: {self.judge_rubric}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ServeConfigError(f"judge_rubric: {self.judge_rubric}: {exc}") from None

    def judge_name(self) -> str | None:
        """The judge's name in the models file (where its price is), None when it is not one of its models."""
        reg = self.registry() if self.shadow_rate else None
        name = self.judge or (reg.judge if reg is not None else None)
        return name if reg is not None and name in reg.models else None

    def judge_backend(self) -> Backend | RewardScorer | None:
        """The shadow checks' judge (None without ``shadow_rate``): a backend, or a reward-model
        checkpoint for ``reward-model:PATH``; refused when the rate has no judge."""
        if not self.shadow_rate:
            return None
        reg = self.registry()
        spec, key_env = self.judge or (reg.judge if reg is not None else None), self.judge_api_key_env
        if not spec:
            raise ServeConfigError(
                "--shadow-rate needs --judge SPEC (or a models file's judge = NAME): the model that scores both answers"
            )
        if spec.startswith("reward-model:"):
            path = spec.removeprefix("reward-model:")
            if not Path(path).is_dir():
                raise ServeConfigError(f"judge {spec!r}: expected reward-model:DIR, a local checkpoint directory")
            return RewardScorer(path)
        entry = reg.models.get(spec) if reg is not None else None
        if entry is not None:  # a model of the models file: its SPEC and its own key
            if not entry.spec:
                raise ServeConfigError(f"judge {spec!r}: the models file gives it no spec")
            spec, key_env = entry.spec, key_env or entry.api_key_env
        try:
            return make_backend(spec, key_env, name="judge", concurrency=None, timeout_s=self.timeout_s)
        except ValueError as exc:
            raise ServeConfigError(f"judge: {exc}") from None

    def upstream_specs(self, router: Any) -> tuple[str, str]:
        """The two SPECs; with none named, a router trained on named local models serves them."""
        small = self.small or (router.small if router.small in LOCAL_MODELS else None)
        large = self.large or (router.large if router.large in LOCAL_MODELS else None)
        if not small or not large:
            raise ServeConfigError("give --small and --large (MODEL@BASE_URL), or a --config file naming them")
        return small, large

    def model_specs(self, router: Any) -> dict[str, str]:
        """Router model name → SPEC: every model of the router from ``model`` (NAME=SPEC items) or the
        models file; a two-model router also takes ``small`` and ``large`` (or, with none named, its
        own local models)."""
        fleet = router.fleet
        if len(fleet.models) == 2 and not self.model and (self.small or self.large or self.registry() is None):
            small, large = self.upstream_specs(router)
            return {fleet.models[0]: small, fleet.models[1]: large}
        specs: dict[str, str] = {}
        reg = self.registry()
        if reg is not None:
            specs.update({n: e.spec for n, e in reg.models.items() if e.spec and n in fleet.models})
        for item in self.model or []:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec:
                raise ServeConfigError(f"model {item!r}: expected NAME=SPEC")
            if name not in fleet.models:
                raise ServeConfigError(f"model {name!r} is not one of the router's: {', '.join(fleet.models)}")
            specs[name] = spec
        missing = [m for m in fleet.models if m not in specs]
        if missing:
            raise ServeConfigError(f"no upstream for {', '.join(missing)}: give --model NAME=SPEC or a models file")
        return {m: specs[m] for m in fleet.models}

    def registry(self) -> Any:
        """The models file, read once (None without one)."""
        if self.models_file is None:
            return None
        if self._registry is None:
            self._registry = Registry.load(self.models_file)
        return self._registry

    def prices(self, names: list[str]) -> dict[str, Price]:
        """Each model's prices per 1M tokens from the models file (``price_in``, ``price_cached_in``,
        ``price_out``; a bare ``cost`` is taken as both): :meth:`hybridllm.routing.money.Price.of`;
        empty without one."""
        reg = self.registry()
        if reg is None:
            return {}
        return {n: Price.of(e) for n in names if (e := reg.models.get(n)) is not None}

    def capabilities(self, names: list[str]) -> dict[str, ModelCaps]:
        """What each model can serve, where the models file says (``context_window``,
        ``max_output_tokens``, ``supports``); a model it leaves unrestricted is left out."""
        reg = self.registry()
        if reg is None:
            return {}
        caps = fleet_caps(reg.models, names)
        return {c.name: c for c in caps if not c.unrestricted}

    def max_output(self, names: list[str]) -> dict[str, int]:
        """Each model's maximum output in tokens where the models file states it (``max_output_tokens``;
        budget reservations and charges by bound default to ``settle.DEFAULT_MAX_OUTPUT_TOKENS``)."""
        reg = self.registry()
        if reg is None:
            return {}
        return {n: int(e.max_output_tokens) for n in names if (e := reg.models.get(n)) and e.max_output_tokens}

    def upstreams(self, router: Any, load_local: Any = None, load: bool = True) -> list[Backend]:
        """One upstream per model of the router, in cost order (two models: small, large),
        each with its own key. ``load_local(spec, name)`` is called before an in-process model loads;
        ``load=False`` leaves in-process models unloaded (the parent of ``--workers N`` only describes
        them)."""
        specs = self.model_specs(router)
        parsed = {n: parse_spec(v) for n, v in specs.items()}
        http = [n for n, p in parsed.items() if p.is_http]
        aliases = {p.model: n for n, p in parsed.items()}
        if len(router.fleet.models) == 2:
            aliases.update({"small": router.fleet.models[0], "large": router.fleet.models[1]})
        reg = self.registry()
        defaults = {n: e.api_key_env for n, e in reg.models.items()} if reg is not None else None
        try:
            envs = key_envs(self.api_key_env, http, aliases, defaults)
        except ValueError as exc:
            raise ServeConfigError(f"api_key_env: {exc}") from None
        out = []
        for name, p in parsed.items():
            try:
                # the proxy's pool: no limit of ours (concurrency None), one attempt per request
                entry = reg.models.get(name) if reg is not None else None
                backend = make_backend(
                    specs[name], envs.get(name), name=name, concurrency=None, timeout_s=self.timeout_s,
                    api=entry.api if entry is not None else "chat",  # its protocol: a request only goes to its own
                )  # fmt: skip
            except ValueError as exc:
                raise ServeConfigError(str(exc)) from None
            if backend.in_process and load:
                if load_local is not None:
                    load_local(p.model, name)
                backend.load()  # type: ignore[attr-defined]
            out.append(backend)
        return out

    def describe_upstreams(self, upstreams: list[Backend]) -> str:
        return " | ".join(f"{u.who} → {u.where}" + (" (with key)" if u.has_key else "") for u in upstreams)
