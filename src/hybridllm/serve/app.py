"""The ASGI app: OpenAI-compatible routes in front of every model of a router.

Every response carries ``x-hybridllm-request-id``, ``-model``, ``-reason`` and, when the router
decided, ``-score`` and ``-threshold``; a fallback adds ``x-hybridllm-fallback-from``. The body is
the upstream's, byte for byte. Every request, refused or answered, gets one JSON access-log line
and a count in ``/metrics``.

Layout: this module builds the collaborators and the routes; the proxied request path is
:class:`hybridllm.serve.proxy.Proxy`, where each request goes is its
:class:`~hybridllm.serve.decision.Decider`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from hybridllm.backends import Backend
from hybridllm.routing.live import Hold, parse_hold
from hybridllm.stages.score import JUDGE_RUBRIC

from .budget import Budget, SteeringWatch, parse_cap
from .control import KnobControl
from .dashboard import mount_dashboard
from .decision import Decider, PolicyDecider, ServingRouter
from .errors import RequestError, ServeConfigError
from .feedback import FeedbackDesk, mount_feedback
from .guard import AdminGate, BrowserGuard
from .hold import HoldSync, LiveDecider, LiveQuality, live_families
from .knobs import forced_names, routing_names
from .options import ServeOptions
from .protocol import openai_error
from .proxy import Proxy
from .routing import Routing
from .shadow import JudgeScorer, RewardScorer, Shadow
from .state import StateStore, make_store
from .telemetry import Metrics

__all__ = ["ServeOptions", "create_app", "openai_error"]


async def _share(metrics: Metrics, every_s: float = 0.5) -> None:
    """A worker of ``--workers N``: publish the live window for the others' dashboards (the knob
    needs no polling: its readers sync before they use it)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(metrics.live.publish)
        except OSError:
            logging.getLogger("hybridllm.serve").warning("could not share the live window", exc_info=True)


class HotPathApp(FastAPI):
    """FastAPI with the two proxied routes served before its middleware stack and router: their
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
    *upstreams: Backend | ServeOptions,
    options: ServeOptions | None = None,
    decider: Any = None,
    judge: Backend | RewardScorer | None = None,
) -> Any:
    """The ASGI app: ``create_app(router, *upstreams[, options])`` with one upstream per model of
    the router (matched by each backend's ``name``; a two-model router's ``small, large`` also by
    position). ``decider(policy)``: wraps the router's :class:`PolicyDecider` into the
    :class:`Decider` the proxy asks (a controller, a budget cap); default: the policy itself.
    ``judge``: what scores shadow pairs (needed with ``options.shadow_rate``): an LLM judge's backend
    or a reward-model checkpoint."""
    opts = options or next((u for u in upstreams if isinstance(u, ServeOptions)), None) or ServeOptions()
    routing = Routing(router, [u for u in upstreams if isinstance(u, Backend)])
    ups = routing.ups
    metrics = Metrics(opts.prices, routing.fleet.reference, [u.who for u in ups], opts.state_dir)
    forced = forced_names([(u.who, u.model) for u in ups], pair=routing.pair)
    store = make_store(opts.state, opts.state_lease_s)
    live, hold, shadow, sync = _live_control(router, routing, metrics, opts, judge, store)
    control = KnobControl(router, routing, forced, opts, hold)  # a hold owns plain hybrid while it runs
    policy = PolicyDecider(router, routing, control, metrics, opts, forced)
    chosen: Decider = decider(policy) if decider is not None else policy
    if live is not None:
        chosen = LiveDecider(chosen, hold, live)
    proxy = Proxy(router, routing, chosen, metrics, opts)
    proxy.shadow, proxy.store = shadow, store
    if opts.outcomes:
        desk = proxy.feedback = FeedbackDesk.open(opts)
        if shadow is not None:  # a shadow record names its request; its prompt goes in the request record
            shadow.sinks.append(lambda pair, job: desk.submit(job.rid, _shadow_record(pair, job, routing), job.prompt))
    fleet = routing.fleet
    if opts.api_keys:
        proxy.steering = SteeringWatch({i for i in range(len(ups)) if i > 0 and fleet.costs[i] > fleet.costs[0]})
    if opts.budget_caps:
        proxy.budget = Budget(
            [parse_cap(c) for c in opts.budget_caps], store, opts.prices, opts.on_cap, cheapest=0,
            max_output=opts.max_output,
        )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        policy.start()
        async with AsyncExitStack() as stack:
            for u in ups:
                await stack.enter_async_context(u)
            if shadow is not None and judge is not None:
                await stack.enter_async_context(judge)
            sharing = asyncio.ensure_future(_share(metrics)) if opts.state_dir else None
            syncing = asyncio.ensure_future(sync.run()) if sync is not None else None
            yield
            for task in (sharing, syncing):
                if task is not None:
                    task.cancel()
            if shadow is not None:
                await shadow.close()  # shadow calls in flight are cancelled, before their upstreams close
            await proxy.close()
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
    _routes(app, proxy, routing, forced, metrics, opts)
    # the hot path: POSTs to these two paths go straight to their handler (see HotPathApp); the
    # routes are also registered so that other methods get the usual 405 through the full stack
    app.add_route("/v1/chat/completions", proxy.chat, methods=["POST"])
    app.add_route("/v1/completions", proxy.completions, methods=["POST"])
    app.hot = {"/v1/chat/completions": proxy.chat, "/v1/completions": proxy.completions}
    admin = AdminGate(opts.admin_keys, bool(opts.api_keys), proxy.authorised)
    app.guard = None if opts.api_keys else BrowserGuard(opts.allowed_hosts)
    mount_dashboard(app, control, metrics, admin, _unauthorised)
    app.state.metrics = metrics
    app.state.knob = control
    app.state.options = opts
    app.state.proxy = proxy
    app.state.live = live
    app.state.hold = hold
    app.state.shadow = shadow
    return app


def _shadow_record(pair: Any, job: Any, routing: Routing) -> dict[str, Any]:
    served, other = routing.ups[pair.served].who, routing.ups[pair.other].who
    q = {served: pair.q_served, other: pair.q_other, **{routing.ups[m].who: v for m, v in pair.extra}}
    rec: dict[str, Any] = {"type": "shadow", "id": job.rid, "t": round(pair.t, 3), "served": served, "other": other,
                           "q": q, "scores": list(pair.scores)}  # fmt: skip
    return rec


def _live_control(
    router: ServingRouter,
    routing: Routing,
    metrics: Metrics,
    opts: ServeOptions,
    judge: Backend | RewardScorer | None,
    store: StateStore,
) -> tuple[LiveQuality | None, Hold | None, Shadow | None, HoldSync | None]:
    """The live estimates, the controller, the shadow checks and the sharing of the controller's
    pairs across replicas (with ``--state``) that the options ask for (None each when off)."""
    if not opts.shadow_rate and not opts.hold:
        return None, None, None, None
    fleet = routing.fleet
    live = LiveQuality(fleet)
    hold = None
    if opts.hold:
        kind, target = parse_hold(opts.hold)
        cal = router.config.get("calibration") or []
        hold = Hold(kind, target, fleet, cal, confidence=opts.hold_confidence, window_requests=opts.hold_window)
        if kind == "max_quality_drop" and not opts.shadow_rate:
            raise ServeConfigError("--hold max_quality_drop needs shadow checks (--shadow-rate and --judge)")
        if opts.default_knob:  # one owner for plain hybrid (docs/control.md)
            raise ServeConfigError(
                f"--default-knob {opts.default_knob} and --hold {opts.hold} both set what plain hybrid means: "
                "drop one (a hold owns plain hybrid while it runs)"
            )
    shadow = None
    if opts.shadow_rate:
        if judge is None:
            raise ServeConfigError("--shadow-rate needs a judge (--judge SPEC)")
        shadow = Shadow(
            opts.shadow_rate,
            judge if isinstance(judge, RewardScorer) else JudgeScorer(judge, opts.judge_rubric or JUDGE_RUBRIC),
            routing.ups, fleet.ref,
            concurrency=opts.shadow_concurrency, per_minute=opts.shadow_per_minute,
            count=metrics.count_shadow, price=metrics.shadow_cost,
            all_sides=hold is not None and hold.kind == "max_quality_drop" and len(fleet.models) > 2,
            max_tokens=opts.shadow_max_tokens, max_prompt_chars=opts.shadow_max_prompt_chars,
            judge_name=opts.judge_name or str(getattr(judge, "who", None) or "judge"),
        )  # fmt: skip
        shadow.sinks.append(live.add_pair)
        if hold is not None:
            shadow.sinks.append(lambda pair, job: hold.add_pair(pair))
    sync = None
    if hold is not None and shadow is not None and opts.state:
        sync = HoldSync(hold, store)
        shadow.sinks.append(sync.add)
    metrics.extra.append(lambda: live_families(live, hold))
    return live, hold, shadow, sync


def _unauthorised() -> Response:
    return openai_error(401, "invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})


def _errors(app: FastAPI) -> None:
    """Every error the framework raises, in OpenAI's shape."""

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


def _routes(
    app: FastAPI, proxy: Proxy, routing: Routing, forced: dict[str, int], metrics: Metrics, opts: ServeOptions
) -> None:
    """The routes beside the proxied ones: health, readiness, metrics, feedback, the model list."""
    authorised, ups = proxy.authorised, routing.ups
    mount_feedback(app, proxy.feedback, proxy.client, lambda m: metrics.feedback.labels(m).inc(), opts, _unauthorised)

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
        names = routing_names(forced, routing.fleet.costs_given)
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "hybridllm"} for n in names]}
