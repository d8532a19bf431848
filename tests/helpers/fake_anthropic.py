"""A real Anthropic Messages API server for tests (``POST /v1/messages``), plain and streamed.

It answers "echo:<last user text>", or, when the request offers ``tools`` and its last message
gives no tool result, a ``tool_use`` block calling the first tool (``stop_reason: tool_use``). Its
usage reports ``cache_read`` and ``cache_creation`` prompt tokens as set; a stream is Anthropic's
event sequence (``message_start`` with the prompt's usage, ``content_block_*``, ``ping``,
``message_delta`` with the output's cumulative usage, ``message_stop``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .fake_upstream import FakeUpstream, sse

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}  # fmt: skip


def last_user_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or [{}]
    content = msgs[-1].get("content")
    if isinstance(content, str):
        return content
    texts = [b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]
    results = [b for b in content or [] if isinstance(b, dict) and b.get("type") == "tool_result"]
    return " ".join(texts) or ("tool said " + json.dumps(results[0].get("content")) if results else "")


class FakeAnthropic(FakeUpstream):
    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key  # when set, a request without this key (x-api-key, else Bearer) is refused (401)
        self.cache_read = 0
        self.cache_creation = 0
        self.app.post("/v1/messages")(self._messages)

    def reset(self) -> None:
        super().reset()
        self.cache_read = self.cache_creation = 0

    def error(self, status: int, message: str) -> JSONResponse:
        err = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
        return JSONResponse({"type": "error", "error": err}, status_code=status)

    def _answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        msgs = body.get("messages") or []
        last = msgs[-1].get("content") if msgs else None
        answered = isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last)
        tools = body.get("tools")
        if tools and not answered:
            call = {"type": "tool_use", "id": f"toolu_{len(self.requests):04d}", "name": tools[0]["name"],
                    "input": {"query": last_user_text(body)}}  # fmt: skip
            return [call], "tool_use"
        return [{"type": "text", "text": f"echo:{last_user_text(body)}"}], "end_turn"

    def _usage(self, body: dict[str, Any], out: int) -> dict[str, Any]:
        return {
            "input_tokens": len(last_user_text(body).split()) + 3,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": out,
        }

    async def _messages(self, request: Request) -> Any:
        body, fault, midstream = await self.take(request)
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.key is not None and given != self.key:
            return self.error(401, "invalid x-api-key")
        if fault is not None:
            return fault
        content, stop = self._answer(body)
        out = sum(len(json.dumps(b.get("input")).split()) if b["type"] == "tool_use" else len(b["text"].split())
                  for b in content)  # fmt: skip
        msg = {"id": f"msg_{len(self.requests):04d}", "type": "message", "role": "assistant",
               "model": body["model"], "content": content, "stop_reason": stop, "stop_sequence": None,
               "usage": self._usage(body, out)}  # fmt: skip
        if body.get("stream"):
            return StreamingResponse(self.paced(self._events(msg), midstream), media_type="text/event-stream")
        return JSONResponse(msg)

    def _events(self, msg: dict[str, Any]) -> list[str]:
        """Anthropic's stream of one message: its usage in ``message_start`` (the output's count
        there is 1), text as ``text_delta``s one word each, a tool call's input as
        ``input_json_delta`` pieces, the output's final count in ``message_delta``."""
        start = dict(msg, content=[], stop_reason=None, usage=dict(msg["usage"], output_tokens=1))
        events = [ev("message_start", message=start), ev("ping")]
        for i, block in enumerate(msg["content"]):
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                words = block["text"].split(" ")
                deltas = [{"type": "text_delta", "text": (" " if j else "") + w} for j, w in enumerate(words)]
            else:
                first = dict(block, input={})
                args = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": args[j : j + 8]} for j in range(0, len(args), 8)]
            events.append(ev("content_block_start", index=i, content_block=first))
            events += [ev("content_block_delta", index=i, delta=d) for d in deltas]
            events.append(ev("content_block_stop", index=i))
        end = {"stop_reason": msg["stop_reason"], "stop_sequence": None}
        events.append(ev("message_delta", delta=end, usage={"output_tokens": msg["usage"]["output_tokens"]}))
        return [*events, ev("message_stop")]


def ev(kind: str, **data: Any) -> str:
    """One event of Anthropic's stream: its name, and the same name as its data's ``type``."""
    return sse(kind, {"type": kind, **data})
