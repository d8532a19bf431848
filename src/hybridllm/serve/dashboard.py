"""``/dashboard``: one page for people watching a running proxy (no build step, assets in the
package, nothing fetched from outside), its data as JSON, and a form that sets the admin's knob, the
run-time default (:mod:`hybridllm.serve.admin_knob` holds it).

Access: the page itself holds no data. ``/dashboard/data`` is guarded like ``/metrics`` (a client key
or the admin key when keys are set, unless ``public_metrics``); ``POST /dashboard/knob`` changes where
every tenant's traffic goes, so it needs the admin key (:mod:`hybridllm.serve.guard`): a client key
gets 403.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from .admin_knob import AdminKnob
from .errors import RequestError
from .guard import AdminGate
from .knobs import KnobError
from .protocol import parse_json, read_body
from .telemetry import Metrics

_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
log = logging.getLogger("hybridllm.access")


def _asset(name: str) -> bytes:
    return resources.files("hybridllm.serve").joinpath("static", name).read_bytes()


def mount_dashboard(
    app: Any, knob: AdminKnob, metrics: Metrics, admin: AdminGate, unauthorised: Callable[[], Response]
) -> None:
    """The dashboard's routes; its data: the traffic window, the knob's view, and (under their old
    JSON keys ``live`` and ``hold``) the live estimates and the hold's state when they run."""
    opts = knob.opts

    @app.get("/dashboard", include_in_schema=False)
    async def page() -> Any:
        return Response(_asset("dashboard.html"), media_type="text/html; charset=utf-8")

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Any:
        if name not in _ASSETS:
            raise RequestError(404, f"no asset {name[:60]}")
        return Response(_asset(name), media_type=_ASSETS[name] + "; charset=utf-8")

    @app.get("/dashboard/data", include_in_schema=False)
    async def data(request: Request) -> Any:
        if not (opts.public_metrics or admin.reads(request)):
            return unauthorised()
        # summarised in a thread: the proxy's event loop keeps serving meanwhile
        traffic = await asyncio.to_thread(metrics.traffic.snapshot)
        held, quality = getattr(app.state, "hold", None), getattr(app.state, "estimates", None)
        return JSONResponse({**traffic, "router": knob.view(), "auth": bool(opts.api_keys),
                             "live": None if quality is None else quality.view(),
                             "hold": None if held is None else held.state()})  # fmt: skip

    @app.post("/dashboard/knob", include_in_schema=False)
    async def set_knob(request: Request) -> Any:
        refused = admin.refuse(request)
        if refused is not None:
            return refused
        body = parse_json(await read_body(request, 10_000, opts.client_timeout_s))
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise RequestError(400, 'send {"model": NAME}: a routing name such as hybrid-qd-2', "model")
        try:
            knob.set(name)
        except (KnobError, ValueError) as exc:
            raise RequestError(400, str(exc), "model") from None
        return JSONResponse(knob.view())
