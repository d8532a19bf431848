"""``/dashboard``: one page for people watching a running proxy (no build step, assets in the
package, nothing fetched from outside), its data as JSON, and the run-time default knob.

Access: the page itself holds no data. ``/dashboard/data`` is guarded like ``/metrics`` (a client key
when keys are set, unless ``public_metrics``); ``POST /dashboard/knob`` always needs a client key when
keys are set, since it changes where traffic goes.
"""


import asyncio
import json
import logging
import os
from importlib import resources
from typing import Any

from hybridllm.fsutil import atomic_write

from .errors import RequestError
from .knobs import Knob, KnobError, parse_knob
from .protocol import parse_json, read_body

_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
log = logging.getLogger("hybridllm.access")


def _asset(name: str) -> bytes:
    return resources.files("hybridllm.serve").joinpath("static", name).read_bytes()


class KnobControl:
    """The default knob (what plain ``hybrid`` means) and the router's view of it: threshold, the
    validation cost–quality curve and the point on it."""

    def __init__(self, router: Any, routing: Any, forced: dict[str, int], opts: Any) -> None:
        self.router, self.routing, self.forced, self.opts = router, routing, forced, opts
        cal = router.config.get("calibration") or []
        # the curve's x: spend when the models' costs are known, else the share away from the reference
        fleet = routing.fleet
        self.x_key = "cost" if fleet.costs_given else "cost_advantage"
        away = f"% of queries not sent to {fleet.reference}"
        self.x_label = f"cost, % of always {fleet.reference}" if fleet.costs_given else away
        self.curve = [[float(r[self.x_key]), float(r["quality_drop"]), float(r["threshold"])] for r in cal]
        # the workers of one server share the knob through a file: a change made on one worker is
        # seen by the others at their next `hybrid` request (one stat call each)
        self.path = os.path.join(opts.state_dir, "knob") if opts.state_dir else None
        self._seen: int | None = None
        self._thresholds: dict[tuple[Any, ...], tuple[float, str]] = {}

    @property
    def name(self) -> str:
        return self.opts.default_knob or "hybrid"

    def resolve(self, name: str) -> tuple[float | None, str]:
        """(threshold or None for a forced model, description); KnobError/ValueError when invalid."""
        knob = parse_knob(name, None, self.forced)
        if knob.force:
            return None, f"forced {knob.force}"
        return self.threshold(knob)

    def threshold(self, knob: Knob) -> tuple[float, str]:
        """(threshold, description) of a routed knob, memoised (the calibration is fixed);
        ValueError when the router cannot meet it."""
        key = (knob.max_quality_drop, knob.cost_advantage, knob.threshold, knob.budget)
        got = self._thresholds.get(key)
        if got is None:
            kw: dict[str, Any] = {"max_quality_drop": knob.max_quality_drop, "cost_advantage": knob.cost_advantage}
            if knob.budget is not None:
                kw["budget"] = knob.budget
            got = self.router.threshold(threshold=knob.threshold, **kw)
            if len(self._thresholds) > 4096:  # knob values come from clients: keep the memo bounded
                self._thresholds.clear()
            self._thresholds[key] = got
        return got

    def set(self, name: str) -> None:
        self.resolve(name)  # refuse what would fail every request
        before = self.name
        self.opts.default_knob = None if name == "hybrid" else name
        if self.path is not None:
            atomic_write(self.path, name, durable=False)
            self.sync()
        log.info(json.dumps({"event": "default_knob", "from": before, "to": self.name}))

    def sync(self) -> None:
        """Take the shared knob when another worker changed it."""
        if self.path is None:
            return
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self._seen:
            self._seen = mtime
            with open(self.path, encoding="utf-8") as fh:
                name = fh.read().strip()
            self.opts.default_knob = None if name == "hybrid" else name

    def view(self) -> dict[str, Any]:
        self.sync()
        threshold, reason = self.resolve(self.name)
        point = None
        if threshold is not None and self.curve:
            row = min(self.curve, key=lambda r: abs(r[2] - threshold))
            point = {"x": row[0], "quality_drop": row[1]}
        return {
            "knob": self.name,
            "reason": reason,
            "threshold": threshold,
            "curve": {"x_label": self.x_label, "points": [[r[0], r[1]] for r in self.curve]},
            "point": point,
            "pair": self.routing.pair,
            "models": [u.who for u in self.routing.ups],
        }


def mount_dashboard(app: Any, control: KnobControl, metrics: Any, authorised: Any, unauthorised: Any) -> None:
    from fastapi import Request
    from starlette.responses import JSONResponse, Response

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
        if not (opts.public_metrics or authorised(request)):
            return unauthorised()
        # summarised in a thread: the proxy's event loop keeps serving meanwhile
        live = await asyncio.to_thread(metrics.live.snapshot)
        return JSONResponse({**live, "router": control.view(), "auth": bool(opts.api_keys)})

    @app.post("/dashboard/knob", include_in_schema=False)
    async def knob(request: Request) -> Any:
        if not authorised(request):
            return unauthorised()
        body = parse_json(await read_body(request, 10_000, opts.client_timeout_s))
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise RequestError(400, 'send {"model": NAME}: a routing name such as hybrid-qd-2', "model")
        try:
            control.set(name)
        except (KnobError, ValueError) as exc:
            raise RequestError(400, str(exc), "model") from None
        return JSONResponse(control.view())
