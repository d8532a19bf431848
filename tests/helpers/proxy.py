"""The proxy app served for a test: on a real socket (uvicorn in a thread) where the connection is the
point (streams, disconnects, slow clients), or in process through the ASGI interface (Starlette's
TestClient, the app's lifespan run) where the proxy's own logic is; and its upstream backends."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import uvicorn
from starlette.testclient import TestClient

from hybridllm.backends import HTTPBackend

from .net import free_port


def upstream(name: str, url: str, model: str, **kw: Any) -> HTTPBackend:
    """An OpenAI-protocol endpoint as the proxy builds it (httpx's default pool, one attempt)."""
    return HTTPBackend(model=model, base_url=url, name=name, concurrency=None, **kw)


class Proxy:
    """The app on 127.0.0.1 (a free port), uvicorn in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "proxy did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def openai(self, key: str = "none") -> openai.OpenAI:
        """The official client, no retries, against this server."""
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0)


class InProcess:
    """The app in this process, no socket: requests go through its ASGI interface (``http``, an httpx
    client, takes absolute URLs under :attr:`url`), and its lifespan runs on entry and exit as a
    server's would (upstreams opened, background tasks started and stopped). The Host is 127.0.0.1,
    which a server without client keys accepts."""

    url = "http://127.0.0.1/v1"

    def __init__(self, app: Any) -> None:
        self.http = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=True)

    def __enter__(self) -> InProcess:
        self.http.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.__exit__(*exc)

    def openai(self, key: str = "none") -> openai.OpenAI:
        """The official client, no retries, on this app's ASGI interface."""
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, http_client=self.http)
