"""The OpenAI side of the proxy: reading a request body within limits, strict JSON, the checks a
request must pass before it can be routed, OpenAI's error shape for every refusal, and the text of
an answer (whole or streamed) for a hook that asked for it.

Why strict here: the proxy forwards the body upstream and feeds its text to the router, so anything
that would make either fail later (non-finite numbers, lone surrogates, non-string content parts,
absurd nesting) is refused up front with a 4xx that names the field, never a 500, and never inside
a micro-batch shared with other requests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from hybridllm.backends._types import within
from hybridllm.features.text import flatten
from hybridllm.tables.format import lone_surrogate

from .errors import RequestError


def bearer_key(headers: Any, keys: list[bytes]) -> bytes | None:
    """The key of ``keys`` that the request's ``Authorization: Bearer`` header carries (None: none
    does). Every key is compared, each in constant time."""
    auth = headers.get("authorization", "")
    token = (auth[7:] if auth.lower().startswith("bearer ") else "").encode()
    found = None
    for k in keys:
        if hmac.compare_digest(token, k):
            found = k
    return found


def error_body(message: str, etype: str = "invalid_request_error", param: str | None = None, code: Any = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": etype, "param": param, "code": code}}).encode()


def error_type(status: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        408: "timeout_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "upstream_error" if status >= 500 else "invalid_request_error")


async def read_body(request: Any, limit: int, timeout_s: float) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (by its Content-Length, or while it
    arrives), and refused when the client takes longer than ``timeout_s`` to send it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 15:
            raise RequestError(400, "malformed Content-Length header")
        if int(declared) > limit:
            raise RequestError(413, f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0

    async def receive_all() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body over {limit} bytes")
            chunks.append(chunk)

    try:
        await within(receive_all(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"request body not received within {timeout_s:g} s") from None
    except ClientDisconnect:  # the client hung up mid-body: its doing, logged as such, not an internal error
        raise RequestError(499, "the client closed the connection before its body arrived") from None
    return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 30:
        raise ValueError(f"integer with {len(text)} digits is out of range")
    return int(text)


#: one decoder with the strict hooks, built once: ``json.loads`` with hooks builds a new one per call
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)


def parse_json(raw: bytes) -> dict[str, Any]:
    """Strict JSON: an object, finite numbers, integers of sane size, no lone surrogates."""
    try:
        # what json.loads does with bytes (UTF-8, -16 or -32 by its first bytes), then the decoder;
        # strictly: a surrogate encoded as raw bytes is not UTF-8 (escaped ones are checked below)
        encoding = json.detect_encoding(raw)
        body = _DECODER.decode(raw.decode(encoding))
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise RequestError(400, "malformed JSON: body is not UTF-8") from None
    except ValueError as exc:  # JSONDecodeError and the hooks' refusals
        raise RequestError(400, f"malformed JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    # raw surrogates failed to decode: only escapes are left to find (in UTF-8, none without "\u")
    if encoding != "utf-8" or b"\\u" in raw or b"\\U" in raw:
        where = lone_surrogate(body)
        if where is not None:
            raise RequestError(
                400, f"{where or 'body'}: string holds a lone surrogate (\\ud800-\\udfff)", where or None
            )
    return body


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: the body to forward, the routing name, and the text the router reads."""

    body: dict[str, Any]
    model: str
    text: str
    stream: bool


def _check_content(content: Any, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise RequestError(400, f"{where}.content must be a string, null or a list of content parts", where)
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise RequestError(400, f"{where}.content[{j}] must be an object", where)
        if "type" in part and not isinstance(part["type"], str):
            raise RequestError(400, f"{where}.content[{j}].type must be a string", where)
        if "text" in part and not isinstance(part["text"], str):
            raise RequestError(400, f"{where}.content[{j}].text must be a string", where)


def bound_text(text: str, max_chars: int) -> str:
    """What the router tokenises: all of ``text`` up to ``max_chars``, else its head and its tail
    (the question usually sits at one end of a long prompt)."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n" + text[-half:]


def check_request(body: dict[str, Any], kind: str, max_messages: int, turns: str, max_chars: int) -> ChatRequest:
    """Validate a chat/completion body and extract the routing name and the router's text."""
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise RequestError(400, "'model' is required and must be a string of at most 256 characters", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    for field in ("n", "best_of"):  # what a request's cost bound multiplies by: a count or nothing
        v = body.get(field)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise RequestError(400, f"'{field}' must be a positive integer", field)
    if kind == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError(400, "'messages' must be a non-empty list", "messages")
        if len(msgs) > max_messages:
            raise RequestError(400, f"too many messages ({len(msgs)} > {max_messages})", "messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise RequestError(400, f"messages[{i}] must be an object with a string 'role'", "messages")
            _check_content(m.get("content"), f"messages[{i}]")
        # the turns the router reads, flattened here so the bound below keeps the question in view
        # (the router normalises the text itself)
        text = flatten([{"role": m["role"], "content": m.get("content")} for m in msgs], turns)
    else:
        p = body.get("prompt")
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            p = "\n".join(p)
        if not isinstance(p, str):
            raise RequestError(400, "'prompt' must be a string or a list of strings", "prompt")
        text = p
    return ChatRequest(body, model, bound_text(text, max_chars), stream)


def openai_error(status: int, message: str, param: str | None = None, code: Any = None, headers: Any = None) -> Any:
    return Response(
        error_body(message, error_type(status), param, code),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def answer_text(payload: Any) -> str:
    """The text of an OpenAI-shaped chat or completion answer ('' when it has none)."""
    try:
        choice = payload["choices"][0]
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, dict) else choice.get("text")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return text if isinstance(text, str) else ""


def stream_text(chunks: Sequence[bytes]) -> str:
    """The text of a relayed SSE stream, from its ``data:`` events' deltas."""
    out = []
    for line in b"".join(chunks).split(b"\n"):
        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
            continue
        try:
            choice = json.loads(line[5:])["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(piece, str):
            out.append(piece)
    return "".join(out)
