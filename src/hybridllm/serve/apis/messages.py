"""Anthropic's Messages API (``POST /v1/messages``): the request checked and read as a chat, its
usage and answer text (whole or streamed), and Anthropic's error shape.

Read as a chat: ``system`` is the system turn; a user message's ``tool_result`` blocks are tool
turns (as a chat's ``role: tool`` messages, which come before the user's text), its other text
blocks the user turn; an assistant's ``tool_use`` blocks its tool calls. The router then reads it
exactly as it reads the same conversation sent to ``/v1/chat/completions``.

Usage: Anthropic's ``input_tokens`` leaves out the prompt's cache reads and cache writes, so the
prompt is all three; a stream's usage comes in ``message_start`` and is updated by each
``message_delta`` (whose counts are cumulative).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.responses import Response

from hybridllm.routing.conversation.chat import text_of
from hybridllm.routing.conversation.messages import chat_view as as_chat

from ..errors import RequestError
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

API = "messages"
#: the API version sent upstream when the client names none (the one every SDK sends)
DEFAULT_VERSION = "2023-06-01"
#: the client's headers relayed upstream as they are (never a key: the upstream gets its own)
RELAYED_HEADERS = ("anthropic-version", "anthropic-beta")
_TEXT = ("text",)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, request_id: str | None = None) -> bytes:
    """Anthropic's error object: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    out: dict[str, Any] = {"type": "error", "error": {"type": error_type(status), "message": message}}
    if request_id is not None:
        out["request_id"] = request_id
    return json.dumps(out).encode()


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, param: str | None = None, code: Any = None
) -> Response:
    """Anthropic's error response (its shape names no field nor code: ``param`` and ``code``, the
    chat routes' own, are not in it)."""
    rid = headers.get("x-hybridllm-request-id") if headers else None
    return Response(error_body(status, message, rid), status, headers=headers, media_type="application/json")


def stream_error(message: str, status: int = 502) -> bytes:
    """The event that ends a relayed stream that broke (Anthropic's ``error`` event)."""
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"


def client_key(headers: Mapping[str, str], keys: list[bytes]) -> bytes | None:
    """The key of ``keys`` the request carries: Anthropic's ``x-api-key`` (what its SDK sends with
    ``api_key``), else ``Authorization: Bearer`` (with ``auth_token``). Each key compared in
    constant time."""
    auth = headers.get("authorization", "")
    bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
    token = (headers.get("x-api-key") or bearer).encode()
    found = None
    for k in keys:
        if hmac.compare_digest(token, k):
            found = k
    return found


def upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's protocol headers for the upstream call: its API version (default
    ``DEFAULT_VERSION``) and beta flags, nothing else (the upstream's key is its own)."""
    out = {h: headers[h] for h in RELAYED_HEADERS if headers.get(h)}
    out.setdefault("anthropic-version", DEFAULT_VERSION)
    return out


def check(raw: bytes, headers: Mapping[str, str], *, max_messages: int, turns: str, max_chars: int) -> ApiRequest:
    """A Messages request checked: every refusal a :class:`~hybridllm.serve.errors.RequestError`
    (400) naming the field, never another exception."""
    body, head, tail = parse_body(raw)
    model, stream = check_common(body)
    max_out = positive_int(body, "max_tokens", required=True)
    system = body.get("system")
    if system is not None:
        check_parts(system, "system", _TEXT)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    if len(msgs) > max_messages:
        raise RequestError(400, f"too many messages ({len(msgs)} > {max_messages})", "messages")
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise RequestError(400, f"{where} must be an object with 'role' user or assistant", "messages")
        check_parts(m.get("content"), f"{where}.content", _TEXT)
        for j, block in enumerate(m["content"] if isinstance(m["content"], list) else []):
            _check_block(block, f"{where}.content[{j}]")
    chat = as_chat(body)
    return ApiRequest(
        API, body, model, routing_name(model, headers), body.get("hybridllm"), router_text(chat, turns, max_chars),
        stream, chat, max_out, None, head, tail,
    )  # fmt: skip


def _check_block(block: dict[str, Any], where: str) -> None:
    kind = block["type"]
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise RequestError(400, f"{where}.tool_use_id must be a string", "messages")
        check_parts(block.get("content"), f"{where}.content", _TEXT, allow_none=True)
    elif kind == "tool_use" and not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)):
        raise RequestError(400, f"{where} (tool_use) needs a string 'id' and 'name'", "messages")


def usage(obj: Any) -> Usage | None:
    """A Messages usage object normalised (None when its counts are missing or not counts)."""
    if not isinstance(obj, dict):
        return None
    given, out = count(obj.get("input_tokens")), count(obj.get("output_tokens"))
    if given is None or out is None:
        return None
    read = count(obj.get("cache_read_input_tokens")) or 0
    write = count(obj.get("cache_creation_input_tokens")) or 0
    return Usage(given + read + write, read, write, out)


def answer_usage(payload: Any) -> Usage | None:
    return usage(payload.get("usage")) if isinstance(payload, dict) else None


def answer_id(payload: Any) -> str | None:
    """None: no later Messages request names an answer (the client sends the whole conversation)."""
    return None


def answer_text(payload: Any) -> str:
    """The text blocks of a whole answer ('' when it has none)."""
    content = payload.get("content") if isinstance(payload, dict) else None
    return text_of(content, _TEXT) if isinstance(content, list) else ""


def replay(body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """The body a shadow call sends: the client's, not streamed, its output capped at ``max_tokens``."""
    mine = body.get("max_tokens")
    cap = min(mine, max_tokens) if isinstance(mine, int) and not isinstance(mine, bool) and mine > 0 else max_tokens
    out = {k: v for k, v in body.items() if k != "hybridllm"}
    return dict(out, stream=False, max_tokens=cap)


class StreamWatch:
    """A relayed Messages stream read as it passes (:meth:`feed` each chunk): its usage
    (``message_start``, updated by each ``message_delta``; None until a ``message_delta`` has
    given the output's count: a stream cut before it is charged ``message_start``'s prompt count
    and its output bound, not one output token),
    its text deltas, and an ``error`` event's message."""

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}
        self._final = False
        self._text: list[str] = []
        self.error: str | None = None
        self.message_id: str | None = None
        self._reader = EventReader(self._on)

    def feed(self, chunk: bytes) -> None:
        self._reader.feed(chunk)

    @property
    def usage(self) -> Usage | None:
        return usage(self._usage) if self._final else None

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def prompt_seen(self) -> int | None:
        """The prompt's tokens as ``message_start`` reported them (cache reads and writes included)."""
        if not self._usage:
            return None
        parts = [count(self._usage.get(k)) for k in ("input_tokens", "cache_read_input_tokens",
                                                      "cache_creation_input_tokens")]  # fmt: skip
        return None if parts[0] is None else sum(p or 0 for p in parts)

    @property
    def answer_id(self) -> str | None:
        return None  # as :func:`answer_id`

    def _on(self, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("type", name)
        if kind == "message_start" and isinstance(data.get("message"), dict):
            msg = data["message"]
            self.message_id = msg.get("id") if isinstance(msg.get("id"), str) else None
            if isinstance(msg.get("usage"), dict):
                self._usage = dict(msg["usage"])
        elif kind == "message_delta" and isinstance(data.get("usage"), dict):
            self._usage.update({k: v for k, v in data["usage"].items() if v is not None})
            self._final = True
        elif kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            delta = data["delta"]
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self._text.append(delta["text"])
        elif kind == "error":
            err = data.get("error")
            msg = err.get("message") if isinstance(err, dict) else None
            self.error = msg if isinstance(msg, str) else "error event"


def chat_usage(payload: Any) -> dict[str, Any]:
    """A whole answer's usage as a chat usage object ({} when it has none): what the proxy's
    record holds, prices and logs."""
    got = answer_usage(payload)
    return got.as_chat() if got is not None else {}


async def usage_events(stream: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[bytes]:
    """:func:`hybridllm.serve.settle.usage_events` for this protocol: the stream's chunks unchanged,
    ``ctx.usage`` set from its final usage (``message_delta``). Nothing is taken out: the usage is
    always in the stream."""
    async for chunk in tap(stream, StreamWatch(), ctx):
        yield chunk


def stream_text(chunks: Sequence[bytes]) -> str:
    """The answer's text in a relayed stream's chunks (a shadow check's answer)."""
    watch = StreamWatch()
    for chunk in chunks:
        watch.feed(chunk)
    return watch.text
