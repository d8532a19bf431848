"""``/dashboard``: one page for people watching a running proxy (no build step, assets in the
package, nothing fetched from outside), its data as JSON, and a control for the run-time default
knob (:mod:`hybridllm.serve.control` holds it).

Access: the page itself holds no data. ``/dashboard/data`` is guarded like ``/metrics`` (a client key
or the admin key when keys are set, unless ``public_metrics``); ``POST /dashboard/knob`` changes where
every tenant's traffic goes, so it needs the admin key (:mod:`hybridllm.serve.guard`): a client key
gets 403.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from .control import KnobControl
from .errors import RequestError
from .guard import AdminGate
from .knobs import KnobError
from .protocol import parse_json, read_body

_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
log = logging.getLogger("hybridllm.access")


def _asset(name: str) -> bytes:
    return resources.files("hybridllm.serve").joinpath("static", name).read_bytes()


def mount_dashboard(app: Any, control: KnobControl, metrics: Any, admin: AdminGate, unauthorised: Any) -> None:
    opts = control.opts

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
        live = await asyncio.to_thread(metrics.live.snapshot)
        held, quality = getattr(app.state, "hold", None), getattr(app.state, "live", None)
        return JSONResponse({**live, "router": control.view(), "auth": bool(opts.api_keys),
                             "live": None if quality is None else quality.view(),
                             "hold": None if held is None else held.state()})  # fmt: skip

    @app.post("/dashboard/knob", include_in_schema=False)
    async def knob(request: Request) -> Any:
        refused = admin.refuse(request)
        if refused is not None:
            return refused
        body = parse_json(await read_body(request, 10_000, opts.client_timeout_s))
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise RequestError(400, 'send {"model": NAME}: a routing name such as hybrid-qd-2', "model")
        try:
            control.set(name)
        except (KnobError, ValueError) as exc:
            raise RequestError(400, str(exc), "model") from None
        return JSONResponse(control.view())
