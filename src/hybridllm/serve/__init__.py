"""The OpenAI-compatible routing proxy: each chat/completion request goes to the small or the large
upstream according to the router and the request's knob (see :mod:`.knobs`).

Layout: ``config`` (TOML + flags → one checked object), ``protocol`` (body limits, strict JSON,
request checks, error shape), ``knobs`` (routing names), ``batcher`` (router micro-batches),
``upstream`` (calls with deadlines), ``app`` (the ASGI routes), ``runner`` (bind, logging, uvicorn).
"""

from .app import ServeOptions, create_app, openai_error
from .config import ServeConfig, ServeConfigError
from .knobs import Knob, KnobError, parse_knob
from .upstream import Upstream

__all__ = [
    "Knob",
    "KnobError",
    "ServeConfig",
    "ServeConfigError",
    "ServeOptions",
    "Upstream",
    "create_app",
    "openai_error",
    "parse_knob",
]
