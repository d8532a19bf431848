"""``POST /v1/feedback`` and the outcomes log's writer: the application's own score for an answered
request, bounded so that no client can fill the disk, the memory or the training table with it.

- a score is a number in [0, 1] (anything else, ``NaN`` and ``1e308`` included, is a 400 naming
  ``score``);
- one feedback record per request id: the first post wins, a later one is a 409
  (``feedback_exists``), atomically across the workers of a server and the replicas of one Redis;
- at most ``--feedback-per-minute`` posts per client key and minute (a 429 naming the setting),
  counted across workers and replicas alike;
- a request's prompt is written to the log once, in a ``request`` record beside its first outcome
  (feedback or shadow pair); the outcome records carry only its id;
- a key can score only its own requests (another key's request is a 404, as an unknown one).

Which requests can be named is :mod:`.request_index`'s (bounded in bytes). :class:`OutcomesHook` is
the log's hook on the request path: each answered request is remembered (for feedback to name) once
its answer has been sent, and each scored shadow pair is written (:meth:`OutcomesHook.add_pair`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from hybridllm.routing.estimates import ShadowPair
from hybridllm.stages.outcomes import OutcomesLog

from ..errors import RequestError
from ..hooks import BaseHook, RequestContext
from ..options import ServeOptions
from ..protocol import openai_error, read_body
from .request_index import Entry, RequestIndex, make_index
from .shadow import ShadowJob

#: a feedback body is two fields: anything longer is refused before it is parsed
MAX_FEEDBACK_BYTES = 10_000
#: the longest ``request_id`` looked up (the proxy's own are 16 characters)
MAX_REQUEST_ID = 200


class FeedbackDesk:
    """The outcomes log, the request index and the per-key count of feedback posts."""

    def __init__(self, log: OutcomesLog, index: RequestIndex, opts: ServeOptions) -> None:
        self.log, self.index, self.opts = log, index, opts
        self._bg: set[asyncio.Future[None]] = set()

    @classmethod
    def open(cls, opts: ServeOptions) -> FeedbackDesk:
        assert opts.outcomes is not None
        index = make_index(opts.feedback_index_mb << 20, opts.state, opts.state_dir)
        return cls(OutcomesLog(opts.outcomes), index, opts)

    async def remember(self, rid: str, model: str, key: str | None, prompt: object) -> None:
        """An answered request that feedback may name (its prompt kept only with ``--log-prompts``)."""
        text = None if prompt is None or not self.opts.log_prompts else json.dumps(prompt, ensure_ascii=False)
        await self.index.remember(rid, Entry(model, key, text))

    async def allow(self, key: str | None) -> float | None:
        """None when ``key`` may post now, else the seconds until it may again."""
        limit = self.opts.feedback_per_minute
        if limit <= 0:
            return None
        now = time.time()
        if await self.index.hit(key or "-", int(now // 60)) <= limit:
            return None
        return 60.0 - now % 60

    async def write(self, rid: str, record: dict[str, Any], prompt: Any = None, entry: Entry | None = None) -> None:
        """``record`` for request ``rid``, after its ``request`` record when this is the first outcome
        of a request whose prompt is logged (``prompt``: the outcome's own copy, used when the index
        has forgotten the request)."""
        records: list[dict[str, Any] | str] = []
        if self.opts.log_prompts:
            entry = entry or await self.index.get(rid)
            text = entry.prompt if entry is not None else None
            if text is None and prompt is not None:
                text = json.dumps(prompt, ensure_ascii=False)
            if text is not None and (entry is None or await self.index.claim(rid, "prompt")):
                head = {"type": "request", "id": rid, "t": round(time.time(), 3), "model": record.get("model")}
                if entry is not None:
                    head["model"] = entry.model
                records.append(json.dumps(head, ensure_ascii=False)[:-1] + ', "prompt": ' + text + "}")
        records.append(record)
        await asyncio.to_thread(self.log.append, *records)

    def note(self, rid: str, model: str, key: str | None, prompt: object) -> None:
        """:meth:`remember` off the caller, kept until it ends (shutdown waits)."""
        self._background(self.remember(rid, model, key, prompt))

    def submit(self, rid: str, record: dict[str, Any], prompt: Any = None) -> None:
        """:meth:`write` off the caller (a shadow pair's sink), kept until it ends (shutdown waits)."""
        self._background(self.write(rid, record, prompt))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def close(self) -> None:
        await asyncio.gather(*list(self._bg), return_exceptions=True)
        self.log.close()
        await self.index.close()


class OutcomesHook(BaseHook):
    """The outcomes log on the request path: an answered request is remembered once its answer has
    been sent (off the caller: shutdown waits for it), a scored shadow pair is written beside its
    request (:meth:`add_pair`, a :class:`~.shadow.Shadow` sink), and the log closes at shutdown."""

    def __init__(self, desk: FeedbackDesk, models: list[str]) -> None:
        self.desk, self.models = desk, models

    async def after_sent(self, ctx: RequestContext) -> None:
        if ctx.status == 200:
            self.desk.note(ctx.rid, ctx.model, ctx.key, ctx.raw_prompt)

    def add_pair(self, pair: ShadowPair, job: ShadowJob) -> None:
        self.desk.submit(job.rid, shadow_record(pair, job, self.models), job.prompt)

    async def close(self) -> None:
        await self.desk.close()


def shadow_record(pair: ShadowPair, job: ShadowJob, models: list[str]) -> dict[str, Any]:
    """The outcomes log's record of one scored shadow pair (its request's prompt is in the request record;
    ``weight``: 1 / the probability it was drawn with, which retraining respects)."""
    served, other = models[pair.served], models[pair.other]
    q = {served: pair.q_served, other: pair.q_other, **{models[m]: v for m, v in pair.extra}}
    return {"type": "shadow", "id": job.rid, "t": round(pair.t, 3), "served": served, "other": other, "q": q,
            "scores": list(pair.scores), "weight": pair.weight}  # fmt: skip


def _body(raw: bytes) -> tuple[str, float]:
    """(request_id, score) from a feedback body, or the 400 naming the field."""
    try:
        body = json.loads(raw)  # NaN and 1e999 parse here, to be refused below as a score
    except (ValueError, RecursionError):
        raise RequestError(400, 'malformed JSON: send {"request_id": ID, "score": 0..1}') from None
    rid = body.get("request_id") if isinstance(body, dict) else None
    score = body.get("score") if isinstance(body, dict) else None
    if not isinstance(rid, str) or not rid:
        raise RequestError(400, 'send {"request_id": ID, "score": 0..1}: request_id missing', "request_id")
    if len(rid) > MAX_REQUEST_ID or not rid.isascii():  # the index (SQLite, Redis) sees only what it could hold
        raise RequestError(400, "request_id: expected an x-hybridllm-request-id this server sent", "request_id")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise RequestError(400, "score: expected a number from 0 to 1", "score")
    if not 0.0 <= score <= 1.0:
        raise RequestError(400, f"score: {score:.6g} is outside [0, 1]", "score")
    return rid, float(score)


def mount_feedback(
    app: FastAPI,
    desk: FeedbackDesk | None,
    client: Callable[[Request], str | bool | None],
    count: Callable[[str], None],
    opts: ServeOptions,
    unauthorised: Callable[[], Response],
) -> None:
    """The ``/v1/feedback`` route. ``client``: the request's key name (False: refused);
    ``count(model)``: the metric of recorded feedback."""

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        """The application's own outcome for an answered request: {"request_id", "score" in [0, 1]}."""
        who = client(request)
        if who is False:
            return unauthorised()
        key = who if isinstance(who, str) else None
        wait = await desk.allow(key) if desk is not None else None
        if wait is not None:
            limit = opts.feedback_per_minute
            return openai_error(
                429, f"feedback rate limit: at most {limit} posts a minute per key (--feedback-per-minute)",
                None, "rate_limit_exceeded", {"retry-after": str(max(1, math.ceil(wait)))},
            )  # fmt: skip
        rid, score = _body(await read_body(request, MAX_FEEDBACK_BYTES, opts.client_timeout_s))
        if desk is None:
            raise RequestError(409, "this server keeps no outcomes log: start it with --outcomes PATH")
        entry = await desk.index.get(rid)
        if entry is None or (entry.key is not None and entry.key != key):
            raise RequestError(404, f"no answered request {rid[:40]!r} on this server (or not yours)", "request_id")
        if not await desk.index.claim(rid, "feedback"):
            raise RequestError(
                409, f"feedback for {rid[:40]!r} is already recorded: the first post for a request counts",
                "request_id", "feedback_exists",
            )  # fmt: skip
        rec = {"type": "feedback", "id": rid, "t": round(time.time(), 3), "score": score, "model": entry.model}
        await desk.write(rid, rec, entry=entry)
        count(entry.model)
        return {"object": "feedback", "request_id": rid, "recorded": True}
