"""The OpenAI-compatible routing proxy: each chat/completion request goes to the small or the large
upstream (a :class:`hybridllm.backends.Backend`) according to the router and the request's knob (see :mod:`.knobs`).

Layout: ``settings`` (every setting once: its TOML key, flag, default and help), ``config`` (TOML +
flags → one checked object) and ``options`` (what the running proxy reads, frozen), ``protocol`` (body
limits, strict JSON, request checks, error shape), ``knobs`` (routing names), ``admin_knob`` (the
run-time default knob), ``upstreams`` (the router's models as upstreams, fallback order), ``batcher``
(router micro-batches), ``decision`` (the decision seam: a ``Decider`` says where a request goes),
``hooks`` (the request path's plug-in points and its typed per-request context), ``proxy`` (the
request path), ``settle`` (what an answer is charged, the stream relay), ``telemetry`` (Prometheus
counters, the access log) and ``traffic`` (the dashboard's window), ``app`` (the ASGI routes, and the
composition root), ``dashboard``, ``runner`` (bind, logging, uvicorn). Live control plugs in as hooks:
``control`` (budget caps, steering, shadow checks, the outcomes log, live estimates, the hold), over
``state`` (the spend counters, in process or in Redis); the core never imports either.

May import :mod:`hybridllm.model` (the router) and the layers below it; never the Ray engine or the
CLI.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import ServeConfig, ServeConfigError
    from .decision import Decider, PolicyDecider, RouteDecision, ServingRouter
    from .hooks import BaseHook, Hook, RequestContext, Slot
    from .knobs import Knob, KnobError, parse_knob
    from .options import ServeOptions
    from .protocol import openai_error

#: each name's module, imported on first use: `hybridllm --help` reads serve.settings (every
#: setting's flag and help) without loading the app, FastAPI or the backends
_LAZY = {
    "create_app": ".app",
    "ServeConfig": ".config",
    "ServeConfigError": ".config",
    "Decider": ".decision",
    "PolicyDecider": ".decision",
    "RouteDecision": ".decision",
    "ServingRouter": ".decision",
    "BaseHook": ".hooks",
    "Hook": ".hooks",
    "RequestContext": ".hooks",
    "Slot": ".hooks",
    "Knob": ".knobs",
    "KnobError": ".knobs",
    "parse_knob": ".knobs",
    "ServeOptions": ".options",
    "openai_error": ".protocol",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)


__all__ = [
    "BaseHook",
    "Decider",
    "Hook",
    "Knob",
    "KnobError",
    "PolicyDecider",
    "RequestContext",
    "RouteDecision",
    "ServeConfig",
    "ServeConfigError",
    "ServeOptions",
    "ServingRouter",
    "Slot",
    "create_app",
    "openai_error",
    "parse_knob",
]
