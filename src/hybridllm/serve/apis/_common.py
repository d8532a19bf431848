"""What the Messages and Responses routes share: the checked request with its body's bytes, the
model name spliced into those bytes (nothing else of them changed), the knob's routing name, usage
normalised across protocols, and a server-sent-events reader for relayed streams. (Where a request
stands in its tool calls is :mod:`hybridllm.routing.conversation`'s reading, made by the session
rules and the capability filter.)

Why bytes: both routes relay the client's body as it came, so an upstream sees the client's own
JSON (key order, number spelling, fields hybridllm does not know) with only ``model`` replaced. The
body is parsed strictly first (:func:`~hybridllm.serve.protocol.parse_json`), then its top level is
scanned once for the spans to splice. A top-level key given twice is refused: hybridllm reads the
last copy, and an upstream that read the first would be sent a model, a stream flag or an output
limit other than the one routed and charged.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hybridllm.features.text import flatten

from ..errors import RequestError
from ..protocol import bound_text, parse_json

#: the header a client names its knob with when its SDK insists on a model name of its own
KNOB_HEADER = "x-hybridllm-knob"
#: a usage count above this is not a count (and would overflow a price)
MAX_TOKENS_COUNTED = 10**12
#: a relayed stream is read by whole events; one longer than this is skipped, not buffered
MAX_EVENT_BYTES = 1 << 20
_OPEN = re.compile(r"[ \t\n\r]*\{[ \t\n\r]*")
#: a member's key and colon (group 1, from the key's opening quote) and the key itself (group 2, quoted)
_KEY = re.compile(r'[ \t\n\r]*(("[^"\\]*(?:\\.[^"\\]*)*")[ \t\n\r]*:[ \t\n\r]*)')
_SEP = re.compile(r"[ \t\n\r]*([,}])")
_DECODE = json.JSONDecoder()
#: the C string scanner json's own decoder uses (not in the typing stubs)
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_NAME_OK = re.compile(r"[\x21-\x7e]{1,256}")


@dataclass(frozen=True)
class ApiRequest:
    """A checked Messages or Responses request. ``name``: the routing name the decider reads (the
    ``x-hybridllm-knob`` header, else ``model``); ``extra``: the body's ``hybridllm`` field (taken
    out of the bytes relayed); ``text``: what the router reads, bounded; ``chat``: the conversation
    as chat-completions messages (what the router, a session key and a judge read of it);
    ``previous``: the Responses ``previous_response_id`` (None for Messages)."""

    api: str
    body: dict[str, Any]
    model: str
    name: str
    extra: Any
    text: str
    stream: bool
    chat: list[dict[str, Any]]
    max_out: int | None
    previous: str | None = None
    _head: bytes = field(default=b"", repr=False)
    _tail: bytes = field(default=b"", repr=False)

    def for_upstream(self, model: str) -> bytes:
        """The client's body bytes with ``model`` as the model name (and the ``hybridllm`` field
        taken out); every other byte as the client sent it."""
        return self._head + json.dumps(model).encode() + self._tail


@dataclass(frozen=True)
class Usage:
    """One answer's usage in any protocol's terms: ``prompt`` all the prompt's tokens (cached ones
    and cache writes included), ``cached`` those read from the provider's prompt cache,
    ``cache_creation`` those written to it, ``completion`` the answer's."""

    prompt: int
    cached: int
    cache_creation: int
    completion: int

    def as_chat(self) -> dict[str, Any]:
        """As a chat completion's usage object: what the proxy's record, price and log read."""
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached, "cache_creation_tokens": self.cache_creation},
        }


def count(v: Any) -> int | None:
    """A token count as an upstream may report it: a non-negative integer of sane size, else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS_COUNTED else None


def routing_name(model: str, headers: Mapping[str, str]) -> str:
    """The name the decider reads: the ``x-hybridllm-knob`` header when given (a routing name in the
    grammar of :mod:`~hybridllm.serve.knobs`, for SDKs that insist on a model name of their own),
    else the body's ``model``."""
    given = headers.get(KNOB_HEADER)
    if given is None:
        return model
    if not _NAME_OK.fullmatch(given):
        raise RequestError(400, f"header {KNOB_HEADER} must be a routing name of 1-256 printable ASCII characters")
    return given


def positive_int(body: dict[str, Any], key: str, required: bool) -> int | None:
    v = body.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        need = "is required and must be" if required else "must be"
        raise RequestError(400, f"'{key}' {need} a positive integer", key)
    return v


def check_common(body: dict[str, Any]) -> tuple[str, bool]:
    """The fields both protocols share: (model, stream)."""
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise RequestError(400, "'model' is required and must be a string of at most 256 characters", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    return model, bool(stream)


def parse_body(raw: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """The body parsed strictly, and the bytes before and after its ``model`` value with the
    ``hybridllm`` member taken out (:meth:`ApiRequest.for_upstream` joins them)."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(raw) >= 2 and (raw[0] == 0 or raw[1] == 0)):
        raise RequestError(400, "malformed JSON: body is not UTF-8")  # UTF-16/32: no upstream reads it
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a byte-order mark is not JSON: not relayed
    body = parse_json(raw)
    text = raw.decode("utf-8", "surrogatepass")
    spans = _members(text)
    seen: set[str] = set()
    for key, *_ in spans:
        if key in seen:
            raise RequestError(400, f"key {key[:40]!r} is given twice in the request body", key[:40])
        seen.add(key)
    if "model" not in seen:  # the field checks say so, naming the field
        return body, b"", b""
    vs, ve = next((s, e) for key, _, s, e in spans if key == "model")
    cut = _cut(text, spans, "hybridllm")
    if cut is None:
        head, tail = text[:vs], text[ve:]
    elif cut[1] <= vs:
        head, tail = text[: cut[0]] + text[cut[1] : vs], text[ve:]
    else:
        head, tail = text[:vs], text[ve : cut[0]] + text[cut[1] :]
    return body, head.encode("utf-8", "surrogatepass"), tail.encode("utf-8", "surrogatepass")


def _members(text: str) -> list[tuple[str, int, int, int]]:
    """The top-level members of a JSON object already parsed: (key, key start, value start, value
    end) in ``text``; each value is skipped by the C scanner, each key and separator by a regex."""
    out: list[tuple[str, int, int, int]] = []
    m = _OPEN.match(text)
    i = m.end() if m else 0
    if text[i] == "}":
        return out
    while True:
        m = _KEY.match(text, i)
        if m is None:  # not reached for a body parse_json accepted
            raise RequestError(400, "malformed JSON: body is not an object")
        key = m.group(2)
        key = _scanstring(key, 1)[0] if "\\" in key else key[1:-1]
        _, end = _DECODE.raw_decode(text, m.end())
        out.append((key, m.start(1), m.end(), end))
        m = _SEP.match(text, end)
        if m is None or m.group(1) == "}":
            return out
        i = m.end()


def _cut(text: str, spans: list[tuple[str, int, int, int]], key: str) -> tuple[int, int] | None:
    """The span that removes member ``key`` and one comma beside it (None: no such member)."""
    at = next((j for j, s in enumerate(spans) if s[0] == key), None)
    if at is None:
        return None
    if at > 0:
        return spans[at - 1][3], spans[at][3]  # from the end of the member before
    if len(spans) > 1:
        return spans[0][1], spans[1][1]  # up to the next member's key
    return spans[0][1], spans[0][3]


def router_text(chat: list[dict[str, Any]], turns: str, max_chars: int) -> str:
    """What the router reads of a conversation given as chat messages: as a chat request is read
    (:func:`~hybridllm.serve.protocol.check_request`)."""
    return bound_text(flatten(chat, turns), max_chars)


def check_parts(content: Any, where: str, text_types: Sequence[str], allow_none: bool = False) -> None:
    """A content: a string, or a list of objects with a string ``type`` and, when present, a string
    ``text``."""
    if isinstance(content, str) or (allow_none and content is None):
        return
    if not isinstance(content, list):
        raise RequestError(400, f"{where} must be a string or a list of content blocks", where)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RequestError(400, f"{where}[{j}] must be an object with a string 'type'", where)
        if part["type"] in text_types and not isinstance(part.get("text"), str):
            raise RequestError(400, f"{where}[{j}].text must be a string", where)


class EventReader:
    """Server-sent events read from a relayed stream's chunks as they pass (the chunks themselves
    go to the client unchanged): each whole event's name and JSON data handed to ``on_event``. An
    event past ``MAX_EVENT_BYTES`` is skipped, never buffered whole."""

    def __init__(self, on_event: Callable[[str, Any], None]) -> None:
        self._on_event = on_event
        self._buf = b""
        self._skipping = False

    def feed(self, chunk: bytes) -> None:
        buf = self._buf + chunk
        if b"\r" in buf:  # CRLF line ends (a CR kept at the end until its LF comes)
            buf = buf.replace(b"\r\n", b"\n")
        while True:
            cut = buf.find(b"\n\n")
            if cut < 0:
                break
            event, buf = buf[:cut], buf[cut + 2 :]
            if self._skipping:
                self._skipping = False
                continue
            self._event(event)
        if len(buf) > MAX_EVENT_BYTES:
            buf, self._skipping = b"", True
        self._buf = buf

    def _event(self, event: bytes) -> None:
        name, data = "message", []
        for line in event.split(b"\n"):
            field_, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field_ == b"event":
                name = value.decode("utf-8", "replace")
            elif field_ == b"data":
                data.append(value)
        if not data:
            return
        try:
            obj = json.loads(b"\n".join(data))
        except ValueError:
            return
        self._on_event(name, obj)


class Watch(Protocol):
    """A protocol's stream reader (its ``StreamWatch``)."""

    def feed(self, chunk: bytes) -> None: ...

    @property
    def usage(self) -> Usage | None: ...

    @property
    def answer_id(self) -> str | None: ...

    @property
    def prompt_seen(self) -> int | None: ...


async def tap(stream: AsyncIterator[bytes], watch: Watch, ctx: Any) -> AsyncIterator[bytes]:
    """``stream``'s chunks unchanged, each read by ``watch``; once the stream's final usage has
    come, ``ctx.usage`` is it as a chat usage object (what the proxy prices and logs); before it, a
    prompt count the stream reported early is ``ctx.prompt_seen`` (a stream cut short is charged
    it); once its id has come, ``ctx.answer_id``."""
    async for chunk in stream:
        watch.feed(chunk)
        usage = watch.usage
        if usage is not None:
            ctx.usage = usage.as_chat()
        elif ctx.prompt_seen is None:
            ctx.prompt_seen = watch.prompt_seen
        if ctx.answer_id is None:
            ctx.answer_id = watch.answer_id
        yield chunk
