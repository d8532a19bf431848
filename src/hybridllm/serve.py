"""An OpenAI-compatible routing proxy (DESIGN.md section 8): each chat completion goes to the small or
the large upstream according to the router and the request's quality knob.

Knobs, usable from any OpenAI client:
- by model name: ``hybrid`` (the artifact's default point), ``hybrid-qd-<pct>`` (max quality drop),
  ``hybrid-ca-<pct>`` (cost advantage), ``hybrid-t-<x>`` (raw threshold), ``small`` / ``large`` (forced,
  also the underlying model names);
- by a body field: ``"hybridllm": {"max_quality_drop": 1}`` (or ``cost_advantage``, ``threshold``,
  ``force: "small" | "large"``), which wins over the name.
Every response carries ``x-hybridllm-model``, ``x-hybridllm-score``, ``x-hybridllm-threshold`` and
``x-hybridllm-reason`` headers; the body stays a plain OpenAI response.
"""

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hybridllm.access")


@dataclass
class Upstream:
    """An OpenAI-compatible endpoint the proxy forwards to."""

    name: str  # the name clients see and the router knows (the artifact's small/large model)
    base_url: str
    model: str  # the model name sent upstream
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120.0
    local: Any = None  # a backends.LocalBackend: the in-process GGUF runtime instead of HTTP


_LOCAL_SAMPLING_ARGS = {
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "stop",
    "seed",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
}
_LOCAL_CHAT_ARGS = _LOCAL_SAMPLING_ARGS | {"messages", "tools", "tool_choice", "response_format", "top_logprobs"}
_LOCAL_COMPLETION_ARGS = _LOCAL_SAMPLING_ARGS | {"prompt", "suffix", "echo"}


async def _local_call(up: Upstream, body: dict[str, Any], kind: str) -> Any:
    """Run a request on the in-process model; llama-cpp-python already returns OpenAI-shaped objects.
    Streams hand back an async iterator of SSE lines (each chunk pulled in a worker thread)."""
    backend = up.local
    llm = await asyncio.to_thread(backend.load)
    allowed = _LOCAL_CHAT_ARGS if kind == "chat" else _LOCAL_COMPLETION_ARGS
    kw = {k: v for k, v in body.items() if k in allowed and v is not None}
    fn = llm.create_chat_completion if kind == "chat" else llm.create_completion
    if not body.get("stream"):
        async with backend.slot():
            out = await asyncio.to_thread(lambda: fn(**kw))
        return dict(out, model=up.model)

    async def sse() -> AsyncIterator[bytes]:
        async with backend.slot():
            it = await asyncio.to_thread(lambda: fn(stream=True, **kw))
            while True:
                chunk = await asyncio.to_thread(next, it, None)
                if chunk is None:
                    break
                yield f"data: {json.dumps(dict(chunk, model=up.model))}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return sse()


@dataclass
class ServeOptions:
    fallback: bool = True
    api_keys: list[str] = field(default_factory=list, repr=False)
    max_body_bytes: int = 1_000_000
    max_messages: int = 512
    log_prompts: bool = False
    # 0: no waiting; requests that arrive while a batch is being scored form the next batch anyway
    batch_window_s: float = 0.0
    # what the plain name "hybrid" means, as another routing name (e.g. "hybrid-qd-2"); None = artifact default
    default_knob: str | None = None


def openai_error(
    status: int,
    message: str,
    etype: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class MicroBatcher:
    """Collects routing requests arriving within a few milliseconds into one encoder pass, run in a
    worker thread so the event loop never blocks on the router."""

    def __init__(self, router: Any, window_s: float) -> None:
        self.router = router
        self.window_s = window_s
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[float]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def score(self, prompt: Any) -> float:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        await self.queue.put((prompt, fut))
        return await fut

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            await asyncio.sleep(self.window_s)  # 0 still lets already-runnable requests enqueue
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            try:
                scores = await asyncio.to_thread(self.router.score, [p for p, _ in items])
            except Exception as exc:  # a router failure fails those requests, not the server
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), s in zip(items, scores, strict=True):
                if not fut.done():
                    fut.set_result(float(s))


def parse_knob(model: str, extra: Any, small: Upstream, large: Upstream) -> dict[str, Any] | str:
    """The knob a request asks for, or an error message listing the valid names."""
    knob: dict[str, Any] = {}
    if model in ("small", small.name, small.model):
        knob = {"force": "small"}
    elif model in ("large", large.name, large.model):
        knob = {"force": "large"}
    elif model == "hybrid":
        knob = {}
    elif model.startswith(("hybrid-qd-", "hybrid-ca-", "hybrid-t-")):
        prefix, key = next(
            (p, k)
            for p, k in (
                ("hybrid-qd-", "max_quality_drop"),
                ("hybrid-ca-", "cost_advantage"),
                ("hybrid-t-", "threshold"),
            )
            if model.startswith(p)
        )
        try:
            v = float(model[len(prefix) :])
        except ValueError:
            return f"bad knob value in model name {model!r}"
        knob = {key: v}
    else:
        return (
            f"unknown model {model!r}; use hybrid, hybrid-qd-<pct>, hybrid-ca-<pct>, hybrid-t-<x>, "
            f"small, large, {small.name} or {large.name}"
        )
    if extra is not None:
        if not isinstance(extra, dict):
            return "field 'hybridllm' must be an object"
        allowed = {"max_quality_drop", "cost_advantage", "threshold", "force"}
        bad = set(extra) - allowed
        if bad:
            return f"unknown keys in 'hybridllm': {', '.join(sorted(bad))} (allowed: {', '.join(sorted(allowed))})"
        if "force" in extra and extra["force"] not in ("small", "large"):
            return "hybridllm.force must be 'small' or 'large'"
        for k in ("max_quality_drop", "cost_advantage", "threshold"):
            if k in extra and (isinstance(extra[k], bool) or not isinstance(extra[k], (int, float))):
                return f"hybridllm.{k} must be a number"
        knob = dict(extra)
    return knob


def create_app(router: Any, small: Upstream, large: Upstream, options: ServeOptions | None = None) -> Any:
    """The ASGI app. ``router`` needs ``score(prompts)``, ``threshold(...)``, ``small`` and ``large``."""
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    opts = options or ServeOptions()
    reg = CollectorRegistry()
    m_requests = Counter(
        "hybridllm_requests", "requests answered, by upstream model and status", ["model", "status"], registry=reg
    )
    m_decisions = Counter("hybridllm_routing_decisions", "routing decisions", ["model", "reason"], registry=reg)
    m_tokens = Counter("hybridllm_tokens", "tokens reported by upstreams", ["model", "kind"], registry=reg)
    m_errors = Counter("hybridllm_upstream_errors", "failed upstream calls", ["model"], registry=reg)
    m_fallbacks = Counter(
        "hybridllm_fallbacks",
        "requests answered by the other model after a failure",
        ["from_model", "to_model"],
        registry=reg,
    )
    m_router = Histogram(
        "hybridllm_router_seconds",
        "router decision latency",
        registry=reg,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
    )
    ups = {"small": small, "large": large}
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(router, opts.batch_window_s)
        state["batcher"].start()
        state["clients"] = {
            k: httpx.AsyncClient(
                base_url=u.base_url,
                timeout=u.timeout_s,
                headers={"Authorization": f"Bearer {u.api_key}"} if u.api_key else {},
            )
            for k, u in ups.items()
        }
        yield
        await state["batcher"].stop()
        for c in state["clients"].values():
            await c.aclose()

    app = FastAPI(title="hybridllm", lifespan=lifespan)

    def authorised(request: Request) -> bool:
        if not opts.api_keys:
            return True
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in opts.api_keys)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "small": small.name, "large": large.name}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return openai_error(401, "invalid or missing API key", "authentication_error")
        names = [
            "hybrid",
            "hybrid-qd-0",
            "hybrid-qd-1",
            "hybrid-qd-5",
            "hybrid-ca-20",
            "hybrid-ca-50",
            "hybrid-t-0.5",
            "small",
            "large",
            small.name,
            large.name,
        ]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "owned_by": "hybridllm"} for n in dict.fromkeys(names)],
        }

    async def handle(request: Request, kind: str) -> Any:
        rid = "req-" + uuid.uuid4().hex[:12]
        t0 = time.perf_counter()
        if not authorised(request):
            return openai_error(401, "invalid or missing API key", "authentication_error")
        raw = await request.body()
        if len(raw) > opts.max_body_bytes:
            return openai_error(413, f"request body over {opts.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return openai_error(400, f"malformed JSON: {exc}")
        if not isinstance(body, dict):
            return openai_error(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            return openai_error(400, "'model' is required and must be a string", param="model")
        if kind == "chat":
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return openai_error(400, "'messages' must be a non-empty list", param="messages")
            if len(msgs) > opts.max_messages:
                return openai_error(400, f"too many messages ({len(msgs)} > {opts.max_messages})", param="messages")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
                return openai_error(400, "each message must be an object with a 'role'", param="messages")
            prompt: Any = [{"role": m["role"], "content": m.get("content")} for m in msgs]
        else:
            p = body.get("prompt")
            if isinstance(p, list) and all(isinstance(x, str) for x in p):
                p = "\n".join(p)
            if not isinstance(p, str):
                return openai_error(400, "'prompt' must be a string", param="prompt")
            prompt = p
        if model == "hybrid" and opts.default_knob:
            model = opts.default_knob
        knob = parse_knob(model, body.pop("hybridllm", None), small, large)
        if isinstance(knob, str):
            return openai_error(
                404 if knob.startswith("unknown model") else 400,
                knob,
                param="model",
                code="model_not_found" if knob.startswith("unknown model") else None,
            )
        score: float | None = None
        threshold: float | None = None
        if "force" in knob:
            target, reason = knob["force"], f"forced {knob['force']}"
        else:
            try:
                threshold, reason = router.threshold(
                    max_quality_drop=knob.get("max_quality_drop"),
                    cost_advantage=knob.get("cost_advantage"),
                    threshold=knob.get("threshold"),
                )
            except ValueError as exc:
                return openai_error(400, str(exc), param="model")
            r0 = time.perf_counter()
            score = await state["batcher"].score(prompt)
            m_router.observe(time.perf_counter() - r0)
            target = "small" if score >= threshold else "large"
        m_decisions.labels(ups[target].name, "forced" if "force" in knob else "router").inc()
        headers = {"x-hybridllm-request-id": rid, "x-hybridllm-reason": reason}
        if score is not None:
            headers["x-hybridllm-score"] = f"{score:.6f}"
            headers["x-hybridllm-threshold"] = f"{threshold:.6f}"
        path = "/chat/completions" if kind == "chat" else "/completions"
        order = [target, "large" if target == "small" else "small"] if opts.fallback else [target]
        last_error: Any = None

        def answered_by(up: Upstream, attempt: int) -> None:
            if attempt:
                m_fallbacks.labels(ups[order[0]].name, up.name).inc()
                headers["x-hybridllm-reason"] = f"{reason}; fallback after {ups[order[0]].name} failed"
            headers["x-hybridllm-model"] = up.name

        def finish(up: Upstream, status: int, payload: Any, data: bytes) -> Any:
            """Metrics, access log and the response for a non-streamed answer."""
            usage = (payload.get("usage") or {}) if isinstance(payload, dict) else {}
            usage = usage if isinstance(usage, dict) else {}
            for k in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(k), int):
                    m_tokens.labels(up.name, k.split("_")[0]).inc(usage[k])
            m_requests.labels(up.name, str(status)).inc()
            _access(rid, up.name, score, threshold, t0, status, usage, prompt if opts.log_prompts else None)
            return Response(data, status_code=status, headers=headers, media_type="application/json")

        for attempt, which in enumerate(order):
            up = ups[which]
            send = dict(body, model=up.model)
            if up.local is not None:
                try:
                    result = await _local_call(up, send, kind)
                except Exception as exc:  # the in-process model failed: same fallback path as HTTP
                    m_errors.labels(up.name).inc()
                    last_error = openai_error(
                        502, f"local model {up.name} failed: {type(exc).__name__}: {exc}", "upstream_error"
                    )
                    continue
                answered_by(up, attempt)
                if body.get("stream"):
                    m_requests.labels(up.name, "200").inc()
                    return StreamingResponse(result, media_type="text/event-stream", headers=headers)
                return finish(up, 200, result, json.dumps(result).encode())
            client = state["clients"][which]
            try:
                req = client.build_request("POST", path, json=send)
                resp = await client.send(req, stream=bool(body.get("stream")))
            except httpx.HTTPError as exc:
                m_errors.labels(up.name).inc()
                last_error = openai_error(
                    502, f"upstream {up.name} unreachable: {type(exc).__name__}", "upstream_error"
                )
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                m_errors.labels(up.name).inc()
                detail = (await resp.aread())[:300].decode("utf-8", "replace")
                await resp.aclose()
                last_error = openai_error(
                    502 if resp.status_code >= 500 else 429,
                    f"upstream {up.name} answered {resp.status_code}: {detail}",
                    "upstream_error",
                )
                continue
            answered_by(up, attempt)
            if body.get("stream") and resp.status_code == 200:
                return StreamingResponse(
                    _relay(resp, up.name, rid, t0, m_requests), media_type="text/event-stream", headers=headers
                )
            data = await resp.aread()
            await resp.aclose()
            try:
                payload = json.loads(data)
            except json.JSONDecodeError:
                m_errors.labels(up.name).inc()
                last_error = openai_error(502, f"upstream {up.name} sent a malformed body", "upstream_error")
                continue
            # the upstream's bytes as they are: nothing re-serialised, nothing of the schema changed
            return finish(up, resp.status_code, payload, data)
        m_requests.labels(ups[target].name, "502").inc()
        _access(rid, ups[target].name, score, threshold, t0, 502, {}, None)
        return last_error

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, "completion")

    return app


async def _relay(resp: Any, name: str, rid: str, t0: float, m_requests: Any) -> AsyncIterator[bytes]:
    """Pass upstream SSE bytes through as they come; a failure mid-stream ends with an error event
    instead of a hang; a client disconnect cancels this generator and closes the upstream call."""
    import httpx

    status = "200"
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:
        status = "502"
        err = {
            "error": {
                "message": f"upstream {name} failed mid-stream: {type(exc).__name__}",
                "type": "upstream_error",
                "param": None,
                "code": None,
            }
        }
        yield f"data: {json.dumps(err)}\n\n".encode()
    finally:
        await resp.aclose()
        m_requests.labels(name, status).inc()
        log.info(
            json.dumps(
                {
                    "id": rid,
                    "model": name,
                    "stream": True,
                    "status": int(status),
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
                }
            )
        )


def _access(
    rid: str,
    model: str,
    score: float | None,
    threshold: float | None,
    t0: float,
    status: int,
    usage: dict[str, Any],
    prompt: Any,
) -> None:
    rec: dict[str, Any] = {
        "id": rid,
        "model": model,
        "score": score,
        "threshold": threshold,
        "status": status,
        "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
    }
    if prompt is not None:
        rec["prompt"] = prompt
    log.info(json.dumps(rec, ensure_ascii=False))
