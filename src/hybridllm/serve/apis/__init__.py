"""The protocols agents speak besides chat completions: Anthropic's Messages API
(:mod:`.messages`, ``POST /v1/messages``) and OpenAI's Responses API (:mod:`.responses`,
``POST /v1/responses``).

Each module is a set of pure functions over one protocol, the same names in both: ``check`` (the
body's bytes and headers → an :class:`ApiRequest`, or a 400 as
:class:`~hybridllm.serve.errors.RequestError`), ``client_key``, ``upstream_headers``,
``answer_usage`` / ``answer_text`` (a whole answer), ``StreamWatch`` (a relayed
stream's usage and text), ``replay`` (a shadow call's body), ``error_response`` / ``stream_error``
(the protocol's error shape). :data:`PROTOCOLS` maps each API name to its module. The request's
bytes are relayed unchanged except the model name (:meth:`ApiRequest.for_upstream`); no request is
translated from one protocol to another.
"""

from __future__ import annotations

from types import ModuleType

from . import messages, responses
from ._common import KNOB_HEADER, ApiRequest, Usage

#: each API a models-file entry may speak besides ``chat``, and the module that speaks it
PROTOCOLS: dict[str, ModuleType] = {messages.API: messages, responses.API: responses}

__all__ = ["KNOB_HEADER", "PROTOCOLS", "ApiRequest", "Usage", "messages", "responses"]
