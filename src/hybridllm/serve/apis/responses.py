"""OpenAI's Responses API (``POST /v1/responses``): the request checked and read as a chat, its
usage and answer text (whole or streamed), and OpenAI's error shape (the chat routes' own).

Read as a chat: ``instructions`` is the system turn; ``input`` a string (one user turn) or a list
of items: messages (``developer`` read as ``system``), ``function_call`` items as an assistant's
tool calls, and every ``*_call_output`` item as a tool turn. Reasoning items and references to
stored items carry no text the router reads.

Usage: ``input_tokens`` counts all the prompt's tokens, those read from the cache
(``input_tokens_details.cached_tokens``) and written to it (``cache_write_tokens``) too; a
stream's usage is in its last event (``response.completed``, or ``response.incomplete`` /
``response.failed``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.responses import Response

from hybridllm.routing.conversation.chat import text_of
from hybridllm.routing.conversation.responses import chat_view as as_chat

from ..errors import RequestError
from ..protocol import bearer_key, error_body, error_type
from ._common import (
    ApiRequest,
    EventReader,
    Usage,
    check_common,
    check_parts,
    count,
    parse_body,
    positive_int,
    router_text,
    routing_name,
    tap,
)

API = "responses"
_TEXT = ("input_text", "output_text", "text")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: the stream events that end a response and carry its usage
_LAST = ("response.completed", "response.incomplete", "response.failed")


def client_key(headers: Mapping[str, str], keys: list[bytes]) -> bytes | None:
    """The key of ``keys`` the request carries: ``Authorization: Bearer``, as for a chat request."""
    return bearer_key(headers, keys)


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, param: str | None = None, code: Any = None
) -> Response:
    """OpenAI's error object, as the chat routes answer it."""
    return Response(error_body(message, error_type(status), param, code), status, headers=headers,
                    media_type="application/json")  # fmt: skip


def stream_error(message: str, code: str = "upstream_error") -> bytes:
    """The event that ends a relayed stream that broke (the Responses ``error`` event)."""
    data = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": 0}
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"


def upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's protocol headers for the upstream call: none (the upstream's ``Authorization``
    carries its own key, set by its backend)."""
    return {}


def check(raw: bytes, headers: Mapping[str, str], *, max_messages: int, turns: str, max_chars: int) -> ApiRequest:
    """A Responses request checked: every refusal a :class:`~hybridllm.serve.errors.RequestError`
    (400) naming the field, never another exception."""
    body, head, tail = parse_body(raw)
    model, stream = check_common(body)
    max_out = positive_int(body, "max_output_tokens", required=False)
    for key in ("instructions", "previous_response_id"):
        v = body.get(key)
        if v is not None and not isinstance(v, str):
            raise RequestError(400, f"'{key}' must be a string", key)
    previous = body.get("previous_response_id")
    if previous is not None and not 0 < len(previous) <= 256:
        raise RequestError(400, "'previous_response_id' must have 1-256 characters", "previous_response_id")
    items = body.get("input")
    if not isinstance(items, (str, list)):
        raise RequestError(400, "'input' must be a string or a list of input items", "input")
    if isinstance(items, list):
        if len(items) > max_messages:
            raise RequestError(400, f"too many input items ({len(items)} > {max_messages})", "input")
        for i, item in enumerate(items):
            _check_item(item, f"input[{i}]")
    chat = as_chat(body)
    return ApiRequest(
        API, body, model, routing_name(model, headers), body.get("hybridllm"), router_text(chat, turns, max_chars),
        stream, chat, max_out, previous, head, tail,
    )  # fmt: skip


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise RequestError(400, f"{where} must be an object", "input")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise RequestError(400, f"{where}.type must be a string", "input")
    if kind == "message":
        if not isinstance(item.get("role"), str) or item["role"] not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {', '.join(_ROLES)}", "input")
        check_parts(item.get("content"), f"{where}.content", _TEXT)
    elif kind.endswith("_call_output"):
        if not isinstance(item.get("call_id"), str):
            raise RequestError(400, f"{where}.call_id must be a string", "input")
        check_parts(item.get("output"), f"{where}.output", _TEXT, allow_none=True)
    elif kind.endswith("_call") and "call_id" in item and not isinstance(item["call_id"], str):
        raise RequestError(400, f"{where}.call_id must be a string", "input")
    if kind == "function_call" and not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
        raise RequestError(400, f"{where} (function_call) needs a string 'call_id', 'name' and 'arguments'", "input")


def usage(obj: Any) -> Usage | None:
    """A Responses usage object normalised (None when its counts are missing or not counts)."""
    if not isinstance(obj, dict):
        return None
    given, out = count(obj.get("input_tokens")), count(obj.get("output_tokens"))
    if given is None or out is None:
        return None
    details = obj.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = min(count(details.get("cached_tokens")) or 0, given)
    written = min(count(details.get("cache_write_tokens")) or 0, given - cached)
    return Usage(given, cached, written, out)


def answer_usage(payload: Any) -> Usage | None:
    return usage(payload.get("usage")) if isinstance(payload, dict) else None


def answer_text(payload: Any) -> str:
    """The ``output_text`` parts of a whole response's message items ('' when it has none)."""
    output = payload.get("output") if isinstance(payload, dict) else None
    if not isinstance(output, list):
        return ""
    messages = [o for o in output if isinstance(o, dict) and o.get("type") == "message"]
    return "".join(text_of(o.get("content"), ("output_text",)) for o in messages)


def response_id(payload: Any) -> str | None:
    """The id of a whole response (what a later request's ``previous_response_id`` names)."""
    rid = payload.get("id") if isinstance(payload, dict) else None
    return rid if isinstance(rid, str) else None


#: one name in both protocols' modules (:meth:`hybridllm.serve.wire.Wire.answer_id`)
answer_id = response_id


def replay(body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """The body a shadow call sends: the client's, not streamed, not stored upstream, its output
    capped at ``max_tokens``."""
    mine = body.get("max_output_tokens")
    cap = min(mine, max_tokens) if isinstance(mine, int) and not isinstance(mine, bool) and mine > 0 else max_tokens
    out = {k: v for k, v in body.items() if k != "hybridllm"}
    return dict(out, stream=False, store=False, max_output_tokens=cap)


class StreamWatch:
    """A relayed Responses stream read as it passes (:meth:`feed` each chunk): the response's id
    (``response.created``), its text deltas, its usage (the last event; None before it), and an
    ``error`` event's message."""

    def __init__(self) -> None:
        self._usage: Any = None
        self._text: list[str] = []
        self._final = ""
        self.error: str | None = None
        self.response_id: str | None = None
        self._reader = EventReader(self._on)

    def feed(self, chunk: bytes) -> None:
        self._reader.feed(chunk)

    @property
    def usage(self) -> Usage | None:
        return usage(self._usage)

    @property
    def text(self) -> str:
        return "".join(self._text) or self._final

    @property
    def prompt_seen(self) -> None:
        return None  # the Responses stream reports its usage at its end only

    @property
    def answer_id(self) -> str | None:
        return self.response_id

    def _on(self, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type", name)
        if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            self._text.append(data["delta"])
        elif kind == "response.created" and isinstance(data.get("response"), dict):
            self.response_id = response_id(data["response"])
        elif kind in _LAST and isinstance(data.get("response"), dict):
            self._usage = data["response"].get("usage")
            self._final = answer_text(data["response"])
            self.response_id = self.response_id or response_id(data["response"])
        elif kind == "error":
            msg = data.get("message")
            self.error = msg if isinstance(msg, str) else "error event"


def chat_usage(payload: Any) -> dict[str, Any]:
    """A whole answer's usage as a chat usage object ({} when it has none): what the proxy's
    record holds, prices and logs."""
    got = answer_usage(payload)
    return got.as_chat() if got is not None else {}


async def usage_events(stream: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
    """:func:`hybridllm.serve.settle.usage_events` for this protocol: the stream's chunks unchanged,
    ``ctx.usage`` set from its final usage (``response.completed``). Nothing is taken out: the usage is
    always in the stream."""
    async for chunk in tap(stream, StreamWatch(), ctx):
        yield chunk


def stream_text(chunks: Sequence[bytes]) -> str:
    """The answer's text in a relayed stream's chunks (a shadow check's answer)."""
    watch = StreamWatch()
    for chunk in chunks:
        watch.feed(chunk)
    return watch.text
