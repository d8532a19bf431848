"""The OpenAI-compatible routing proxy: each chat/completion request goes to the small or the large
upstream (a :class:`hybridllm.backends.Backend`) according to the router and the request's knob (see :mod:`.knobs`).

Layout: ``config`` (TOML + flags → one checked object), ``protocol`` (body limits, strict JSON,
request checks, error shape), ``knobs`` (routing names), ``batcher`` (router micro-batches),
``app`` (the ASGI routes), ``telemetry`` (Prometheus counters and spend), ``runner`` (bind,
logging, uvicorn).

May import :mod:`hybridllm.model` (the router) and the layers below it; never the Ray engine or the
CLI.
"""

from .app import ServeOptions, create_app, openai_error
from .config import ServeConfig, ServeConfigError
from .knobs import Knob, KnobError, parse_knob

__all__ = [
    "Knob",
    "KnobError",
    "ServeConfig",
    "ServeConfigError",
    "ServeOptions",
    "create_app",
    "openai_error",
    "parse_knob",
]
