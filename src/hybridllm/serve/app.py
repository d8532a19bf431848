"""The ASGI app: OpenAI-compatible routes (and Anthropic's Messages API, OpenAI's Responses API,
each to the models that speak it) in front of every model of a router.

Every response carries ``x-hybridllm-request-id``, ``-model``, ``-reason`` and, when the router
decided, ``-score`` and ``-threshold``; a fallback adds ``x-hybridllm-fallback-from``. The body is
the upstream's, byte for byte. Every request, refused or answered, gets one JSON access-log line
and a count in ``/metrics``.

Layout: this module is the composition root: it builds the collaborators and the routes, and the
live control the options ask for (:mod:`hybridllm.serve.control`) as the proxy's hooks. The proxied
request path is :class:`hybridllm.serve.proxy.Proxy`, where each request goes is its
:class:`~hybridllm.serve.decision.Decider`, and what runs around the call its
:class:`~hybridllm.serve.hooks.Hook` s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from hybridllm.backends import Backend

from .admin_knob import AdminKnob
from .control.assemble import live_control
from .control.outcomes import mount_feedback
from .control.shadow import RewardScorer
from .dashboard import mount_dashboard
from .decision import Decider, PolicyDecider, ServingRouter
from .errors import RequestError
from .guard import AdminGate, BrowserGuard
from .hooks import Hook
from .knobs import forced_names, routing_names
from .options import ServeOptions
from .protocol import openai_error
from .proxy import Proxy
from .reload import ReloadGate, RouterSlot, mount_reload, reload_families
from .state import make_store
from .telemetry import Metrics
from .upstreams import Upstreams
from .wire import WIRES

__all__ = ["ServeOptions", "create_app", "openai_error"]
#: the proxied routes of another protocol than OpenAI's: the framework's errors there (a 405) in theirs
_API_PATHS = {"/v1/messages": "messages", "/v1/responses": "responses"}


async def _share(metrics: Metrics, every_s: float = 0.5) -> None:
    """A worker of ``--workers N``: publish the live window for the others' dashboards (the knob
    needs no polling: its readers sync before they use it)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(metrics.traffic.publish)
        except OSError:
            logging.getLogger("hybridllm.serve").warning("could not share the traffic window", exc_info=True)


class HotPathApp(FastAPI):
    """FastAPI with the proxied routes served before its middleware stack and router: their
    handler reads and checks the body itself and turns every failure into an OpenAI-shaped
    response, so the stack (error and exception middlewares, route matching over every route,
    the request/response wrapper) would only add work to every proxied request. Middleware
    that a user adds (``app.add_middleware``) turns the shortcut off, so it sees every request."""

    hot: Mapping[str, Any] = MappingProxyType({})  # path -> handler, set by create_app
    guard: BrowserGuard | None = None  # a keyless server's Host/Origin checks (hybridllm.serve.guard)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.guard is not None and scope["type"] == "http":
            refused = self.guard.refuse(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            handler = self.hot.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    router: ServingRouter,
    *given: Backend | ServeOptions,
    options: ServeOptions | None = None,
    decider: Callable[[Decider], Decider] | None = None,
    judge: Backend | RewardScorer | None = None,
    hooks: Sequence[Hook] = (),
) -> HotPathApp:
    """The ASGI app: ``create_app(router, *upstreams[, options])`` with one upstream per model of
    the router (matched by each backend's ``name``; a two-model router's ``small, large`` also by
    position). ``decider(policy)``: wraps the router's :class:`PolicyDecider` into the
    :class:`Decider` the proxy asks (a controller, another strategy); default: the policy itself.
    ``judge``: what scores shadow pairs (needed with ``options.shadow_rate``): an LLM judge's backend
    or a reward-model checkpoint. ``hooks``: more :class:`~hybridllm.serve.hooks.Hook` s on the
    request path, after the live control the options ask for (:mod:`hybridllm.serve.control`)."""
    opts = options or next((u for u in given if isinstance(u, ServeOptions)), None) or ServeOptions()
    upstreams = Upstreams(router, [u for u in given if isinstance(u, Backend)])
    ups = upstreams.ups
    metrics = Metrics(opts.prices, upstreams.fleet.reference, [u.who for u in ups], opts.state_dir)
    forced = forced_names([(u.who, u.model) for u in ups], pair=upstreams.pair)
    store = make_store(opts.state, opts.state_lease_s)
    live = live_control(router, upstreams, metrics, opts, judge, store)
    knob = AdminKnob(router, upstreams, forced, opts, live.hold, live.money_budget)  # a hold owns plain hybrid
    policy = PolicyDecider(router, upstreams, knob, metrics, opts, forced)
    chosen = live.decider(decider(policy) if decider is not None else policy)
    slot = router if isinstance(router, RouterSlot) else None  # a router reloaded while serving
    if slot is not None:
        chosen = ReloadGate(chosen, slot)
        slot.on_swap(knob.recalibrated)
        if live.hold is not None:
            slot.on_swap(lambda new: live.hold.recalibrate(new.config["calibration"]))  # type: ignore[union-attr]
        metrics.extra.append(partial(reload_families, slot))
    proxy = Proxy(router, upstreams, chosen, metrics, opts, [*live.hooks, *hooks])

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        policy.start()
        async with AsyncExitStack() as stack:
            for u in ups:
                await stack.enter_async_context(u)
            if live.shadow is not None and judge is not None:
                await stack.enter_async_context(judge)
            sharing = asyncio.ensure_future(_share(metrics)) if opts.state_dir else None
            syncing = asyncio.ensure_future(live.sync.run()) if live.sync is not None else None
            if slot is not None:
                slot.start(opts.router_watch_s)
            yield
            if slot is not None:
                slot.stop()
            for task in (sharing, syncing):
                if task is not None:
                    task.cancel()
            await proxy.close()  # the hooks close here (shadow calls in flight cancelled, before their upstreams close)
            await store.close()
            await policy.stop()

    docs = opts.api_docs
    app = HotPathApp(
        title="hybridllm",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    _errors(app)
    _routes(app, proxy, upstreams, forced, metrics, opts, live.money_budget is not None)
    mount_feedback(app, live.desk, proxy.client, lambda m: metrics.feedback.labels(m).inc(), opts, _unauthorised)
    # the hot path: POSTs to the proxied paths go straight to their handler (see HotPathApp); the
    # routes are also registered so that other methods get the usual 405 through the full stack
    app.hot = {
        "/v1/chat/completions": proxy.chat,
        "/v1/completions": proxy.completions,
        "/v1/messages": proxy.messages,  # Anthropic's Messages API (serve.wire: to its upstreams only)
        "/v1/responses": proxy.responses,  # OpenAI's Responses API
    }
    for path, handler in app.hot.items():
        app.add_route(path, handler, methods=["POST"])
    admin = AdminGate(opts.admin_keys, bool(opts.api_keys), proxy.authorised)
    app.guard = None if opts.api_keys else BrowserGuard(opts.allowed_hosts)
    mount_dashboard(app, knob, metrics, admin, _unauthorised)
    if slot is not None:
        mount_reload(app, slot, admin.refuse)
    app.state.metrics = metrics
    app.state.knob = knob
    app.state.options = opts
    app.state.proxy = proxy
    app.state.store = store
    app.state.live_control = live
    app.state.estimates = live.estimates
    app.state.hold = live.hold
    app.state.shadow = live.shadow
    return app


def _unauthorised() -> Response:
    return openai_error(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})


def _errors(app: FastAPI) -> None:
    """Every error the framework raises, in OpenAI's shape (on the Messages route, Anthropic's)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        msg = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        wire = WIRES[_API_PATHS.get(request.url.path, "chat")]
        return wire.error(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> Any:
        return openai_error(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        return openai_error(400, "invalid request")


def _routes(
    app: FastAPI, proxy: Proxy, upstreams: Upstreams, forced: dict[str, int], metrics: Metrics, opts: ServeOptions,
    priced: bool = False,
) -> None:  # fmt: skip
    """The routes beside the proxied ones: health, readiness, metrics, the model list (budget names
    when a budget means something: the models' costs in the router, or every model ``priced``)."""
    authorised, ups = proxy.authorised, upstreams.ups

    @app.get("/health")
    async def health() -> Any:
        """Liveness: the process answers. Says nothing about upstreams (see /ready)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request) -> Any:
        if not (opts.public_metrics or authorised(request)):
            return _unauthorised()
        got = await asyncio.gather(*(u.probe() for u in ups))
        report = {u.who: g for u, g in zip(ups, got, strict=True)}
        ok = all(g["ok"] for g in got)
        return JSONResponse({"status": "ready" if ok else "not ready", "upstreams": report}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        if not (opts.public_metrics or authorised(request)):
            return _unauthorised()
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return _unauthorised()
        names = routing_names(forced, upstreams.fleet.costs_given or priced)
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "hybridllm"} for n in names]}
