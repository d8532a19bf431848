"""Who may change server-wide state, and which browser pages may talk to the server at all.

- **The admin key** (``--admin-key-env VAR``): a request that changes server-wide state (today
  ``POST /dashboard/knob``: the default knob every tenant's plain ``hybrid`` follows) must carry it;
  a client key gets 403 naming the setting. The admin key also reads what a client key reads on the
  dashboard (``/dashboard/data``), so one key drives the whole page. With client keys and no admin
  key set, nobody changes server-wide state over HTTP.
- **Without client keys** (a loopback server, or ``--allow-unauthenticated``) every request (proxied
  ones too) must name an allowed ``Host`` (loopback names, the bound host, ``--allowed-host``): a page
  whose own name resolves to this server (DNS rebinding) gets 403 before any route runs, so it can
  neither read ``/dashboard/data`` or ``/metrics`` nor spend upstreams. A request that is not a
  GET/HEAD/OPTIONS must also carry no ``Origin`` or the server's own (the one its ``Host`` names): a
  cross-site form or ``text/plain`` POST gets 403. With client keys neither check runs: every route
  but ``/health`` and the dashboard's static page needs a key, which a foreign page cannot attach
  without a CORS preflight, and the server answers no preflight.
- No route sends CORS headers.

The check costs one pass over the request's header list, and runs only on servers without keys.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .protocol import bearer_key, openai_error

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
log = logging.getLogger("hybridllm.access")


def host_name(value: str) -> str:
    """The name in a ``Host`` value, lower-case, without port, brackets or a trailing dot."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v
    if v.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BrowserGuard:
    """The Host and Origin checks of a server without client keys. ``allowed``: host names beside the
    loopback ones (the bound host, ``--allowed-host``); ``*`` among them turns the Host check off
    (the Origin check stays: the Origin must then be the one its Host names)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        names = {host_name(h) for h in allowed if h}
        self.any_host = "*" in names
        self.allowed = frozenset(LOOPBACK_NAMES | names)
        self._seen: dict[bytes, bool] = {}  # Host header -> allowed: most requests repeat one value

    def host_ok(self, host: str) -> bool:
        name = host_name(host)
        return self.any_host or name in self.allowed or _is_loopback(name)

    def _host_ok(self, raw: bytes) -> bool:
        ok = self._seen.get(raw)
        if ok is None:
            ok = self.host_ok(raw.decode("latin-1"))
            if len(self._seen) >= 256:  # bounded: a client sending a new Host each time gains nothing
                self._seen.clear()
            self._seen[raw] = ok
        return ok

    def refuse(self, scope: dict[str, Any]) -> Response | None:
        """A 403 for a request a foreign browser page could have sent, else None."""
        raw_host = raw_origin = None
        for k, v in scope["headers"]:
            if k == b"host":
                raw_host = v
            elif k == b"origin":
                raw_origin = v
        if raw_host is not None and self._host_ok(raw_host) and (raw_origin is None or scope["method"] in SAFE_METHODS):
            return None  # the usual request: one dict lookup
        host = None if raw_host is None else raw_host.decode("latin-1")
        origin = None if raw_origin is None else raw_origin.decode("latin-1")
        if host is not None and not self.host_ok(host):
            return self._refused(
                scope, host, origin,
                f"Host {host[:100]!r} is not a name this server answers to without client keys: add it with "
                "--allowed-host NAME (allowed_host), or set client keys (--serve-api-key-env)",
            )  # fmt: skip
        if origin is not None and scope["method"] not in SAFE_METHODS and not self._same_origin(origin, host):
            return self._refused(
                scope, host, origin,
                f"cross-origin {scope['method']} from {origin[:100]!r} refused: a server without client keys takes "
                "state-changing requests only from its own pages (its names: loopback, the bound host, --allowed-host)",
            )  # fmt: skip
        return None

    def _same_origin(self, origin: str, host: str | None) -> bool:
        scheme, sep, netloc = origin.strip().lower().partition("://")
        if not sep or scheme not in ("http", "https") or host is None:
            return False
        return netloc == host.strip().lower() and self.host_ok(netloc)

    @staticmethod
    def _refused(scope: dict[str, Any], host: str | None, origin: str | None, message: str) -> Response:
        rec = {"event": "refused", "status": 403, "method": scope["method"], "path": scope["path"][:200],
               "host": (host or "")[:100], "origin": (origin or "")[:100], "setting": "allowed_host"}  # fmt: skip
        log.info(json.dumps(rec))
        return openai_error(403, message, code="forbidden_host")


class AdminGate:
    """The admin key's check on routes that change server-wide state. ``is_client(request)``: the
    request carries a valid client key (the proxy's check)."""

    def __init__(self, admin_keys: Iterable[str], client_keys: bool, is_client: Callable[[Request], bool]) -> None:
        self._keys = [k.encode() for k in admin_keys]
        self._client_keys, self._is_client = client_keys, is_client

    def is_admin(self, request: Request) -> bool:
        return bool(self._keys) and bearer_key(request.headers, self._keys) is not None

    def reads(self, request: Request) -> bool:
        """May read what a client key reads (the dashboard's data): a client key or the admin key."""
        return self._is_client(request) or self.is_admin(request)

    def refuse(self, request: Request) -> Response | None:
        """None when the request may change server-wide state, else its 401/403."""
        if not self._keys and not self._client_keys:
            return None  # a keyless server: the BrowserGuard's Host and Origin checks already ran
        if self.is_admin(request):
            return None
        if self._client_keys and self._is_client(request):
            why = (
                "this server has no admin key: start it with --admin-key-env VAR"
                if not self._keys
                else "send the admin key (--admin-key-env)"
            )
            return openai_error(
                403,
                f"a client key cannot change server-wide state (the default knob): {why}",
                code="admin_key_required",
            )
        return openai_error(
            401,
            "changing server-wide state (the default knob) needs the admin key (--admin-key-env)",
            code="admin_key_required",
            headers={"WWW-Authenticate": "Bearer"},
        )
