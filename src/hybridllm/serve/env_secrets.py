"""Settings read from the environment so that they stay out of the process list (``ps``): the admin
keys and the state URL (which may hold a Redis password); and the check of an ``allowed_host`` name.
Every refusal names its setting and never repeats the secret."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re

from .errors import ServeConfigError

#: a Host name ``--allowed-host`` takes: a DNS name, or an IPv4/IPv6 address (no scheme, no port)
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


def check_host_name(item: str) -> str:
    """``item`` when it is a host name, an IP address (``[::1]`` too) or ``*``; else ValueError."""
    if item == "*" or _HOST_NAME.fullmatch(item):
        return item
    try:
        ipaddress.ip_address(item.strip("[]"))
    except ValueError:
        raise ValueError(f"{item[:60]!r}: expected a host name or IP address (no scheme, no port), or *") from None
    return item


def admin_keys(var: str | None, client_keys: list[str]) -> list[str]:
    """The admin keys in ``$var`` (comma-separated, for a rotation); refused when one is also a client key."""
    if not var:
        return []
    keys = [k.strip() for k in os.environ.get(var, "").split(",") if k.strip()]
    if not keys:
        raise ServeConfigError(f"admin_key_env: environment variable {var} holds no key")
    if set(keys) & set(client_keys):
        raise ServeConfigError(
            f"admin_key_env: the admin key in {var} is also a client key (serve_api_key_env): "
            "every tenant could change server-wide state; give the admin a key of its own"
        )
    return keys


def state_url(state: str | None, var: str | None) -> str | None:
    """The state URL: ``state``, or read from ``$var`` (``state_env``), which keeps a password out of ``ps``."""
    if state and var:
        raise ServeConfigError("state and state_env: give one (state_env keeps a password out of `ps`)")
    if not var:
        return state
    url = os.environ.get(var, "").strip()
    if not url:
        raise ServeConfigError(f"state_env: environment variable {var} is unset or empty")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ServeConfigError(f"state_env: ${var} is not a redis:// URL")
    return url


#: the fewest characters a session secret may have (derived session ids are only as unguessable as it)
MIN_SESSION_SECRET = 16


def session_secret(var: str) -> bytes | None:
    """The key derived session ids are made with, from ``$var`` (any text of
    :data:`MIN_SESSION_SECRET` characters or more, hashed to 32 bytes); None when it is unset or
    empty (the server then makes one of its own: :func:`hybridllm.serve.control.sessions.secret`)."""
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    if len(value) < MIN_SESSION_SECRET:
        raise ServeConfigError(
            f"session_secret_env: ${var} holds {len(value)} characters; a session secret needs at least "
            f"{MIN_SESSION_SECRET} (e.g. `openssl rand -hex 32`)"
        )
    return hashlib.sha256(b"hybridllm-session-secret\0" + value.encode()).digest()
