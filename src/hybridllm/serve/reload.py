"""A router replaced while the server runs: :class:`RouterSlot` serves the router in force and swaps
in a new one read from the same path (a router slot: a symbolic link that ``hybridllm retrain
--promote`` repoints), and :class:`ReloadGate` makes every decision whole on one router or the other.

- **Atomic for requests.** A swap waits until no decision is under way and holds new decisions back
  for the instant it takes (no request scores on one router and thresholds on the other); requests
  whose decision is made finish on the model it chose.
- **Checked before it serves.** The new artifact is loaded off the event loop and must route the same
  fleet (models, reference, scored candidates); a broken or different one is refused, the old router
  keeps serving, and the refusal is one line naming why.
- **Re-anchored.** Whatever depends on the router's calibration (the admin knob's thresholds, a
  hold's range and starting point) is told through :meth:`RouterSlot.on_swap`.
- **Triggers.** ``SIGHUP``, ``POST /admin/reload`` (the admin key) and, with ``--router-watch S``,
  a look at the slot's target every S seconds (how every worker of ``--workers N`` picks it up).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hybridllm.errors import HybridLLMError

from .decision import Decider, RouteDecision, ServingRouter

log = logging.getLogger("hybridllm.serve")


class ReloadError(HybridLLMError):
    """A router that cannot replace the one serving (the old one keeps serving)."""


def router_version(path: str | Path) -> str:
    """A short name for an artifact: its directory's name and a digest of its config."""
    p = Path(path).resolve()
    try:
        digest = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "unknown"
    return f"{p.name}@{digest}"


class RouterSlot:
    """The router in force (a :class:`ServingRouter` itself, delegating to it) and where a new one
    comes from: ``source`` (a directory or a slot link), read by ``load(path)``."""

    def __init__(self, router: ServingRouter, source: str | Path | None, load: Callable[[Path], ServingRouter]) -> None:
        self.current = router
        self.source = None if source is None else Path(source)
        self._load = load
        self.target = None if self.source is None else self.source.resolve()
        self.version = "given" if self.source is None else router_version(self.source)
        self.reloads = {"ok": 0, "refused": 0, "unchanged": 0}
        self._deciding = 0
        self._swapping: asyncio.Event | None = None  # set while a swap holds decisions back
        self._drained: asyncio.Event | None = None
        self._listeners: list[Callable[[ServingRouter], None]] = []
        self._lock: asyncio.Lock | None = None

    # --- a ServingRouter: the router in force --------------------------------------------------
    @property
    def config(self) -> Mapping[str, Any]:
        return self.current.config

    @property
    def fleet(self) -> Any:
        return self.current.fleet

    @property
    def turns(self) -> str:
        return self.current.turns

    def score(self, prompts: Sequence[Any]) -> np.ndarray:
        return self.current.score(prompts)

    def threshold(self, *args: Any, **kwargs: Any) -> tuple[float, str]:
        return self.current.threshold(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the rest of the router in force (models, small, large, ...)
        if name == "current":
            raise AttributeError(name)
        return getattr(self.current, name)

    # --- swapping -------------------------------------------------------------------------------
    def on_swap(self, listener: Callable[[ServingRouter], None]) -> None:
        """Call ``listener(new_router)`` right after each swap (no decision is under way then)."""
        self._listeners.append(listener)

    async def reload(self, force: bool = False) -> dict[str, Any]:
        """Load the router at ``source`` and swap it in; the outcome as a dict (``status``: ok,
        unchanged — the slot points where it did, unless ``force`` — or refused, with ``error``)."""
        if self.source is None:
            raise ReloadError("this server was given a router object, not a path: nothing to reload from")
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            target = self.source.resolve()
            if target == self.target and not force:
                self.reloads["unchanged"] += 1
                return {"status": "unchanged", "version": self.version}
            try:
                new = await asyncio.to_thread(self._load, target)
                self._check(new)
            except Exception as exc:  # a broken artifact of any kind: the old router keeps serving
                self.reloads["refused"] += 1
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning(json.dumps({"event": "router_reload", "status": "refused", "path": str(target),
                                        "error": msg[:300], "serving": self.version}))  # fmt: skip
                return {"status": "refused", "error": msg, "version": self.version}
            before = self.version
            await self._swap(new)
            self.target, self.version = target, router_version(target)
            self.reloads["ok"] += 1
            log.warning(json.dumps({"event": "router_reload", "status": "ok", "from": before, "to": self.version}))
            return {"status": "ok", "version": self.version, "previous": before}

    def _check(self, new: ServingRouter) -> None:
        old_f, new_f = self.current.fleet, new.fleet
        if (list(old_f.models), old_f.reference) != (list(new_f.models), new_f.reference):
            raise ReloadError(
                f"the new router routes {list(new_f.models)} (reference {new_f.reference}), this server "
                f"{list(old_f.models)} (reference {old_f.reference}): restart to change the fleet"
            )
        if list(self.current.config.get("candidates", [])) != list(new.config.get("candidates", [])):
            raise ReloadError("the new router scores other candidate models: restart to change the fleet")
        if not new.config.get("calibration"):
            raise ReloadError("the new router has no calibration table")
        probe = np.asarray(new.score(["a router reload's probe"]))
        if not np.all(np.isfinite(probe)):
            raise ReloadError("the new router's scores are not finite")

    async def _swap(self, new: ServingRouter) -> None:
        self._swapping = asyncio.Event()
        self._drained = asyncio.Event()
        try:
            if self._deciding:
                await self._drained.wait()
            self.current = new
            for listener in self._listeners:
                listener(new)
        finally:
            done, self._swapping = self._swapping, None
            done.set()

    # --- the gate's side ------------------------------------------------------------------------
    async def enter(self) -> None:
        while self._swapping is not None:
            await self._swapping.wait()
        self._deciding += 1

    def leave(self) -> None:
        self._deciding -= 1
        if self._deciding == 0 and self._drained is not None:
            self._drained.set()

    def start(self, watch_s: float = 0.0) -> None:
        """On the serving loop: reload on ``SIGHUP`` (where the loop may take signals: the main
        thread), and every ``watch_s`` seconds when the slot points somewhere new."""
        loop = asyncio.get_running_loop()
        self._tasks: list[asyncio.Task[Any]] = []
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: self._tasks.append(loop.create_task(self.reload())))
            self._signal = True
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):  # not the main thread, or no SIGHUP
            self._signal = False
        if watch_s > 0:
            self._tasks.append(loop.create_task(self.watch(watch_s)))

    def stop(self) -> None:
        if getattr(self, "_signal", False):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in getattr(self, "_tasks", []):
            task.cancel()

    async def watch(self, every_s: float) -> None:
        """Reload whenever the slot points somewhere new (checked every ``every_s`` seconds)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                if self.source is not None and self.source.resolve() != self.target:
                    await self.reload()
            except OSError:
                log.warning("could not read the router slot %s", self.source, exc_info=True)


class ReloadGate:
    """A :class:`Decider` whose decisions are each made whole on one router: the slot swaps only
    between decisions."""

    def __init__(self, inner: Decider, slot: RouterSlot) -> None:
        self.inner, self.slot = inner, slot

    async def decide(self, model: str, extra: Any, text: str, alone: bool) -> RouteDecision:
        await self.slot.enter()
        try:
            return await self.inner.decide(model, extra, text, alone)
        finally:
            self.slot.leave()


def mount_reload(app: Any, slot: RouterSlot, refuse: Callable[[Request], Response | None]) -> None:
    """``POST /admin/reload`` (``refuse``: the admin gate) and the slot's state on ``/metrics``
    (``hybridllm_router_info{version}``, ``hybridllm_router_reloads_total{status}``)."""

    @app.post("/admin/reload")
    async def reload_route(request: Request) -> Any:
        refused = refuse(request)
        if refused is not None:
            return refused
        try:
            got = await slot.reload(force=request.query_params.get("force") == "1")
        except ReloadError as exc:
            return JSONResponse({"status": "refused", "error": str(exc)}, 409)
        return JSONResponse(got, 409 if got["status"] == "refused" else 200)


def reload_families(slot: RouterSlot) -> list[Metric]:
    info = GaugeMetricFamily("hybridllm_router_info", "the router serving now", labels=["version"])
    info.add_metric([slot.version], 1.0)
    done = CounterMetricFamily("hybridllm_router_reloads", "router reloads, by outcome", labels=["status"])
    for status, n in slot.reloads.items():
        done.add_metric([status], float(n))
    return [info, done]
