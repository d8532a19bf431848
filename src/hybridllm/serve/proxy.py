"""The request path of the proxied routes (``/v1/chat/completions``, ``/v1/completions``,
``/v1/messages``, ``/v1/responses``): one :class:`Proxy` with typed collaborators, each step a
method, and the hooks it was built with (:mod:`.hooks`) at four points. What differs by protocol
(keys, body checks, the call, usage, error shapes) is the request's :class:`~.wire.Wire`, and a
request only ever goes to the upstreams that speak its protocol.

``handle`` → ``answer`` (authorise, read and check the body, ask the :class:`Decider`, the hooks'
``before_call``, call the upstreams through ``attempts``, the hooks' ``on_answer``, shape the
response) → ``relay`` for a stream. Every request, refused or answered, ends in ``_after``: charged
once (:func:`~.settle.bill`, its cost computed here only), one access-log line and its metrics, then
the hooks' ``after_sent``: after the answer has been sent (the response's background step), off the
client's critical path. The core knows no hook by name (an import contract keeps live control out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hybridllm.backends import Answer, Backend, Failure, StreamBroke

from .decision import Decider, ServingRouter
from .errors import RequestError
from .hooks import Hook, HookPoints, RequestContext
from .knobs import KnobError
from .options import ServeOptions, key_id
from .protocol import bearer_key, read_body
from .settle import Pump, RelayResponse, bill, left_behind, price
from .telemetry import Metrics
from .upstreams import Upstreams
from .wire import NO_HEADERS, WIRES, Wire

#: a watcher for the client's disconnect starts this long after the upstream call
WATCH_AFTER_S = 0.005
log = logging.getLogger("hybridllm.serve")


def response_headers(ctx: RequestContext, answered: bool) -> dict[str, str]:
    """The ``x-hybridllm-*`` headers of a request's response, from its context (written here only):
    its id; once decided, the reason (a fallback's added), the score, threshold and every scored
    model's score; once answered, the model and the one it fell back from."""
    headers = {"x-hybridllm-request-id": ctx.rid}
    decision = ctx.decision
    if decision is None:
        return headers
    reason = decision.reason
    if answered and ctx.fallback_from:
        reason = f"{reason}; fallback after {ctx.fallback_from} failed"
    headers["x-hybridllm-reason"] = reason
    if decision.score is not None:
        headers["x-hybridllm-score"] = f"{decision.score:.6f}"
        headers["x-hybridllm-threshold"] = f"{decision.threshold:.6f}"
    if decision.scores is not None:
        headers["x-hybridllm-scores"] = ",".join(f"{m}={v:.6f}" for m, v in decision.scores.items())
    if answered:
        headers["x-hybridllm-model"] = ctx.model
        if ctx.fallback_from:
            headers["x-hybridllm-fallback-from"] = ctx.fallback_from
    return headers


class Proxy:
    """The proxied routes' handler. ``decider``: where each request goes (replace or wrap it to
    change the decision; the rest of the path is unchanged). ``hooks``: what else runs around each
    request (:mod:`.hooks`), in this order (closed in the reverse one)."""

    def __init__(
        self, router: ServingRouter, upstreams: Upstreams, decider: Decider, metrics: Metrics, options: ServeOptions,
        hooks: Sequence[Hook] = (),
    ) -> None:  # fmt: skip
        self.router, self.upstreams, self.decider, self.metrics = router, upstreams, decider, metrics
        self.options = options
        self.hooks = HookPoints(tuple(hooks))
        self.ups: Sequence[Backend] = upstreams.ups
        self.in_flight = 0  # requests between their first byte read and their answer
        self._keys = [k.encode() for k in options.api_keys]
        self._bg: set[asyncio.Future[None]] = set()
        self._names = {k.encode(): options.key_names.get(k) or key_id(k) for k in options.api_keys}

    def authorised(self, request: Request) -> bool:
        return self.client(request) is not False

    def client(
        self, request: Request, read_key: Callable[[Any, list[bytes]], bytes | None] = bearer_key
    ) -> str | bool | None:
        """The name of the client key a request carries (None when no keys are set; False when
        its key is missing or wrong), read by ``read_key`` (its protocol's key headers; default
        ``Authorization: Bearer``). Every key is compared, in constant time each."""
        if not self._keys:
            return None
        key = read_key(request.headers, self._keys)
        return False if key is None else self._names[key]

    async def chat(self, request: Request) -> Response:
        return await self.handle(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.handle(request, "completion")

    async def messages(self, request: Request) -> Response:
        return await self.handle(request, "messages")

    async def responses(self, request: Request) -> Response:
        return await self.handle(request, "responses")

    async def handle(self, request: Request, kind: str) -> Response:
        """One proxied request; a request that ends without an answer (cancelled) is recorded at
        once, a stream when it ends, any other after its response has been sent."""
        ctx = RequestContext("req-" + os.urandom(6).hex(), time.perf_counter(), kind)  # 48 random bits
        self.in_flight += 1
        response: Response | None = None
        try:
            response = await self.answer(request, ctx)
        finally:
            self.in_flight -= 1
            if response is None:  # cancelled (shutdown): charged its bound when the upstream was asked
                self._background(self._after(ctx))
        # a relay records itself when it ends; a request whose client left, when its upstream call has
        if not isinstance(response, StreamingResponse) and ctx.outcome != "client_left":
            response.background = BackgroundTask(self._after, ctx)
        return response

    async def _after(self, ctx: RequestContext) -> None:
        """Once the answer has been sent (a relay's at its end): charge it (its usage, else its bound
        when an answer was asked for: :func:`~.settle.bill`), count and log it, then the hooks'
        ``after_sent``. Coroutine on purpose: Starlette runs a plain function's background task in
        a thread."""
        opts = self.options
        bill(ctx, opts.prices, opts.limits)
        if ctx.status == 200 or ctx.asked:  # every answer asked for is priced, whole or not
            ctx.cost = price(opts.prices, ctx.model, ctx.billed if ctx.billed is not None else ctx.usage)
        self.metrics.record(ctx, opts.log_prompts)
        for hook in self.hooks.after_sent:
            try:
                await hook.after_sent(ctx)
            except Exception:  # one hook's failure is its own: the others still run
                log.exception("hook %s failed after %s", type(hook).__name__, ctx.rid)

    async def close(self) -> None:
        """Shutdown: wait for the requests' background work (their after-steps), then close the
        hooks, in the reverse of their order."""
        await asyncio.gather(*list(self._bg), return_exceptions=True)
        for hook in self.hooks.close:
            try:
                await hook.close()
            except Exception:
                log.exception("hook %s failed to close", type(hook).__name__)

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run ``work`` off the request, kept referenced until it ends (shutdown waits for it)."""
        task = asyncio.ensure_future(work)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    async def answer(self, request: Request, ctx: RequestContext) -> Response:
        wire = WIRES[ctx.kind]
        try:
            await self._decide(request, ctx, wire)
            for hook in self.hooks.before_call:
                await hook.before_call(ctx)
            decision, body = ctx.decision, ctx.body
            assert decision is not None and body is not None
            if ctx.stream and wire.asks_usage:  # every stream's usage is counted, priced or not
                body = self._ask_usage(body, ctx)
            target = decision.target
            order = self.upstreams.fallback_order(target, wire.api) if decision.may_fall_back else [target]
            if decision.allowed is not None:  # a fallback only to a model that can serve the request
                order = [i for i in order if i == target or i in decision.allowed]
            got = await self._call(request, order, body, ctx)
            if got is None:  # the client left
                return Response(status_code=499)
            if isinstance(got, Failure):
                retry = {"retry-after": got.retry_after} if got.retry_after else None
                raise RequestError(got.status, got.message, headers=retry)
            if got.stream is None:
                ctx.status = got.status
                ctx.usage = wire.usage(got.payload)
                ctx.answer_id = wire.answer_id(got.payload)
            else:
                ctx.status = 200
            for hook in self.hooks.on_answer:
                hook.on_answer(ctx)
            return self._respond(got, ctx, wire)
        except RequestError as exc:
            ctx.status, ctx.error = exc.status, exc.message
            headers = response_headers(ctx, answered=False)
            return wire.error(exc.status, exc.message, exc.param, exc.code, {**headers, **(exc.headers or {})})
        except Exception as exc:  # a bug: the request fails alone, shaped like every other error
            log.exception("internal error in %s", ctx.rid)
            ctx.status, ctx.error = 500, f"internal error ({type(exc).__name__})"
            message = f"internal error ({type(exc).__name__}); request id {ctx.rid}"
            return wire.error(500, message, None, None, response_headers(ctx, answered=False))

    def _ask_usage(self, body: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """A stream asks the upstream for its usage chunk (its tokens counted, and charged when
        priced); one the client did not ask for is taken out of the relay (:meth:`relay`)."""
        so = body.get("stream_options")
        if isinstance(so, dict) and so.get("include_usage"):
            return body
        ctx.strip_usage = True
        return dict(body, stream_options={**(so if isinstance(so, dict) else {}), "include_usage": True})

    async def _decide(self, request: Request, ctx: RequestContext, wire: Wire) -> None:
        """Authorise, read and check the body, and ask the decider (``ctx.decided``, counted once),
        kept among the upstreams that speak the request's protocol."""
        opts = self.options
        client = self.client(request, wire.client_key)
        if client is False:
            raise RequestError(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})
        ctx.key = client if isinstance(client, str) else None
        ctx.headers = request.headers
        raw = await read_body(request, opts.max_body_bytes, opts.client_timeout_s)
        req = wire.check(raw, request.headers, opts.max_messages, self.router.turns, opts.max_router_chars)
        ctx.stream, ctx.body, ctx.checked = req.stream, req.body, req
        ctx.chars = len(req.text) if isinstance(req.text, str) else 0
        if opts.log_prompts:
            ctx.prompt = req.text
            ctx.raw_prompt = req.prompt
        try:
            decision = await self.decider.decide(req.name, req.extra, req.text, self.in_flight == 1)
        except KnobError as exc:
            status = 404 if exc.unknown_model else 400
            raise RequestError(status, str(exc), "model", "model_not_found" if exc.unknown_model else None) from None
        decision = self.upstreams.speaking(decision, wire.api)
        ctx.decided = ctx.decision = decision
        self.metrics.decided(self.ups[decision.target].who, decision)

    async def _call(
        self, request: Request, order: list[int], body: dict[str, Any], ctx: RequestContext
    ) -> Answer | Failure | None:
        """The upstream calls (a task of their own), while a watcher listens to the client. A client
        that leaves gets None at once; on a priced server the call goes on (no fallback is paid for
        nobody) for at most ``settle_timeout_s`` and is charged (:func:`~.settle.left_behind`),
        unpriced it is cancelled. The watcher starts after WATCH_AFTER_S: an answer that comes
        sooner never pays for a task of its own."""
        left: list[bool] = []
        ctx.sent = body
        priced = bool(self.options.prices)
        # priced: the call runs in a task of its own, so that it outlives a client that leaves
        # (unpriced, nothing is charged, and the request's own task makes the call: no task to pay for)
        call = asyncio.ensure_future(self.attempts(order, body, ctx)) if priced else None
        watcher = _Watcher(request, asyncio.current_task(), left)
        try:
            if call is None:
                return await self.attempts(order, body, ctx)
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            ctx.model = self.ups[order[0]].who
            if not left:  # shutdown: the call is closed, and charged its bound (the upstream was asked)
                if call is not None:
                    call.cancel()
                ctx.asked = priced
                raise
            ctx.status, ctx.error, ctx.outcome = 499, "client disconnected", "client_left"
            if call is None:  # unpriced: nothing to charge, the upstream call is closed already
                self._background(self._after(ctx))
            else:
                self._background(self._left_behind(call, ctx))
            return None
        finally:
            watcher.cancel()

    async def _left_behind(self, call: asyncio.Future[Answer | Failure], ctx: RequestContext) -> None:
        """A request whose client left during its upstream call: charged what the call costs."""
        wire = WIRES[ctx.kind]
        await left_behind(call, ctx, self.options.settle_timeout_s, wire.usage, wire.usage_events)
        await self._after(ctx)

    async def attempts(self, order: list[int], body: dict[str, Any], ctx: RequestContext) -> Answer | Failure:
        """Each upstream of ``order`` in turn until one answers: its answer, or the last failure."""
        failure: Failure | None = None
        wire, checked = WIRES[ctx.kind], ctx.checked
        headers = NO_HEADERS if checked is None else checked.headers
        raw = checked.api if checked is not None and body is checked.body else None  # the client's bytes
        for which in order:
            if failure is not None and ctx.outcome == "client_left":
                break  # no fallback is paid for nobody
            up = self.ups[which]
            got = await wire.send(up, body, ctx.stream, headers, raw)
            if isinstance(got, Answer):
                if which != order[0]:
                    ctx.fallback_from = self.ups[order[0]].who
                    self.metrics.fallbacks.labels(ctx.fallback_from, up.who).inc()
                ctx.model = up.who
                return got
            self.metrics.errors.labels(up.who).inc()
            failure = got
        ctx.model = self.ups[order[0]].who
        assert failure is not None
        return failure

    def _respond(self, got: Answer, ctx: RequestContext, wire: Wire) -> Response:
        headers = response_headers(ctx, answered=True)
        if got.stream is not None:
            # the upstream read starts now, whether or not the relay ever runs (a client gone before
            # the response starts never iterates it: RelayResponse then hands the pump back)
            priced = bool(self.options.prices)
            pump = Pump(got.stream, ctx, priced, self.options.settle_timeout_s, wire.usage_events)
            ctx.asked = True
            return RelayResponse(
                self.relay(pump, ctx, wire),
                pump,
                lambda: self._abandon(pump, ctx),
                media_type="text/event-stream",
                headers=headers,
            )
        if ctx.keep_answer:
            ctx.answer = wire.answer_text(got.payload)
        # the upstream's bytes as they are: nothing re-serialised, nothing of the schema changed
        return Response(got.data, status_code=got.status, headers=headers, media_type="application/json")

    async def relay(self, pump: Pump, ctx: RequestContext, wire: Wire) -> AsyncIterator[bytes]:
        """Relay the chunks (read by a :class:`~.settle.Pump`); a failure mid-stream ends with an
        error event instead of a hang. However the relay ends, the answer is charged: a client that
        hangs up leaves the upstream read going (priced servers, ``settle_timeout_s`` at most) until
        its usage chunk, and the record is made when that read ends."""
        kept: list[bytes] | None = [] if ctx.keep_answer else None
        pump.relayed, ended = True, False
        try:
            async for chunk in pump.chunks():
                if kept is not None:
                    kept.append(chunk)
                yield chunk
            ended = True
        except StreamBroke as exc:
            ctx.status, ctx.error, ended = 502, str(exc), True
            yield wire.stream_error(str(exc))
        finally:
            if kept is not None:
                ctx.answer = wire.stream_text(kept)
            if ended:  # shielded: a client hanging up after the last event cancels the relay, not this
                await asyncio.shield(self._background(self._after(ctx)))
            else:  # the client left (cancelled, or the relay closed early): nothing awaited here
                self._abandon(pump, ctx)

    def _abandon(self, pump: Pump, ctx: RequestContext) -> None:
        """The client left a stream (mid-relay, or before the relay started): the upstream read goes
        on for its usage (:meth:`~.settle.Pump.leave`), and the request is recorded when it ends."""
        ctx.status, ctx.error, ctx.outcome = 499, "client disconnected", "client_left"
        pump.leave()
        self._background(self._after_pump(pump, ctx))

    async def _after_pump(self, pump: Pump, ctx: RequestContext) -> None:
        await pump.done()
        await self._after(ctx)


class _Watcher:
    """:func:`_cancel_on_disconnect` for ``task``, started ``WATCH_AFTER_S`` from now (a timer
    costs far less than a task, and most fast answers are done before it fires)."""

    def __init__(self, request: Request, task: asyncio.Task[Any] | None, left: list[bool]) -> None:
        self._task: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start, request, task, left)

    def _start(self, request: Request, task: asyncio.Task[Any] | None, left: list[bool]) -> None:
        self._task = asyncio.ensure_future(_cancel_on_disconnect(request, task, left))

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


async def _cancel_on_disconnect(request: Request, task: asyncio.Task[Any] | None, left: list[bool]) -> None:
    """Cancel ``task`` when the client goes (the body is already read, so only that message is
    left to receive); ``left`` records why the task was cancelled."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            left.append(True)
            if task is not None:
                task.cancel()
            return
