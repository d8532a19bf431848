"""Model SPECs and their secrets: the one parser for ``MODEL@BASE_URL`` / local model / ``.gguf``
strings, the one place an API key is read from the environment, and URL redaction for messages.

Why keys are per model: a fleet mixes self-hosted endpoints with paid APIs, and a key sent to the
wrong host is a leaked key. A key variable is bound to one model by name (``NAME=VAR``); a bare
``VAR`` is accepted only where exactly one HTTP model could receive it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hybridllm.errors import UsageError


@dataclass(frozen=True)
class Spec:
    """A parsed SPEC: ``base_url`` is set for an HTTP endpoint, ``None`` for an in-process model
    (``model`` is then a named local model or a ``.gguf`` path)."""

    model: str
    base_url: str | None

    @property
    def is_http(self) -> bool:
        return self.base_url is not None


def parse_spec(spec: str) -> Spec:
    """``MODEL@http(s)://HOST[:PORT]/v1`` → HTTP; anything else → a local model name or path."""
    spec = str(spec)
    model, sep, url = spec.partition("@")
    if sep and "://" in url:
        if not model or not url.startswith(("http://", "https://")):
            raise UsageError(f"model spec {redact_url(spec)!r}: expected MODEL@http(s)://HOST/v1")
        return Spec(model, url.rstrip("/"))
    if not spec.strip():
        raise UsageError("empty model spec (MODEL@BASE_URL, a local model name, or a .gguf path)")
    return Spec(spec, None)


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|password|secret)=)[^&\s]*")


def redact_url(text: str) -> str:
    """Mask credentials in every URL inside ``text``: ``user:pass@`` and secret-looking query values."""
    text = str(text)
    if "://" not in text and "=" not in text:  # nothing to mask (every access-log line passes here)
        return text
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def read_key(model: str, env: str | None) -> str | None:
    """The value of ``env`` (a variable name) for ``model``; an unset variable is an error."""
    if not env:
        return None
    key = os.environ.get(env)
    if key is None:
        raise UsageError(f"model {model}: environment variable {env} is not set")
    return key


def key_envs(
    given: str | Iterable[str] | Mapping[str, str] | None,
    http_models: Sequence[str],
    aliases: Mapping[str, str] | None = None,
    defaults: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Bind API-key variables to models: ``{model: VAR}``. ``defaults``: each model's own variable
    from the models file, used where ``given`` names none for that model.

    ``given``: ``NAME=VAR`` items (or a mapping NAME → VAR), NAME a model name or an alias
    (``small``/``large``); a bare ``VAR`` only when exactly one model is an HTTP endpoint.
    ``http_models``: the names of the models reached over HTTP (only they can receive a key).
    """
    aliases = dict(aliases or {})
    base = {m: v for m, v in (defaults or {}).items() if v and m in http_models}
    if given is None:
        return base
    items: list[tuple[str | None, str]] = []
    if isinstance(given, Mapping):
        items = [(str(k), str(v)) for k, v in given.items()]
    else:
        for item in [given] if isinstance(given, str) else given:
            key, sep, var = str(item).partition("=")
            items.append((key, var) if sep else (None, key))
    out: dict[str, str] = {}
    for name, var in items:
        if not var:
            raise UsageError(f"api key variable for {name!r} is empty (expected NAME=VAR)")
        if name is None:
            if len(http_models) != 1:
                named = ", ".join(http_models) or "none"
                raise UsageError(
                    f"--api-key-env {var}: say which model it belongs to (NAME={var}); "
                    f"a key is sent only to its own upstream (HTTP models: {named})"
                )
            name = http_models[0]
        name = aliases.get(name, name)
        if name not in http_models:
            raise UsageError(
                f"api key {var} is for {name!r}, which is not an HTTP model here "
                f"(HTTP models: {', '.join(http_models) or 'none'})"
            )
        if name in out and out[name] != var:
            raise UsageError(f"two API-key variables for {name}: {out[name]} and {var}")
        out[name] = var
    return {**base, **out}
