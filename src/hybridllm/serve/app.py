"""The ASGI app: OpenAI-compatible routes that route each request to the small or the large model.

Every response carries ``x-hybridllm-request-id``, ``-model``, ``-reason`` and, when the router
decided, ``-score`` and ``-threshold``; a fallback adds ``x-hybridllm-fallback-from``. The body is
the upstream's, byte for byte. Every request, refused or answered, gets one JSON access-log line
and a count in ``/metrics``.
"""

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hybridllm.backends import Answer, Backend, Failure, StreamBroke

from .batcher import MicroBatcher
from .dashboard import KnobControl, mount_dashboard
from .errors import RequestError
from .knobs import KnobError, forced_names, parse_knob, routing_names
from .protocol import check_request, error_body, error_type, parse_json, read_body
from .routing import Routing
from .telemetry import Metrics, Record


@dataclass
class ServeOptions:
    """The running proxy's settings (built from a :class:`~hybridllm.serve.config.ServeConfig`)."""

    fallback: bool = True  # routed requests retry on the other model when theirs fails
    api_keys: list[str] = field(default_factory=list, repr=False)  # keys clients must send; [] = open
    public_metrics: bool = False  # /metrics and /ready without a key even when keys are set
    api_docs: bool = False  # /docs, /redoc, /openapi.json
    max_body_bytes: int = 1_000_000
    max_messages: int = 512
    max_router_chars: int = 16_000  # what the router tokenises at most (head + tail beyond)
    client_timeout_s: float = 30.0  # to send the whole body
    log_prompts: bool = False
    batch_window_s: float = 0.0
    default_knob: str | None = None  # what plain "hybrid" means, as another routing name
    # price per 1M (input, output) tokens per model: /metrics then counts each request's estimated
    # cost and what always using the reference (best) model would have cost
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the workers of one `--workers N` server share the default knob and the live window here
    state_dir: str | None = None


def openai_error(status: int, message: str, param: str | None = None, code: Any = None, headers: Any = None) -> Any:
    from starlette.responses import Response

    return Response(
        error_body(message, error_type(status), param, code),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


async def _share(metrics: Metrics, every_s: float = 0.5) -> None:
    """A worker of ``--workers N``: publish the live window for the others' dashboards (the knob
    needs no polling: its readers sync before they use it)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(metrics.live.publish)
        except OSError:
            logging.getLogger("hybridllm.serve").warning("could not share the live window", exc_info=True)


WATCH_AFTER_S = 0.005


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


def _hot_path_app() -> Any:
    from fastapi import FastAPI
    from starlette.requests import Request

    class HotPathApp(FastAPI):
        """FastAPI with the two proxied routes served before its middleware stack and router: their
        handler reads and checks the body itself and turns every failure into an OpenAI-shaped
        response, so the stack (error and exception middlewares, route matching over every route,
        the request/response wrapper) would only add work to every proxied request. Middleware
        that a user adds (``app.add_middleware``) turns the shortcut off, so it sees every request."""

        hot: Mapping[str, Any] = MappingProxyType({})  # path -> handler, set by create_app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
                handler = self.hot.get(scope["path"])
                if handler is not None:
                    scope["app"] = self
                    response = await handler(Request(scope, receive, send))
                    await response(scope, receive, send)
                    return
            await super().__call__(scope, receive, send)

    return HotPathApp


def create_app(router: Any, *upstreams: Backend | ServeOptions, options: ServeOptions | None = None) -> Any:
    """The ASGI app: ``create_app(router, small, large[, options])`` for a two-model router, or
    ``create_app(router, *upstreams[, options])`` with one upstream per model of a router over N
    models (any order; matched by each backend's ``name``). ``router`` needs ``score(texts)``, ``threshold(...)``,
    ``turns`` and, for N models, ``fleet``."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response, StreamingResponse

    opts = options or next((u for u in upstreams if isinstance(u, ServeOptions)), None) or ServeOptions()
    routing = Routing(router, [u for u in upstreams if isinstance(u, Backend)])
    ups = routing.ups
    metrics = Metrics(opts.prices, routing.fleet.reference, [u.who for u in ups], opts.state_dir)
    forced = forced_names([(u.who, u.model) for u in ups], pair=routing.pair)
    control = KnobControl(router, routing, forced, opts)
    state: dict[str, Any] = {"in_flight": 0}  # requests between their first byte read and their answer

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(router, opts.batch_window_s)
        state["batcher"].start()
        async with AsyncExitStack() as stack:
            for u in ups:
                await stack.enter_async_context(u)
            sharing = asyncio.ensure_future(_share(metrics)) if opts.state_dir else None
            yield
            if sharing is not None:
                sharing.cancel()
            await state["batcher"].stop()

    docs = opts.api_docs
    app = _hot_path_app()(
        title="hybridllm",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        msg = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        return openai_error(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> Any:
        return openai_error(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        return openai_error(400, "invalid request")

    def authorised(request: Request) -> bool:
        if not opts.api_keys:
            return True
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in opts.api_keys)

    def unauthorised() -> Any:
        return openai_error(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> Any:
        """Liveness: the process answers. Says nothing about upstreams (see /ready)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request) -> Any:
        if not (opts.public_metrics or authorised(request)):
            return unauthorised()
        got = await asyncio.gather(*(u.probe() for u in ups))
        report = {u.who: g for u, g in zip(ups, got, strict=True)}
        ok = all(g["ok"] for g in got)
        return JSONResponse({"status": "ready" if ok else "not ready", "upstreams": report}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        if not (opts.public_metrics or authorised(request)):
            return unauthorised()
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return unauthorised()
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "owned_by": "hybridllm"}
                for n in routing_names(forced, routing.fleet.costs_given)
            ],
        }

    async def route(rec: Record, model: str, extra: Any, text: str) -> tuple[int, str, bool]:
        """(index of the target upstream, reason, may fall back)."""
        if model == "hybrid" and opts.state_dir:
            control.sync()  # another worker may have changed it
        if model == "hybrid" and opts.default_knob:
            model = opts.default_knob
        knob = parse_knob(model, extra, forced)
        if knob.force:
            target = forced[knob.force]
            metrics.decisions.labels(ups[target].who, "forced").inc()
            return target, f"forced {routing.label(target)}", bool(knob.fallback)
        try:
            threshold, reason = control.threshold(knob)
        except ValueError as exc:
            raise RequestError(400, str(exc), "model") from None
        r0 = time.perf_counter()
        try:
            scores = await state["batcher"].score(text, alone=state["in_flight"] == 1)
        except Exception as exc:
            raise RequestError(400, f"the router could not read this prompt ({type(exc).__name__})") from None
        metrics.router.observe(time.perf_counter() - r0)
        target, chosen = routing.decide(scores, threshold)
        rec.score, rec.threshold = chosen, threshold
        rec.scores = routing.named_scores(scores)
        metrics.decisions.labels(ups[target].who, "router").inc()
        return target, reason, opts.fallback if knob.fallback is None else knob.fallback

    async def attempts(order: list[int], body: dict[str, Any], kind: str, stream: bool, rec: Record) -> Any:
        failure: Failure | None = None
        for which in order:
            up = ups[which]
            got = await up.forward(kind, dict(body, model=up.model), stream)
            if isinstance(got, Answer):
                if which != order[0]:
                    rec.fallback_from = ups[order[0]].who
                    metrics.fallbacks.labels(rec.fallback_from, up.who).inc()
                rec.model = up.who
                return got
            metrics.errors.labels(up.who).inc()
            failure = got
        rec.model = ups[order[0]].who
        return failure

    async def handle(request: Request, kind: str) -> Any:
        """One proxied request. Its access-log line and counts are recorded after the answer has
        been sent (the response's background step), off the client's critical path; a request
        that ends without an answer (cancelled) is recorded at once, a stream when it ends."""
        rec = Record("req-" + os.urandom(6).hex(), time.perf_counter())  # 48 random bits, as uuid4()[:12] gave
        state["in_flight"] += 1
        response: Any = None
        try:
            response = await answer(request, kind, rec)
        finally:
            state["in_flight"] -= 1
            if response is None:
                metrics.record(rec, opts.log_prompts)
        if not isinstance(response, StreamingResponse):  # a relay records itself when it ends
            response.background = BackgroundTask(record_after, rec)
        return response

    async def record_after(rec: Record) -> None:
        """Coroutine on purpose: Starlette runs a plain function's background task in a thread."""
        metrics.record(rec, opts.log_prompts)

    async def answer(request: Request, kind: str, rec: Record) -> Any:
        headers = {"x-hybridllm-request-id": rec.rid}
        try:
            if not authorised(request):
                raise RequestError(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})
            raw = await read_body(request, opts.max_body_bytes, opts.client_timeout_s)
            body = parse_json(raw)
            extra = body.pop("hybridllm", None)
            req = check_request(body, kind, opts.max_messages, getattr(router, "turns", "all"), opts.max_router_chars)
            rec.stream = req.stream
            if opts.log_prompts:
                rec.prompt = req.text
            try:
                target, reason, may_fall_back = await route(rec, req.model, extra, req.text)
            except KnobError as exc:
                status = 404 if exc.unknown_model else 400
                raise RequestError(
                    status, str(exc), "model", "model_not_found" if exc.unknown_model else None
                ) from None
            headers["x-hybridllm-reason"] = reason
            if rec.score is not None:
                headers["x-hybridllm-score"] = f"{rec.score:.6f}"
                headers["x-hybridllm-threshold"] = f"{rec.threshold:.6f}"
            if rec.scores is not None:
                headers["x-hybridllm-scores"] = ",".join(f"{m}={v:.6f}" for m, v in rec.scores.items())
            order = routing.fallback_order(target) if may_fall_back else [target]
            # the upstream calls run while a watcher listens to the client: one that leaves
            # cancels them (and no fallback is paid for nobody). The watcher starts after
            # WATCH_AFTER_S: an answer that comes sooner never pays for a task of its own
            left: list[bool] = []
            watcher = _Watcher(request, asyncio.current_task(), left)
            try:
                got = await attempts(order, req.body, kind, req.stream, rec)
            except asyncio.CancelledError:
                if not left:
                    raise
                rec.status, rec.error = 499, "client disconnected"
                rec.model = ups[target].who
                return Response(status_code=499)
            finally:
                watcher.cancel()
            if isinstance(got, Failure):
                hdr = dict(headers, **({"retry-after": got.retry_after} if got.retry_after else {}))
                raise RequestError(got.status, got.message, headers=hdr)
            headers["x-hybridllm-model"] = rec.model
            if rec.fallback_from:
                headers["x-hybridllm-fallback-from"] = rec.fallback_from
                headers["x-hybridllm-reason"] = f"{reason}; fallback after {rec.fallback_from} failed"
            if got.stream is not None:
                rec.status = 200
                return StreamingResponse(relay(got.stream, rec), media_type="text/event-stream", headers=headers)
            rec.status = got.status
            usage = got.payload.get("usage") if isinstance(got.payload, dict) else None
            rec.usage = usage if isinstance(usage, dict) else {}
            # the upstream's bytes as they are: nothing re-serialised, nothing of the schema changed
            return Response(got.data, status_code=got.status, headers=headers, media_type="application/json")
        except RequestError as exc:
            rec.status, rec.error = exc.status, exc.message
            return openai_error(exc.status, exc.message, exc.param, exc.code, exc.headers or headers)
        except Exception as exc:  # a bug: the request fails alone, shaped like every other error
            logging.getLogger("hybridllm.serve").exception("internal error in %s", rec.rid)
            rec.status, rec.error = 500, f"internal error ({type(exc).__name__})"
            return openai_error(500, f"internal error ({type(exc).__name__}); request id {rec.rid}")

    async def relay(stream: AsyncIterator[bytes], rec: Record) -> AsyncIterator[bytes]:
        """Relay the chunks; a failure mid-stream ends with an error event instead of a hang."""
        try:
            async for chunk in stream:
                yield chunk
        except StreamBroke as exc:
            rec.status, rec.error = 502, str(exc)
            yield b"data: " + error_body(str(exc), "upstream_error") + b"\n\n"
        except asyncio.CancelledError:
            rec.status, rec.error = 499, "client disconnected"
            raise
        finally:
            if hasattr(stream, "aclose"):
                await stream.aclose()
            metrics.record(rec, opts.log_prompts)

    async def chat(request: Request) -> Any:
        return await handle(request, "chat")

    async def completions(request: Request) -> Any:
        return await handle(request, "completion")

    # the hot path: POSTs to these two paths go straight to their handler (see _hot_path_app); the
    # routes are also registered so that other methods get the usual 405 through the full stack
    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.hot = {"/v1/chat/completions": chat, "/v1/completions": completions}

    mount_dashboard(app, control, metrics, authorised, unauthorised)
    app.state.metrics = metrics
    app.state.knob = control
    app.state.options = opts
    return app
