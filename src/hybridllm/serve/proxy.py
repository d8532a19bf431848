"""The request path of the two proxied routes (``/v1/chat/completions``, ``/v1/completions``): one
:class:`Proxy` with typed collaborators, each step a method.

``handle`` → ``answer`` (authorise, read and check the body, ask the :class:`Decider`, call the
upstreams through ``attempts``, shape the response) → ``relay`` for a stream. Every request,
refused or answered, ends as one :class:`~hybridllm.serve.telemetry.Record`: recorded after the
answer has been sent (the response's background step), off the client's critical path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hybridllm.backends import Answer, Backend, Failure, StreamBroke

from .budget import Budget, SteeringWatch
from .decision import Decider, RouteDecision, ServingRouter
from .errors import RequestError
from .feedback import FeedbackDesk
from .knobs import KnobError
from .options import ServeOptions, key_id
from .protocol import bearer_key, check_request, error_body, openai_error, parse_json, read_body
from .routing import Routing
from .settle import Pump, RelayResponse, bill, left_behind, token_bound
from .shadow import Shadow, ShadowJob, answer_text, stream_text
from .state import StateStore
from .telemetry import Metrics, Record

#: a watcher for the client's disconnect starts this long after the upstream call
WATCH_AFTER_S = 0.005


class Proxy:
    """The proxied routes' handler. ``decider``: where each request goes (replace or wrap it to
    change the decision; the rest of the path is unchanged)."""

    def __init__(
        self, router: ServingRouter, routing: Routing, decider: Decider, metrics: Metrics, options: ServeOptions
    ) -> None:
        self.router, self.routing, self.decider, self.metrics, self.options = router, routing, decider, metrics, options
        self.ups: Sequence[Backend] = routing.ups
        self.in_flight = 0  # requests between their first byte read and their answer
        self._keys = [k.encode() for k in options.api_keys]
        self.shadow: Shadow | None = None  # set by create_app with --shadow-rate
        self.budget: Budget | None = None  # set by create_app with budget caps
        self.steering: SteeringWatch | None = None  # set by create_app when clients have keys
        self.store: StateStore | None = None  # the state store (create_app), closed with the proxy
        self._bg: set[asyncio.Future[None]] = set()
        #: the outcomes log and the requests /v1/feedback can name (create_app, with --outcomes)
        self.feedback: FeedbackDesk | None = None
        self._index = {u.who: i for i, u in enumerate(self.ups)}
        self._names = {k.encode(): options.key_names.get(k) or key_id(k) for k in options.api_keys}

    def authorised(self, request: Request) -> bool:
        return self.client(request) is not False

    def client(self, request: Request) -> str | bool | None:
        """The name of the client key a request carries (None when no keys are set; False when
        its key is missing or wrong). Every key is compared, in constant time each."""
        if not self._keys:
            return None
        key = bearer_key(request.headers, self._keys)
        return False if key is None else self._names[key]

    async def chat(self, request: Request) -> Response:
        return await self.handle(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.handle(request, "completion")

    async def handle(self, request: Request, kind: str) -> Response:
        """One proxied request; a request that ends without an answer (cancelled) is recorded at
        once, a stream when it ends, any other after its response has been sent."""
        rec = Record("req-" + os.urandom(6).hex(), time.perf_counter())  # 48 random bits, as uuid4()[:12] gave
        self.in_flight += 1
        response: Response | None = None
        try:
            response = await self.answer(request, kind, rec)
        finally:
            self.in_flight -= 1
            if response is None:  # cancelled (shutdown): charged its bound when the upstream was asked
                self._background(self._record_after(rec))
        # a relay records itself when it ends; a request whose client left, when its upstream call has
        if not isinstance(response, StreamingResponse) and rec.outcome != "client_left":
            response.background = BackgroundTask(self._record_after, rec)
        return response

    async def _record_after(self, rec: Record) -> None:
        """Once the answer has been sent (a relay's at its end): count and log it, settle its budget
        reservation, remember it for feedback, start its shadow call. Coroutine on purpose:
        Starlette runs a plain function's background task in a thread."""
        bill(rec, self.options.prices, self.options.max_output)  # an answer without usage: its bound
        self.metrics.record(rec, self.options.log_prompts)
        await self._settle(rec)
        self._remember(rec)
        if rec.shadow is not None and self.shadow is not None and rec.status == 200:
            rec.shadow.cost = self.metrics.cost_of(rec.model, rec.usage)
            self.shadow.submit(rec.shadow)

    def _remember(self, rec: Record) -> None:
        if self.feedback is not None and rec.status == 200:
            self._background(self.feedback.remember(rec.rid, rec.model, rec.key, rec.raw_prompt))

    async def close(self) -> None:
        """Shutdown: wait for the background work (settlements, outcome records), then close the
        state store, the outcomes log and the request index."""
        await asyncio.gather(*list(self._bg), return_exceptions=True)
        if self.store is not None:
            await self.store.close()
        if self.feedback is not None:
            await self.feedback.close()

    def _background(self, work: Any) -> asyncio.Future[None]:
        """Run ``work`` off the request, kept referenced until it ends (shutdown waits for it)."""
        task = asyncio.ensure_future(work)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    async def _settle(self, rec: Record) -> None:
        """The reservation gives way to what the request is charged: its upstream's usage, else (an
        answer asked for, ended any way) its bound (:func:`~.settle.bill`), else 0."""
        if rec.reservation is not None and self.budget is not None:
            usage = rec.billed if rec.billed is not None else rec.usage
            cost = self.metrics.cost_of(rec.model, usage) if rec.status == 200 or rec.asked else 0.0
            await self.budget.settle(rec.reservation, cost)
            rec.reservation = None

    def _draw(self, decision: RouteDecision, body: dict[str, Any], kind: str, rec: Record) -> ShadowJob | None:
        """A shadow job for this answered request when the draw picks it (routed requests only), with
        the bounded replay of its body; none for a request a budget cap downgraded (its answer is
        not the decided model's, and no fallback explains it) when the other side is dearer."""
        shadow = self.shadow
        if shadow is None or decision.row is None or not shadow.draw():
            return None
        served = self._index[rec.model]
        other = shadow.other_side(served, decision.row)
        more = shadow.more_sides(served, other, decision.row)
        capped = (served != decision.target and not rec.fallback_from) or "budget cap" in decision.reason
        replay = shadow.replay(body, kind, served, (other, *more), capped)
        if replay is None:
            return None
        prompt = replay.get("messages") if kind == "chat" else replay.get("prompt")
        return ShadowJob(rec.rid, kind, replay, prompt, served, other, decision.row, 1.0 / shadow.rate, more=more,
                         key=rec.key)  # fmt: skip

    async def answer(self, request: Request, kind: str, rec: Record) -> Response:
        headers = {"x-hybridllm-request-id": rec.rid}
        try:
            decision, body, stream = await self._decide(request, kind, rec)
            headers["x-hybridllm-reason"] = decision.reason
            if decision.score is not None:
                headers["x-hybridllm-score"] = f"{decision.score:.6f}"
                headers["x-hybridllm-threshold"] = f"{decision.threshold:.6f}"
            if decision.scores is not None:
                headers["x-hybridllm-scores"] = ",".join(f"{m}={v:.6f}" for m, v in decision.scores.items())
            target = decision.target
            if self.steering is not None and decision.row is not None and self.steering.observe(rec.key, target):
                self.metrics.steering.labels(rec.key or "-").inc()
            if self.budget is not None:
                target = await self._admit(decision, body, rec, headers)
            if stream:  # every stream is asked for its usage: the tokens are counted, priced or not
                body = self._ask_usage(body, rec)
            order = self.routing.fallback_order(target) if decision.may_fall_back else [target]
            got = await self._call(request, order, body, kind, stream, rec)
            if got is None:  # the client left
                return Response(status_code=499)
            if isinstance(got, Failure):
                hdr = dict(headers, **({"retry-after": got.retry_after} if got.retry_after else {}))
                raise RequestError(got.status, got.message, headers=hdr)
            rec.shadow = self._draw(decision, body, kind, rec)
            return self._respond(got, headers, decision, rec)
        except RequestError as exc:
            rec.status, rec.error = exc.status, exc.message
            return openai_error(exc.status, exc.message, exc.param, exc.code, exc.headers or headers)
        except Exception as exc:  # a bug: the request fails alone, shaped like every other error
            logging.getLogger("hybridllm.serve").exception("internal error in %s", rec.rid)
            rec.status, rec.error = 500, f"internal error ({type(exc).__name__})"
            return openai_error(500, f"internal error ({type(exc).__name__}); request id {rec.rid}")

    async def _admit(self, decision: RouteDecision, body: dict[str, Any], rec: Record, headers: dict[str, str]) -> int:
        """The budget caps' word on this request: its upstream (downgraded past a cap) or the 429. It
        reserves its own bound (:func:`~.settle.token_bound`) on the dearest model it may reach."""
        assert self.budget is not None
        models = [u.who for u in self.ups]
        reach = self.routing.fallback_order(decision.target) if decision.may_fall_back else [decision.target]
        try:
            target, rec.reservation, why = await self.budget.admit(
                rec.key, decision.target, models, token_bound(body), [models[i] for i in reach]
            )
        except RequestError as exc:
            exc.headers = {**headers, **(exc.headers or {})}
            raise
        if why is not None:
            decision.reason = why
            decision.may_fall_back = False  # the fallback of a downgraded request would spend past the cap
            headers["x-hybridllm-reason"] = why
        return target

    def _ask_usage(self, body: dict[str, Any], rec: Record) -> dict[str, Any]:
        """A stream asks the upstream for its usage chunk (its tokens counted, and charged when
        priced); one the client did not ask for is taken out of the relay (:meth:`relay`)."""
        so = body.get("stream_options")
        if isinstance(so, dict) and so.get("include_usage"):
            return body
        rec.strip_usage = True
        return dict(body, stream_options={**(so if isinstance(so, dict) else {}), "include_usage": True})

    async def _decide(self, request: Request, kind: str, rec: Record) -> tuple[RouteDecision, dict[str, Any], bool]:
        """Authorise, read and check the body, and ask the decider: (decision, body, stream)."""
        opts = self.options
        client = self.client(request)
        if client is False:
            raise RequestError(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})
        rec.key = client if isinstance(client, str) else None
        raw = await read_body(request, opts.max_body_bytes, opts.client_timeout_s)
        body = parse_json(raw)
        extra = body.pop("hybridllm", None)
        req = check_request(body, kind, opts.max_messages, self.router.turns, opts.max_router_chars)
        rec.stream = req.stream
        rec.chars = len(req.text) if isinstance(req.text, str) else 0
        if opts.log_prompts:
            rec.prompt = req.text
            rec.raw_prompt = req.body.get("messages") if kind == "chat" else req.body.get("prompt")
        try:
            decision = await self.decider.decide(req.model, extra, req.text, self.in_flight == 1)
        except KnobError as exc:
            status = 404 if exc.unknown_model else 400
            raise RequestError(status, str(exc), "model", "model_not_found" if exc.unknown_model else None) from None
        rec.score, rec.threshold, rec.scores = decision.score, decision.threshold, decision.scores
        return decision, req.body, req.stream

    async def _call(
        self, request: Request, order: list[int], body: dict[str, Any], kind: str, stream: bool, rec: Record
    ) -> Answer | Failure | None:
        """The upstream calls (a task of their own), while a watcher listens to the client. A client
        that leaves gets None at once; on a priced server the call goes on (no fallback is paid for
        nobody) for at most ``settle_timeout_s`` and is charged (:func:`~.settle.left_behind`),
        unpriced it is cancelled. The watcher starts after WATCH_AFTER_S: an answer that comes
        sooner never pays for a task of its own."""
        left: list[bool] = []
        rec.sent = body
        priced = bool(self.options.prices)
        # priced: the call runs in a task of its own, so that it outlives a client that leaves
        # (unpriced, nothing is charged, and the request's own task makes the call: no task to pay for)
        call = asyncio.ensure_future(self.attempts(order, body, kind, stream, rec)) if priced else None
        watcher = _Watcher(request, asyncio.current_task(), left)
        try:
            if call is None:
                return await self.attempts(order, body, kind, stream, rec)
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            rec.model = self.ups[order[0]].who
            if not left:  # shutdown: the call is closed, and charged its bound (the upstream was asked)
                if call is not None:
                    call.cancel()
                rec.asked = priced
                raise
            rec.status, rec.error, rec.outcome = 499, "client disconnected", "client_left"
            if call is None:  # unpriced: nothing to charge, the upstream call is closed already
                self._background(self._record_after(rec))
            else:
                self._background(self._left_behind(call, rec))
            return None
        finally:
            watcher.cancel()

    async def _left_behind(self, call: asyncio.Future[Any], rec: Record) -> None:
        """A request whose client left during its upstream call: charged what the call costs."""
        await left_behind(call, rec, self.options.settle_timeout_s)
        await self._record_after(rec)

    async def attempts(self, order: list[int], body: dict[str, Any], kind: str, stream: bool, rec: Record) -> Any:
        """Each upstream of ``order`` in turn until one answers: its answer, or the last failure."""
        failure: Failure | None = None
        for which in order:
            if failure is not None and rec.outcome == "client_left":
                break  # no fallback is paid for nobody
            up = self.ups[which]
            got = await up.forward(kind, dict(body, model=up.model), stream)
            if isinstance(got, Answer):
                if which != order[0]:
                    rec.fallback_from = self.ups[order[0]].who
                    self.metrics.fallbacks.labels(rec.fallback_from, up.who).inc()
                rec.model = up.who
                return got
            self.metrics.errors.labels(up.who).inc()
            failure = got
        rec.model = self.ups[order[0]].who
        return failure

    def _respond(self, got: Answer, headers: dict[str, str], decision: RouteDecision, rec: Record) -> Response:
        headers["x-hybridllm-model"] = rec.model
        if rec.fallback_from:
            headers["x-hybridllm-fallback-from"] = rec.fallback_from
            headers["x-hybridllm-reason"] = f"{decision.reason}; fallback after {rec.fallback_from} failed"
        if got.stream is not None:
            rec.status = 200
            # the upstream read starts now, whether or not the relay ever runs (a client gone before
            # the response starts never iterates it: RelayResponse then hands the pump back)
            pump = Pump(got.stream, rec, bool(self.options.prices), self.options.settle_timeout_s)
            rec.asked = True
            return RelayResponse(
                self.relay(pump, rec),
                pump,
                lambda: self._abandon(pump, rec),
                media_type="text/event-stream",
                headers=headers,
            )
        rec.status = got.status
        usage = got.payload.get("usage") if isinstance(got.payload, dict) else None
        rec.usage = usage if isinstance(usage, dict) else {}
        if rec.shadow is not None:
            rec.shadow.answer = answer_text(got.payload)
        # the upstream's bytes as they are: nothing re-serialised, nothing of the schema changed
        return Response(got.data, status_code=got.status, headers=headers, media_type="application/json")

    async def relay(self, pump: Pump, rec: Record) -> AsyncIterator[bytes]:
        """Relay the chunks (read by a :class:`~.settle.Pump`); a failure mid-stream ends with an
        error event instead of a hang. However the relay ends, the answer is charged: a client that
        hangs up leaves the upstream read going (priced servers, ``settle_timeout_s`` at most) until
        its usage chunk, and the record is made when that read ends."""
        kept: list[bytes] | None = [] if rec.shadow is not None else None
        pump.relayed, ended = True, False
        try:
            async for chunk in pump.chunks():
                if kept is not None:
                    kept.append(chunk)
                yield chunk
            ended = True
        except StreamBroke as exc:
            rec.status, rec.error, ended = 502, str(exc), True
            yield b"data: " + error_body(str(exc), "upstream_error") + b"\n\n"
        finally:
            if kept is not None and rec.shadow is not None:
                rec.shadow.answer = stream_text(kept)
            if ended:  # shielded: a client hanging up after the last event cancels the relay, not this
                await asyncio.shield(self._background(self._record_after(rec)))
            else:  # the client left (cancelled, or the relay closed early): nothing awaited here
                self._abandon(pump, rec)

    def _abandon(self, pump: Pump, rec: Record) -> None:
        """The client left a stream (mid-relay, or before the relay started): the upstream read goes
        on for its usage (:meth:`~.settle.Pump.leave`), and the request is recorded when it ends."""
        rec.status, rec.error, rec.outcome = 499, "client disconnected", "client_left"
        pump.leave()
        self._background(self._after_pump(pump, rec))

    async def _after_pump(self, pump: Pump, rec: Record) -> None:
        await pump.done()
        await self._record_after(rec)


class _Watcher:
    """:func:`_cancel_on_disconnect` for ``task``, started ``WATCH_AFTER_S`` from now (a timer
    costs far less than a task, and most fast answers are done before it fires)."""

    def __init__(self, request: Any, task: Any, left: list[bool]) -> None:
        self._task: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start, request, task, left)

    def _start(self, request: Any, task: Any, left: list[bool]) -> None:
        self._task = asyncio.ensure_future(_cancel_on_disconnect(request, task, left))

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


async def _cancel_on_disconnect(request: Any, task: Any, left: list[bool]) -> None:
    """Cancel ``task`` when the client goes (the body is already read, so only that message is
    left to receive); ``left`` records why the task was cancelled."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            left.append(True)
            task.cancel()
            return
