"""Request bodies and check helpers shared by the Messages/Responses protocol tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hybridllm.serve.errors import RequestError

LIMITS: dict[str, Any] = {"max_messages": 32, "turns": "all", "max_chars": 4000}
M_BODY = {"model": "hybrid", "max_tokens": 64, "messages": [{"role": "user", "content": "What is 2+2?"}]}
R_BODY = {"model": "hybrid", "input": "What is 2+2?"}


def check(proto: Any, body: Any, headers: dict[str, str] | None = None) -> Any:
    """``proto.check`` of a body (a dict is sent as compact JSON, bytes as they are)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return proto.check(raw, headers or {}, **LIMITS)


def refused(proto: Any, body: Any, headers: dict[str, str] | None = None) -> RequestError:
    """The RequestError a body is refused with (the test fails if it is accepted)."""
    with pytest.raises(RequestError) as exc:
        check(proto, body, headers)
    return exc.value
