"""From one :class:`~hybridllm.serve.config.ServeConfig` to the running app's parts: the router, one
backend per model (each with its own key), prices, and the ASGI app. Used by ``hybridllm serve`` in
its one process and by each worker process of ``--workers N``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridllm.model.router import Router, default_router_dir

from .app import create_app
from .config import ServeConfig
from .options import ServeOptions
from .reload import RouterSlot


@dataclass
class Built:
    app: Any
    router: Any
    upstreams: list[Any]
    options: ServeOptions


def limit_blas_threads() -> None:
    """One BLAS thread per serving process: the router's products are small, and extra BLAS threads
    fought the event loop, the upstream and the other workers for the cores (measured on 2 cores,
    64 clients: 1,778 requests/s with two workers at one thread each, 755 with the default two)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def load_router(cfg: ServeConfig) -> Any:
    """The router to serve: with ``--router PATH``, a :class:`~hybridllm.serve.reload.RouterSlot`
    that reloads from that path (SIGHUP, POST /admin/reload, ``--router-watch``)."""

    def load(path: Path) -> Any:  # a Router, which serves as a ServingRouter
        router = Router(path)
        if cfg.route_on is not None:
            router.turns = cfg.route_on
        return router

    if cfg.router is None:
        return load(default_router_dir())
    return RouterSlot(load(cfg.router), cfg.router, load)


def build(
    cfg: ServeConfig,
    progress: Callable[[str], None] | None = None,
    state_dir: str | None = None,
    router: Any = None,
    load: bool = True,
) -> Built:
    """The app for ``cfg``. ``state_dir``: where the workers of one ``--workers N`` server share the
    default knob and the dashboard's live window (None: one process, nothing shared)."""
    cfg.options()  # refuses an open non-loopback bind before anything loads
    limit_blas_threads()
    router = router if router is not None else load_router(cfg)
    load_local = (lambda spec, name: progress(f"loading local model {spec} for {name}")) if progress else None
    ups = cfg.upstreams(router, load_local, load)
    names, judge_name = [u.who for u in ups], cfg.judge_name()
    # the judge's price too, when the models file has one (shadow checks count what judging cost)
    prices = cfg.prices(names + ([judge_name] if judge_name else []))
    options = cfg.options(
        state_dir=state_dir, prices=prices, max_output=cfg.max_output(names), capabilities=cfg.capabilities(names)
    )
    judge = cfg.judge_backend()
    if judge is not None and judge.in_process and load:
        if progress is not None:
            progress(f"loading local judge {judge.model}")
        judge.load()  # type: ignore[union-attr]  # an in-process backend or scorer loads its weights
    return Built(create_app(router, *ups, options=options, judge=judge), router, ups, options)
