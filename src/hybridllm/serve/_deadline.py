"""uvicorn's httptools protocol with a deadline for each request's headers: a client that connects
and trickles (or sends nothing) is disconnected after ``HEADER_TIMEOUT_S``. The body's own deadline is
the app's (``client_timeout_s``). Imported by uvicorn by path, in the server process or in each worker
(where the parent's figure arrives in the environment)."""

from __future__ import annotations

import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ENV = "HYBRIDLLM_HEADER_TIMEOUT_S"
HEADER_TIMEOUT_S = float(os.environ.get(ENV, "10"))


class HeaderDeadline(HttpToolsProtocol):
    _deadline: Any = None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
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
