"""The serving layer's errors (their own module so every piece can raise them): a setting that is
wrong, and a request refused with an OpenAI-shaped error."""

from __future__ import annotations

from hybridllm.errors import HybridLLMError


class ServeConfigError(HybridLLMError, ValueError):
    """A serving setting is wrong: one line naming the file (or flag) and the key."""


class RequestError(HybridLLMError):
    """A request refused with an OpenAI-shaped error: HTTP status, message, ``param``, ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        etype: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.etype = status, message, param, code, etype
        self.headers = headers
