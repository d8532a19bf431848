"""What an answer is charged, whichever way its request ends, and the relay that makes sure of it.

- :func:`token_bound`: a request's own upper bound on the tokens it can cost: its prompt bounded from
  its size (every token of a byte-level tokenizer covers at least one UTF-8 byte, so the bytes of the
  body as sent, compact JSON, plus ``PER_MESSAGE_TOKENS`` per message and ``PROMPT_OVERHEAD_TOKENS``
  for the chat template) and its output: the larger of ``max_tokens`` / ``max_completion_tokens``
  (either not a count: none) clamped by the model's maximum output (``max_output_tokens`` in the
  models file, ``DEFAULT_MAX_OUTPUT_TOKENS`` when absent), times the answers asked (``n``,
  ``best_of``, the prompts of a completions batch). A body that brings in content the upstream
  holds (a stored response or conversation, a stored prompt, an item reference, a file by id or URL,
  an image or document by URL: :func:`upstream_held`) has no bound in its bytes: its prompt is
  bounded by the model's context window instead (``context_window`` in the models file,
  ``DEFAULT_CONTEXT_TOKENS`` when absent). It is a budget cap's reservation and what a request is
  charged when its upstream reported no usage (the prompt's own count where a stream reported it
  before it ended: ``prompt_seen``).
- :class:`Pump`: a stream's upstream read in a task of its own, so that a client that hangs up, or
  a relay that ends for any reason, never cuts the upstream read short before its usage chunk: after
  the client left it goes on reading (for ``settle_timeout_s`` at most, then the upstream call is
  closed and the bound is charged).
- :func:`usage_events`: the SSE stream by whole events, the usage chunk read (and taken out when
  the proxy asked for it, not the client).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse

from hybridllm.backends import Answer, Failure
from hybridllm.routing.money import Price, cost, usage_tokens

from .hooks import RequestContext

#: a model's maximum output when the models file does not state ``max_output_tokens``
DEFAULT_MAX_OUTPUT_TOKENS = 4096
#: a model's context window when the models file does not state ``context_window``: the prompt
#: bound of a request whose prompt the upstream holds (a stored conversation, a file, a URL)
DEFAULT_CONTEXT_TOKENS = 200_000
#: the chat template's tokens per message (role markers, separators), on top of its bytes
PER_MESSAGE_TOKENS = 8
#: the chat template's tokens per request (the assistant's turn opened), on top of its bytes
PROMPT_OVERHEAD_TOKENS = 16
#: a stream is relayed by whole events; bytes without an event end beyond this go on as they are
MAX_EVENT_BYTES = 1 << 20
#: chunks a stream's pump reads ahead of a slow client (then it waits: the client's pace)
READ_AHEAD = 32
_END = object()
#: a protocol's stream reader: the chunks relayed unchanged, its usage read into the context
Events = Callable[[AsyncIterator[bytes], RequestContext], AsyncIterator[bytes]]


@dataclass(frozen=True)
class TokenBound:
    """A request's own upper bound on its tokens (see the module docstring)."""

    prompt: int
    max_out: int | None  # the client's max_tokens / max_completion_tokens; None: not given (or not a count)
    answers: int  # completions asked: n (or best_of) times the prompts of a batch
    elsewhere: bool = False  # the prompt includes content the upstream holds (:func:`upstream_held`)

    def usage(self, model_max: int, context: int = DEFAULT_CONTEXT_TOKENS) -> dict[str, int]:
        """The bound as a usage object on a model whose answers stop at ``model_max`` tokens and
        whose prompts at ``context`` (the bound of a prompt held upstream)."""
        out = model_max if self.max_out is None else min(self.max_out, model_max)
        prompt = max(self.prompt, context) if self.elsewhere else self.prompt
        return {"prompt_tokens": prompt, "completion_tokens": out * self.answers}


@dataclass(frozen=True)
class Limits:
    """Each model's maximum output and context window where the models file states them (the
    defaults elsewhere): what a token bound is priced on."""

    max_output: Mapping[str, int]
    context: Mapping[str, int]

    def usage(self, bound: TokenBound, model: str) -> dict[str, int]:
        return bound.usage(
            self.max_output.get(model, DEFAULT_MAX_OUTPUT_TOKENS), self.context.get(model, DEFAULT_CONTEXT_TOKENS)
        )


#: top-level fields that bring in a prompt the upstream holds (Responses: a stored response, a
#: conversation; a stored prompt template is ``prompt`` as an object)
_HELD_FIELDS = ("previous_response_id", "conversation")
#: content the upstream fetches or reads from its own store, by the part's own field
_HELD_PARTS = ("file_id", "file_url")


def _remote(url: object) -> bool:
    return isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))


def upstream_held(body: dict[str, Any]) -> bool:
    """Whether ``body`` brings in content that is not in its bytes: a stored response or
    conversation, a stored prompt, an ``item_reference``, a file by id or URL, an image or a
    document by URL or by file (chat, Messages and Responses shapes alike)."""
    if any(body.get(f) not in (None, "") for f in _HELD_FIELDS) or isinstance(body.get("prompt"), dict):
        return True
    stack: list[Any] = [body.get("messages"), body.get("input"), body.get("system")]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("type") == "item_reference" or any(node.get(f) not in (None, "") for f in _HELD_PARTS):
                return True
            image = node.get("image_url")
            if _remote(image) or (isinstance(image, dict) and _remote(image.get("url"))):
                return True
            source = node.get("source")
            if isinstance(source, dict) and source.get("type") in ("url", "file"):
                return True
            stack.extend(v for v in node.values() if isinstance(v, list | dict))
    return False


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


#: the body fields that limit a request's output, by request kind (the chat ones for the others)
_OUTPUT_FIELDS = {"messages": ("max_tokens",), "responses": ("max_output_tokens",)}
_CHAT_OUTPUT = ("max_tokens", "max_completion_tokens")


def token_bound(body: dict[str, Any], kind: str = "chat") -> TokenBound:
    """The bound of one request body as sent upstream (``kind``: chat, completion, or the Messages or
    Responses API, each read with its own output limit)."""
    size = len(json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode())
    messages = body.get("messages", body.get("input"))
    parts = len(messages) if isinstance(messages, list) else 1
    prompt = body.get("prompt")
    batch = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else 1
    # both limits given: the larger (upstreams differ in which one they obey: vLLM the second);
    # either given but not a count (a float, a string a lax upstream reads as one): the model's maximum
    given = [body[f] for f in _OUTPUT_FIELDS.get(kind, _CHAT_OUTPUT) if body.get(f) is not None]
    outs = [m for m in map(_count, given) if m is not None]
    max_out = max(outs) if outs and len(outs) == len(given) else None
    each = max(_count(body.get("n")) or 1, _count(body.get("best_of")) or 1)
    prompt_tokens = size + PER_MESSAGE_TOKENS * parts + PROMPT_OVERHEAD_TOKENS
    return TokenBound(prompt_tokens, max_out, each * batch, upstream_held(body))


def counted(usage: dict[str, Any]) -> bool:
    """Whether an upstream's usage has both token counts (an answer priced from it; one without is
    charged its bound): :func:`hybridllm.routing.money.usage_tokens`'s rule, the one pricing uses."""
    return usage_tokens(usage) is not None


def price(prices: Mapping[str, Price], model: str, usage: dict[str, Any]) -> float | None:
    """The cost of ``usage`` on ``model`` at ``prices``: :func:`hybridllm.routing.money.cost` (cached
    prompt tokens at the model's cached price); None when the model has no price or the usage lacks
    a token count."""
    p = prices.get(model)
    return None if p is None else cost(usage, p)


async def usage_events(stream: AsyncIterator[bytes], rec: RequestContext) -> AsyncIterator[bytes]:
    """The stream by whole SSE events, bytes unchanged; the usage chunk (no choices, a usage
    object) sets ``rec.usage`` and is dropped when the client did not ask for it (``rec.strip_usage``)."""
    buf = b""
    async for chunk in stream:
        buf += chunk
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            if len(buf) > MAX_EVENT_BYTES:  # no event boundary in sight: relay as it is, parse nothing
                yield buf
                buf = b""
            continue
        events, buf = buf[: cut + 2], buf[cut + 2 :]
        out = []
        for ev in events.split(b"\n\n")[:-1]:
            if b'"usage"' in ev and ev.startswith(b"data:"):
                try:
                    obj = json.loads(ev[5:])
                except ValueError:
                    obj = None
                if isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and not obj.get("choices"):
                    rec.usage = obj["usage"]
                    if rec.strip_usage:
                        continue
            out.append(ev + b"\n\n")
        if out:
            yield b"".join(out)
    if buf:
        yield buf


class Pump:
    """Reads one upstream stream in its own task, ``READ_AHEAD`` chunks ahead of the client.
    ``chunks()`` is the relay's side; ``leave()`` says the relay ended (client gone, or any other
    end): a priced stream is then read on to its end, for its usage, within ``settle_timeout_s``
    (then closed), an unpriced one is closed at once. ``done()`` waits for the read to end."""

    def __init__(
        self, stream: AsyncIterator[bytes], rec: RequestContext, priced: bool, settle_timeout_s: float,
        events: Events | None = None,
    ) -> None:  # fmt: skip
        self.rec, self.priced, self.settle_timeout_s = rec, priced, settle_timeout_s
        self._events = events or usage_events  # the protocol's reader (serve.wire: Wire.usage_events)
        self.queue: asyncio.Queue[Any] = asyncio.Queue(READ_AHEAD)
        self.left = False
        self.relayed = False  # the relay started iterating it (else the response never ran)
        self.finished = False  # the upstream's stream ended by itself (not closed by us)
        self._stream = stream
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        source = self._events(self._stream, self.rec)  # priced or not: the tokens are counted
        try:
            try:
                async for chunk in source:
                    if not self.left:
                        await self.queue.put(chunk)
                self.finished = True
                end: Any = _END
            except Exception as exc:  # StreamBroke (or any failure of the upstream read): the relay says it
                end = exc
            if not self.left:
                await self.queue.put(end)
        finally:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The upstream's chunks for the client; a failure of the upstream read is raised here."""
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def leave(self) -> None:
        """The relay ended: stop queueing (and free a pump waiting on a full queue); a priced read
        goes on for at most ``settle_timeout_s``, an unpriced one stops now."""
        if self.left:
            return
        self.left = True
        while not self.queue.empty():
            self.queue.get_nowait()
        if self.task.done():
            return
        if not self.priced or self.settle_timeout_s <= 0:
            self.task.cancel()
        else:
            timer = asyncio.get_running_loop().call_later(self.settle_timeout_s, self.task.cancel)
            self.task.add_done_callback(lambda _: timer.cancel())

    async def done(self) -> None:
        """Wait for the upstream read to end (or be closed); never raises."""
        await asyncio.gather(self.task, return_exceptions=True)


def bill(rec: RequestContext, prices: Mapping[str, Price], limits: Limits) -> None:
    """An answer asked for (``rec.status`` 200, or ``rec.asked``: the upstream was asked and the
    relay or the call ended otherwise) whose upstream reported no usage is charged its bound:
    ``rec.billed``, the usage the metrics and the budget price instead (marked in the access log).
    A stream that reported its prompt's count before it ended (``rec.prompt_seen``) is charged that
    count for its prompt and the bound for its output."""
    if rec.billed is not None or rec.sent is None or rec.model not in prices or counted(rec.usage):
        return
    if rec.status == 200 or rec.asked:
        billed = limits.usage(token_bound(rec.sent, rec.kind), rec.model)
        if rec.prompt_seen is not None:
            billed["prompt_tokens"] = rec.prompt_seen
        rec.billed = billed


def whole_usage(payload: Any) -> dict[str, Any]:
    """A whole chat or completions answer's usage object ({} when it has none)."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return usage if isinstance(usage, dict) else {}


async def left_behind(
    call: asyncio.Future[Answer | Failure], rec: RequestContext, settle_timeout_s: float,
    usage_of: Callable[[Any], dict[str, Any]] = whole_usage, events: Events | None = None,
) -> None:  # fmt: skip
    """The upstream call of a request whose client left, finished for its usage: the call's answer
    (a stream read to its end) within ``settle_timeout_s``, else the call is closed and the request
    is charged its bound (``rec.asked``). A call that failed (or was closed unpriced) costs nothing.
    ``usage_of`` and ``events``: the protocol's readers of a whole answer's and a stream's usage
    (default: chat's)."""
    rec.asked = True
    try:
        async with asyncio.timeout(max(settle_timeout_s, 0.0)):
            got = (await asyncio.gather(call, return_exceptions=True))[0]
            if not isinstance(got, Answer) or got.status != 200:
                rec.asked = False
                return
            if got.stream is None:
                rec.usage = usage_of(got.payload)
                return
            try:
                async for _ in (events or usage_events)(got.stream, rec):
                    pass
            finally:
                close = getattr(got.stream, "aclose", None)
                if close is not None:
                    await close()
    except TimeoutError:
        pass  # charged the bound
    except Exception:  # the stream broke: charged its usage if it came, else its bound
        pass


class RelayResponse(StreamingResponse):
    """A relayed stream whose answer is charged even when its body is never iterated: a client that
    is gone before the response starts (Starlette then cancels the body's task before its first
    step, so the relay's own ``finally`` never runs) leaves its :class:`Pump` to ``abandon``."""

    def __init__(self, content: AsyncIterator[bytes], pump: Pump, abandon: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._pump, self._abandon = pump, abandon

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._pump.relayed:
                self._pump.relayed = True  # once
                self._abandon()
