"""The OpenAI-compatible routing proxy: each chat/completion request goes to the small or the large
upstream (a :class:`hybridllm.backends.Backend`) according to the router and the request's knob (see :mod:`.knobs`).

Layout: ``settings`` (every setting once: its TOML key, flag, default and help), ``config`` (TOML +
flags → one checked object) and ``options`` (what the running proxy reads), ``protocol`` (body
limits, strict JSON, request checks, error shape), ``knobs`` (routing names), ``control`` (the
run-time default knob), ``routing`` (the router's models as upstreams, fallback order), ``batcher``
(router micro-batches), ``decision`` (the decision seam: a ``Decider`` says where a request goes),
``proxy`` (the request path), ``app`` (the ASGI routes), ``telemetry`` (Prometheus counters and
spend), ``dashboard``, ``runner`` (bind, logging, uvicorn).

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
    "Decider",
    "Knob",
    "KnobError",
    "PolicyDecider",
    "RouteDecision",
    "ServeConfig",
    "ServeConfigError",
    "ServeOptions",
    "ServingRouter",
    "create_app",
    "openai_error",
    "parse_knob",
]
