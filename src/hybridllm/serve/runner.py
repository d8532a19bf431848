"""Running the proxy: the port bound before the models load and anything is printed (a port in use
is one line, at once, not a traceback after a 35 s load), logs that carry only the JSON access
lines at default verbosity with credentials masked in anything else, and connections cut off when
their headers come too slowly.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from hybridllm.tables.specs import redact_url

from .build import build
from .config import ServeConfig, ServeConfigError


class _Redact(logging.Filter):
    """Masks URL credentials in a record's final text (a library's per-request line, a traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_url(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def configure_logging(verbose: bool = False) -> None:
    """stderr gets the access log (one JSON object per line) and warnings; the HTTP client's own
    per-request INFO lines (which print upstream URLs) only with ``verbose``."""
    # every line is "%(message)s": skip what a log record would otherwise gather for each request
    # (the caller's frame, thread and process names), as the logging HOWTO's optimisation notes say
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("hybridllm.access").setLevel(logging.INFO)
    for name in ("aiohttp.client", "aiohttp.internal"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def header_timeout_protocol(timeout_s: float) -> str:
    """uvicorn's httptools protocol with a deadline for each request's headers (see
    :mod:`._deadline`), as the import path uvicorn takes (so ``--workers N`` can hand it to its
    worker processes)."""
    from . import _deadline

    _deadline.HEADER_TIMEOUT_S = timeout_s
    os.environ[_deadline.ENV] = repr(timeout_s)
    return "hybridllm.serve._deadline:HeaderDeadline"


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound (a port in use fails here) but not yet listening: until
    :func:`run` serves, a client is refused rather than left waiting while the models load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeConfigError(f"port {port} is in use: choose another with --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServeConfigError(f"cannot bind {host}: no such address on this machine") from None
        raise ServeConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def listen(sock: socket.socket) -> None:
    try:
        sock.listen(2048)
    except OSError:  # another server bound the port meanwhile, and listened first
        port = sock.getsockname()[1]
        raise ServeConfigError(f"port {port} is in use: choose another with --port") from None


WORKER_ENV = "HYBRIDLLM_SERVE_WORKER"


def worker_app() -> Any:
    """The app of one ``--workers N`` worker process (a uvicorn factory): the parent's settings
    arrive in the environment as JSON."""
    spec = json.loads(os.environ[WORKER_ENV])
    configure_logging(spec["verbose"])
    return build(ServeConfig.model_validate(spec["config"]), state_dir=spec["state_dir"]).app


def run(
    app: Any,
    config: ServeConfig,
    on_bound: Callable[[int], None] | None = None,
    verbose: bool = False,
    sock: socket.socket | None = None,
) -> None:
    """Bind (unless given ``sock``, from :func:`bind`), tell ``on_bound`` the port, serve until
    interrupted: ``app`` in this process, or with ``config.workers > 1`` that many worker processes
    on the one socket, each building its own app from ``config`` (uvicorn's supervisor restarts one
    that dies). The workers share /metrics
    (prometheus-client's multiprocess mode), the default knob and the dashboard's live window
    through a private directory removed on exit."""
    import uvicorn

    sock = sock if sock is not None else bind(config.host, config.port)
    listen(sock)
    configure_logging(verbose)
    if on_bound is not None:
        on_bound(sock.getsockname()[1])
    kw: dict[str, Any] = {
        "log_level": "info" if verbose else "warning",
        "access_log": False,
        "log_config": None,
        "http": header_timeout_protocol(config.header_timeout_s),
        "timeout_keep_alive": 5,
    }
    if config.workers == 1:
        uvicorn.Server(uvicorn.Config(app, **kw)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    if config.sessions and not os.environ.get(config.session_secret_env, "").strip():
        # the workers of one server derive the same session ids: one secret made here for all of them
        # (each worker would otherwise make its own); replicas still need $VAR set alike
        logging.getLogger("hybridllm.serve").warning(
            "sessions: $%s is unset: derived session ids are keyed with a secret made for this server; "
            "replicas sharing --state derive different ids until they share one",
            config.session_secret_env,
        )
        os.environ[config.session_secret_env] = secrets.token_hex(32)
    state = tempfile.mkdtemp(prefix="hybridllm-serve-")
    try:
        os.makedirs(os.path.join(state, "metrics"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(state, "metrics")
        os.environ[WORKER_ENV] = json.dumps(
            {"config": config.model_dump(mode="json"), "verbose": verbose, "state_dir": state}
        )
        uv = uvicorn.Config("hybridllm.serve.runner:worker_app", factory=True, workers=config.workers, **kw)
        Multiprocess(uv, sockets=[sock]).run()
    finally:
        shutil.rmtree(state, ignore_errors=True)
