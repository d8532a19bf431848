"""Model backends behind one interface (:class:`Backend`), used by collect, score (a judge), chat
and the proxy alike: an OpenAI-compatible HTTP endpoint (:class:`HTTPBackend`) or a GGUF model run
in this process (:class:`LocalBackend`). A model SPEC becomes a backend in one place,
:func:`make_backend`.

Layout: ``_types`` (samples, parameters, relay answers, errors), ``_base`` (the interface),
``_http`` and ``_local`` (the two kinds), ``_batched`` (several local samples decoded in one
llama.cpp context), ``packages`` (the local models shipped as PyPI packages).

May import :mod:`hybridllm.tables` (SPECs, keys) only. llama_cpp is imported inside the local
backend, when a local model is first used.
"""

from __future__ import annotations

from typing import Any

from hybridllm.errors import UsageError
from hybridllm.tables.specs import parse_spec

from ._base import Backend
from ._http import RETRY_STATUS, HTTPBackend
from ._local import LocalBackend, _CpuBudget
from ._types import Answer, BackendError, Failure, OnText, Sample, SamplingParams, StreamBroke

__all__ = [
    "RETRY_STATUS",
    "Answer",
    "Backend",
    "BackendError",
    "Failure",
    "HTTPBackend",
    "LocalBackend",
    "OnText",
    "Sample",
    "SamplingParams",
    "StreamBroke",
    "_CpuBudget",
    "make_backend",
]


def make_backend(
    spec: str,
    api_key_env: str | None = None,
    local_threads: int | None = None,
    name: str | None = None,
    **http_kw: Any,
) -> Backend:
    """SPEC: ``MODEL@BASE_URL`` (HTTP), a named local model, or a path to a ``.gguf`` file.
    ``api_key_env``: the variable holding this model's key (HTTP only; never shared between models).
    ``local_threads``: CPU threads for a local model (default: all cores). ``name``: what messages
    call the model. ``http_kw``: :class:`HTTPBackend` settings (``concurrency``, ``timeout_s``, ``api``...);
    ``timeout_s`` also applies to a local model."""
    parsed = parse_spec(spec)
    if parsed.base_url is not None:
        return HTTPBackend.from_spec(spec, api_key_env=api_key_env, name=name, **http_kw)
    if api_key_env:
        raise UsageError(f"model {spec!r} runs in-process: an API key ({api_key_env}) is not sent to it")
    if http_kw.get("api", "chat") != "chat":
        raise UsageError(f"model {spec!r} runs in-process: it speaks the chat API only, not {http_kw['api']}")
    local = LocalBackend(spec, n_threads=local_threads, name=name)
    if "timeout_s" in http_kw:
        local.timeout_s = http_kw["timeout_s"]
    return local
