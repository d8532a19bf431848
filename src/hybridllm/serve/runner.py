"""Running the proxy: the port bound before anything is printed (a port in use is one line, not a
traceback after the banner), logs that carry only the JSON access lines at default verbosity with
credentials masked in anything else, and connections cut off when their headers come too slowly.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..specs import redact_url
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("hybridllm.access").setLevel(logging.INFO)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's httptools protocol with a deadline for each request's headers: a client that
    connects and trickles (or sends nothing) is disconnected after ``timeout_s``. The body's own
    deadline is the app's (``client_timeout_s``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadline(HttpToolsProtocol):
        _deadline: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeConfigError(f"port {port} is in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServeConfigError(f"cannot bind {host}: no such address on this machine") from None
        raise ServeConfigError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(app: Any, config: ServeConfig, on_bound: Callable[[int], None] | None = None, verbose: bool = False) -> None:
    """Bind, tell ``on_bound`` the port, serve until interrupted."""
    import uvicorn

    sock = bind(config.host, config.port)
    configure_logging(verbose)
    if on_bound is not None:
        on_bound(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="info" if verbose else "warning",
            access_log=False,
            log_config=None,
            http=header_timeout_protocol(config.header_timeout_s),
            timeout_keep_alive=5,
        )
    )
    server.run(sockets=[sock])
