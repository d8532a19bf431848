"""A real OpenAI Responses API server for tests (``POST /v1/responses``), plain and streamed.

It answers "echo:<last user text>" as a message item, or, when the request offers ``tools`` and
its last input item is no tool output, a ``function_call`` item calling the first tool. Its usage
counts ``cached`` prompt tokens (in ``input_tokens`` and ``input_tokens_details.cached_tokens``);
a stream is the Responses event sequence (``response.created`` ... ``response.output_text.delta``
... ``response.completed`` with the usage), each event with its ``sequence_number``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .fake_upstream import FakeUpstream, sse


def last_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    if isinstance(items, str):
        return items
    last = items[-1] if items else {}
    if str(last.get("type", "")).endswith("_call_output"):
        return f"tool said {last.get('output')}"
    content = last.get("content")
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


class FakeResponses(FakeUpstream):
    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key  # when set, a request without "Authorization: Bearer <key>" is refused (401)
        self.cached = 0  # prompt tokens read from the cache (counted in input_tokens too)
        self.cache_write = 0  # prompt tokens written to the cache (counted in input_tokens too)
        self.app.post("/v1/responses")(self._responses)

    def reset(self) -> None:
        super().reset()
        self.cached = self.cache_write = 0

    def error(self, status: int, message: str) -> JSONResponse:
        kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)

    def _output(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        n = len(self.requests)
        items = body.get("input")
        last = items[-1] if isinstance(items, list) and items else {}
        answered = str(last.get("type", "")).endswith("_call_output")
        tools = body.get("tools")
        if tools and not answered:
            args = json.dumps({"query": last_user_text(body)})
            return [{"type": "function_call", "id": f"fc_{n:04d}", "call_id": f"call_{n:04d}", "name": tools[0]["name"],
                     "arguments": args, "status": "completed"}]  # fmt: skip
        text = f"echo:{last_user_text(body)}"
        part = {"type": "output_text", "text": text, "annotations": []}
        return [{"type": "message", "id": f"msg_{n:04d}", "status": "completed", "role": "assistant",
                 "content": [part]}]  # fmt: skip

    def _response(self, body: dict[str, Any], output: list[dict[str, Any]], status: str) -> dict[str, Any]:
        words = sum(len((o.get("arguments") or o.get("content", [{}])[0].get("text", "")).split()) for o in output)
        given = len(last_user_text(body).split()) + 3 + self.cached + self.cache_write
        details = {"cached_tokens": self.cached, "cache_write_tokens": self.cache_write}
        usage = {"input_tokens": given, "input_tokens_details": details, "output_tokens": words,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": given + words}  # fmt: skip
        return {
            "id": f"resp_{len(self.requests):04d}", "object": "response", "created_at": 1700000000, "status": status,
            "model": body["model"], "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": body.get("tools") or [], "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "metadata": {}, "temperature": 1.0, "top_p": 1.0,
            "previous_response_id": body.get("previous_response_id"),
            "usage": usage if status == "completed" else None,
        }  # fmt: skip

    async def _responses(self, request: Request) -> Any:
        body, fault, midstream = await self.take(request)
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            return self.error(401, "invalid api key")
        if fault is not None:
            return fault
        output = self._output(body)
        done = self._response(body, output, "completed")
        if body.get("stream"):
            return StreamingResponse(self.paced(self._events(done), midstream), media_type="text/event-stream")
        return JSONResponse(done)

    def _events(self, done: dict[str, Any]) -> list[str]:
        """The Responses stream of one response: created and in progress (no output, no usage), each
        output item added, its text in one-word ``response.output_text.delta``s (a function call's
        arguments in ``response.function_call_arguments.delta`` pieces), done, then completed."""
        events: list[tuple[str, dict[str, Any]]] = []
        start = dict(done, status="in_progress", output=[], usage=None)
        events += [("response.created", {"response": start}), ("response.in_progress", {"response": start})]
        for i, item in enumerate(done["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                events.append(("response.output_item.added", {"output_index": i, "item": dict(item, content=[])}))
                ids = {"item_id": item["id"], "output_index": i, "content_index": 0}
                part = {"type": "output_text", "text": "", "annotations": []}
                events.append(("response.content_part.added", {**ids, "part": part}))
                for j, w in enumerate(text.split(" ")):
                    events.append(("response.output_text.delta", {**ids, "delta": (" " if j else "") + w}))
                events.append(("response.output_text.done", {**ids, "text": text}))
                events.append(("response.content_part.done", {**ids, "part": item["content"][0]}))
            else:
                args = item["arguments"]
                events.append(("response.output_item.added", {"output_index": i, "item": dict(item, arguments="")}))
                ids = {"item_id": item["id"], "output_index": i}
                for j in range(0, len(args), 8):
                    events.append(("response.function_call_arguments.delta", {**ids, "delta": args[j : j + 8]}))
                events.append(("response.function_call_arguments.done", {**ids, "arguments": args}))
            events.append(("response.output_item.done", {"output_index": i, "item": item}))
        events.append(("response.completed", {"response": done}))
        return [sse(name, {"type": name, "sequence_number": n, **data}) for n, (name, data) in enumerate(events)]
