"""The run-time knob: what plain ``hybrid`` means now. An operator changes it (the dashboard, the
``--default-knob`` flag) without a restart; the workers of one ``--workers N`` server share it
through a file. Resolving a knob into a threshold is memoised here (the calibration is fixed), so
the request path pays for it once per distinct knob.

One owner for plain ``hybrid``: while a hold (``--hold``) runs, it owns plain ``hybrid`` and the
knob cannot be set (``POST /dashboard/knob`` answers 409 naming the hold; ``--default-knob`` with
``--hold`` is refused at start). :meth:`AdminKnob.view` says what plain ``hybrid`` routes at now
and who set it (docs/control.md)."""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from hybridllm.fsutil import atomic_write
from hybridllm.routing.live import Hold
from hybridllm.routing.money_knob import MoneyBudget

from .errors import RequestError
from .knobs import Knob, parse_knob

if TYPE_CHECKING:
    from .decision import ServingRouter
    from .options import ServeOptions
    from .upstreams import Upstreams

log = logging.getLogger("hybridllm.access")  # the knob change is an access-log event


class AdminKnob:
    """The admin's knob: the default knob (what plain ``hybrid`` means) and the router's view of it: threshold, the
    validation cost–quality curve and the point on it."""

    def __init__(
        self, router: ServingRouter, upstreams: Upstreams, forced: dict[str, int], opts: ServeOptions,
        hold: Hold | None = None, money: MoneyBudget | None = None,
    ) -> None:  # fmt: skip
        self.router, self.upstreams, self.forced, self.opts, self.hold = router, upstreams, forced, opts, hold
        self.money = money  # every model priced: a budget knob in money on this traffic (docs/control.md)
        # the live knob: its value at start comes from the settings, its changes live here only
        self._name: str = opts.default_knob or "hybrid"
        # the curve's x: spend when the models' costs are known, else the share away from the reference
        fleet = upstreams.fleet
        self.x_key = "cost" if fleet.costs_given else "cost_advantage"
        away = f"% of queries not sent to {fleet.reference}"
        self.x_label = f"cost, % of always {fleet.reference}" if fleet.costs_given else away
        self._thresholds: dict[tuple[Any, ...], tuple[float, str]] = {}
        self.recalibrated(router)
        # the workers of one server share the knob through a file: a change made on one worker is
        # seen by the others at their next `hybrid` request (one stat call each)
        self.path = os.path.join(opts.state_dir, "knob") if opts.state_dir else None
        self._seen: int | None = None

    def recalibrated(self, router: ServingRouter) -> None:
        """Take ``router``'s calibration (at start, and when a new router is swapped in): the curve
        shown, and every knob's threshold resolved again."""
        cal = router.config.get("calibration") or []
        self.curve = [[float(r[self.x_key]), float(r["quality_drop"]), float(r["threshold"])] for r in cal]
        self._thresholds = {}
        if self.money is not None:
            self.money.recalibrate(cal)

    @property
    def name(self) -> str:
        return self._name

    @property
    def held(self) -> str | None:
        """``hold KIND=TARGET`` while a hold owns plain ``hybrid``, else None."""
        return None if self.hold is None else f"hold {self.hold.kind}={self.hold.target:g}"

    def resolve(self, name: str) -> tuple[float | None, str]:
        """(threshold or None for a forced model, description); KnobError/ValueError when invalid."""
        knob = parse_knob(name, None, self.forced)
        if knob.force:
            return None, f"forced {knob.force}"
        return self.threshold(knob)

    def threshold(self, knob: Knob) -> tuple[float, str]:
        """(threshold, description) of a routed knob, memoised (the calibration is fixed; a budget
        in money is the :class:`MoneyBudget`'s, which redoes it as the costs move); ValueError when
        the router cannot meet it."""
        if knob.budget is not None and self.money is not None:
            thr, _, why = self.money.resolve(knob.budget)
            return thr, why
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
        """Make ``name`` what plain ``hybrid`` means; 409 while a hold owns it, KnobError/ValueError
        for a knob that would fail every request."""
        if self.hold is not None:
            raise RequestError(
                409, f"plain hybrid is held by --{self.held} (threshold {self.hold.threshold:.4f}): the knob cannot be "
                "set while a hold runs; restart without --hold, or name a knob per request", "model", "held",
            )  # fmt: skip
        self.resolve(name)  # refuse what would fail every request
        before = self.name
        self._name = name
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
            self._name = name or "hybrid"

    def in_force(self) -> tuple[float | None, str, str]:
        """(threshold, reason, owner) plain ``hybrid`` requests route at now; owner: ``hold
        KIND=TARGET``, ``knob NAME`` (set at start or on the dashboard) or ``default``."""
        if self.hold is not None:
            return self.hold.threshold, self.hold.reason, f"hold {self.hold.kind}={self.hold.target:g}"
        threshold, reason = self.resolve(self.name)
        return threshold, reason, "default" if self.name == "hybrid" else f"knob {self.name}"

    def view(self) -> dict[str, Any]:
        self.sync()
        threshold, reason, owner = self.in_force()
        point = None
        if threshold is not None and self.curve:
            row = min(self.curve, key=lambda r: abs(r[2] - threshold))
            point = {"x": row[0], "quality_drop": row[1]}
        return {
            "knob": self.name,
            "reason": reason,
            "threshold": threshold,  # what plain hybrid routes at now
            "owner": owner,  # who set it: "hold KIND=TARGET", "knob NAME" or "default"
            "curve": {"x_label": self.x_label, "points": [[r[0], r[1]] for r in self.curve]},
            "point": point,
            "pair": self.upstreams.pair,
            "models": [u.who for u in self.upstreams.ups],
        }
