"""Each proxied route's protocol as the request path sees it: one :class:`Wire` per request kind,
looked up once per request (:data:`WIRES`), so that the path (:class:`~hybridllm.serve.proxy.Proxy`)
and the hooks that replay a request (shadow checks) have no branch per protocol.

- ``chat`` and ``completion`` (``/v1/chat/completions``, ``/v1/completions``): OpenAI's chat and
  completions APIs, the body parsed and sent re-encoded with the upstream's model name
  (:meth:`Backend.forward`); a stream asks for its usage chunk.
- ``messages`` (``/v1/messages``, Anthropic's Messages API) and ``responses`` (``/v1/responses``,
  OpenAI's Responses API): :class:`ApiWire` over their modules in :mod:`hybridllm.serve.apis`; the
  body's bytes are relayed as the client sent them but for the model name
  (:meth:`Backend.forward_raw`), the usage is always in the answer.

A wire also names the API an upstream must speak (``api``: the models file's ``api`` key): a request
is only ever sent to an upstream of its own protocol, never translated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

from starlette.responses import Response

from hybridllm.backends import Answer, Backend, Failure

from .apis import PROTOCOLS, ApiRequest
from .hooks import RequestContext
from .protocol import answer_text, bearer_key, check_request, error_body, openai_error, parse_json, stream_text
from .settle import usage_events, whole_usage

NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Checked:
    """A request checked by its wire: ``body`` what the upstream is sent (its ``hybridllm`` field
    taken out), ``name`` the routing name the decider reads, ``extra`` the ``hybridllm`` field,
    ``text`` what the router reads (bounded), ``prompt`` the conversation as the request gave it
    (chat's messages, completions' prompt; Messages and Responses as chat messages: what a judge
    reads and ``--log-prompts`` keeps), ``headers`` the client's protocol headers for the upstream
    (never a key), ``api`` the Messages or Responses request with its body's bytes."""

    body: dict[str, Any]
    name: str
    extra: Any
    text: str
    stream: bool
    prompt: Any
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    api: ApiRequest | None = None


class Wire:
    """OpenAI's chat (``kind`` ``chat``, prompt field ``messages``) or completions API (``completion``,
    ``prompt``): what the request path calls for one request of that kind."""

    api = "chat"
    #: a stream is asked for its usage chunk (taken out again when the client did not ask for it)
    asks_usage = True

    def __init__(self, kind: str, prompt_field: str) -> None:
        self.kind, self._prompt_field = kind, prompt_field

    def client_key(self, headers: Mapping[str, str], keys: list[bytes]) -> bytes | None:
        """The key of ``keys`` the request carries (``Authorization: Bearer``)."""
        return bearer_key(headers, keys)

    def check(self, raw: bytes, headers: Mapping[str, str], max_messages: int, turns: str, max_chars: int) -> Checked:
        """The body read and checked: a :class:`~hybridllm.serve.errors.RequestError` (400) naming
        the field for anything the upstream or the router could not read."""
        body = parse_json(raw)
        extra = body.pop("hybridllm", None)
        req = check_request(body, self.kind, max_messages, turns, max_chars)
        return Checked(req.body, req.model, extra, req.text, req.stream, body.get(self._prompt_field))

    def send(
        self, up: Backend, body: dict[str, Any], stream: bool, headers: Mapping[str, str], raw: ApiRequest | None = None
    ) -> Awaitable[Answer | Failure]:
        """One attempt at ``up`` with ``body`` under ``up``'s own model name."""
        return up.forward(self.kind, dict(body, model=up.model), stream)

    def usage(self, payload: Any) -> dict[str, Any]:
        """A whole answer's usage as a chat usage object: what the proxy prices and logs."""
        return whole_usage(payload)

    def answer_text(self, payload: Any) -> str:
        return answer_text(payload)

    def answer_id(self, payload: Any) -> str | None:
        """A whole answer's id that a later request may name (None: the protocol has none)."""
        return None

    def stream_text(self, chunks: Sequence[bytes]) -> str:
        return stream_text(chunks)

    def usage_events(self, stream: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
        """The stream relayed by whole events, its usage read into ``ctx.usage``."""
        return usage_events(stream, ctx)

    def stream_error(self, message: str) -> bytes:
        """The event that ends a relayed stream whose upstream broke."""
        return b"data: " + error_body(message, "upstream_error") + b"\n\n"

    def error(
        self, status: int, message: str, param: str | None = None, code: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:  # fmt: skip
        """An error response in the protocol's shape."""
        return openai_error(status, message, param, code, headers)


class ApiWire(Wire):
    """A protocol of :mod:`hybridllm.serve.apis` (``proto``: its module, Messages or Responses)."""

    asks_usage = False

    def __init__(self, proto: ModuleType) -> None:
        super().__init__(proto.API, "input")
        self.api = proto.API
        self.proto = proto

    def client_key(self, headers: Mapping[str, str], keys: list[bytes]) -> bytes | None:
        return self.proto.client_key(headers, keys)

    def check(self, raw: bytes, headers: Mapping[str, str], max_messages: int, turns: str, max_chars: int) -> Checked:
        req: ApiRequest = self.proto.check(raw, headers, max_messages=max_messages, turns=turns, max_chars=max_chars)
        body = req.body
        if "hybridllm" in body:  # out of what a hook or a replay sees (the relayed bytes have it out already)
            body = {k: v for k, v in body.items() if k != "hybridllm"}
        return Checked(body, req.name, req.extra, req.text, req.stream, req.chat,
                       self.proto.upstream_headers(headers), req)  # fmt: skip

    def send(
        self, up: Backend, body: dict[str, Any], stream: bool, headers: Mapping[str, str], raw: ApiRequest | None = None
    ) -> Awaitable[Answer | Failure]:
        """One attempt at ``up``: the client's bytes with ``up``'s model name when ``raw`` is given
        (the body unchanged since it was checked), else ``body`` encoded."""
        if raw is not None:
            data = raw.for_upstream(up.model)
        else:
            data = json.dumps(dict(body, model=up.model), ensure_ascii=False, separators=(",", ":")).encode()
        return up.forward_raw(self.kind, data, stream, headers)

    def usage(self, payload: Any) -> dict[str, Any]:
        return self.proto.chat_usage(payload)

    def answer_text(self, payload: Any) -> str:
        return self.proto.answer_text(payload)

    def answer_id(self, payload: Any) -> str | None:
        return self.proto.answer_id(payload)

    def stream_text(self, chunks: Sequence[bytes]) -> str:
        return self.proto.stream_text(chunks)

    def usage_events(self, stream: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
        return self.proto.usage_events(stream, ctx)

    def stream_error(self, message: str) -> bytes:
        return self.proto.stream_error(message)

    def error(
        self, status: int, message: str, param: str | None = None, code: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:  # fmt: skip
        return self.proto.error_response(status, message, headers, param, code)


#: the wire of each request kind (``RequestContext.kind``)
WIRES: Mapping[str, Wire] = MappingProxyType(
    {"chat": Wire("chat", "messages"), "completion": Wire("completion", "prompt")}
    | {api: ApiWire(proto) for api, proto in PROTOCOLS.items()}
)
