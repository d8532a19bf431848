"""Shadow checks: for a random share of answered requests, the other side's answer too, and both
scored by one judge (docs/control.md).

A request is drawn when its answer is ready (:meth:`Shadow.draw`); the shadow call starts only after
the client's response has been sent (the proxy's background step, or the end of a relay), so it never
delays or changes an answer. The other side is the reference model for a request a cheaper model
answered, and the best-scored cheaper candidate for one the reference answered; ``--shadow-sides``
asks more models of a fleet (:data:`SIDES`), each one more call under the same bounds. Shadow calls have
their own concurrency and per-minute ceiling (shared fairly by the client keys), replay the request
with one answer of capped length, skip prompts above a size, use each upstream's own backend (and
key), are priced and counted apart in ``/metrics`` and the access log with the judge's verdicts, and
are cancelled at shutdown (bounds: :mod:`.shadow_bounds`). The prompt lives in memory only until the
pair is scored. :class:`ShadowHook` is its hook on the request path: it draws when the answer is
known (and asks for its text), and starts the shadow call once the answer has been sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hybridllm.backends import Answer, Backend
from hybridllm.routing.estimates import ShadowPair, policy_sides
from hybridllm.stages.score import JUDGE_RUBRIC, check_rubric, judge_rating, reward_model_batch

from ..apis import PROTOCOLS
from ..hooks import BaseHook, RequestContext, Slot
from ..wire import WIRES
from .shadow_bounds import CallSlots, FairCeiling, MeteredJudge, body_chars, judge_usage, replay_body

log = logging.getLogger("hybridllm.access")

#: which models a drawn request asks (``--shadow-sides``): the other side only; every model the
#: policy picks for the request at some threshold (what a quality hold over 3+ models needs); every
#: model of the fleet (a complete row: what retraining a fleet needs, docs/retrain.md)
SIDES = ("pair", "policy", "all")


class Scorer(Protocol):
    """What scores a shadow answer: (prompt, answer) → quality in [0, 1]."""

    async def score(self, prompt: Any, response: str) -> float: ...


class RewardScorer:
    """A reward-model checkpoint as the absolute scorer of shadow answers: any local
    sequence-classification model (``--judge reward-model:PATH``) scores (prompt, answer) in [0, 1]
    (a 1-label head's logit through the logistic function, else its last label's probability). It
    runs in a worker thread, one answer at a time, so the event loop never waits on it."""

    in_process = True

    def __init__(self, path: str) -> None:
        self.path = self.model = path
        self._lock = asyncio.Lock()

    def load(self) -> None:
        reward_model_batch([("", {"prompt": ""})], self.path)  # loads (and caches) the checkpoint

    async def score(self, prompt: Any, response: str) -> float:
        async with self._lock:
            got = await asyncio.to_thread(reward_model_batch, [(response, {"prompt": prompt})], self.path, 1, True)
        return float(got[0])

    async def __aenter__(self) -> RewardScorer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class JudgeScorer:
    """The absolute scorer of shadow answers: an LLM judge behind any backend (a local model or an
    OpenAI-compatible endpoint), rating each answer 1–10 on ``rubric`` (mapped to [0, 1])."""

    def __init__(self, backend: Backend, rubric: str = JUDGE_RUBRIC) -> None:
        self.backend, self.rubric = backend, check_rubric(rubric)
        self._metered = MeteredJudge(backend)  # each verdict's tokens go to the pair being scored

    async def score(self, prompt: Any, response: str) -> float:
        return await judge_rating(self._metered, self.rubric, prompt, response, what="shadow answer")


@dataclass
class ShadowJob:
    """What a drawn request leaves for its shadow call (memory only)."""

    rid: str
    kind: str
    body: dict[str, Any]
    prompt: Any  # what the judge reads: the messages or the prompt
    served: int
    other: int
    scores: tuple[float, ...]
    weight: float
    answer: str = ""
    more: tuple[int, ...] = ()  # further models to ask (--shadow-sides policy or all)
    cost: float | None = None  # the served answer's estimated cost (set once it has been sent)
    key: str | None = None  # the client key's name: whose share of the shadow ceiling it takes
    headers: Mapping[str, str] = field(default_factory=dict)  # the client's protocol headers (Messages' version)


class Shadow:
    """Draws requests at ``rate``, runs their shadow calls, scores both answers and hands each
    :class:`ShadowPair` to every ``sink``. ``price(model, usage, role)``: counts the tokens of a
    shadow answer (role ``shadow``) or a judge's verdict (``judge``, priced as ``judge_name``) and
    gives their estimated cost (None when unknown). ``max_tokens``: the replay's output cap;
    ``max_prompt_chars``: the largest request body (its strings' characters) that is drawn;
    ``sides``: which models a drawn request asks (:data:`SIDES`). Every call to a further side takes
    its own share of the per-minute ceiling and of ``concurrency``, is capped and priced alike."""

    def __init__(
        self,
        rate: float,
        scorer: Scorer,
        ups: Sequence[Backend],
        ref: int,
        *,
        concurrency: int = 4,
        per_minute: int = 600,
        count: Callable[[str, str], None] | None = None,
        price: Callable[[str, dict[str, Any], str], float | None] | None = None,
        seed: int | None = None,
        sides: str = "pair",
        max_tokens: int = 1024,
        max_prompt_chars: int = 32_000,
        judge_name: str = "judge",
    ) -> None:
        self.rate, self.scorer, self.ups, self.ref = rate, scorer, ups, ref
        self.per_minute, self.max_tokens, self.max_prompt_chars = per_minute, max_tokens, max_prompt_chars
        self.judge_name = judge_name
        # the per-minute ceiling as a token bucket per client key (10 s of burst), the keys active in
        # the last minute sharing it equally: past a key's share, its draws are skipped evenly over
        # time, and a key that floods never takes another's checks
        self.ceiling = FairCeiling(per_minute, concurrency * 8)
        self._slots = CallSlots(concurrency)  # one slot per model a drawn request asks
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random(seed)
        self._count = count or (lambda model, outcome: None)
        self._price = price or (lambda model, usage, role: None)
        self.sinks: list[Callable[[ShadowPair, ShadowJob], None]] = []
        self.closed = False
        if sides not in SIDES:
            raise ValueError(f"shadow sides: expected one of {', '.join(SIDES)}, got {sides!r}")
        self.sides = sides

    def other_side(self, served: int, scores: Sequence[float]) -> int:
        if served != self.ref:
            return self.ref
        return max(range(len(scores)), key=lambda k: scores[k]) if scores else 0

    def more_sides(self, served: int, other: int, scores: Sequence[float]) -> tuple[int, ...]:
        """The models asked beside the other side: none (``pair``), the rest of :func:`policy_sides`
        (``policy``), the rest of the fleet (``all``)."""
        if self.sides == "pair":
            return ()
        every = range(len(self.ups)) if self.sides == "all" else policy_sides(scores, self.ref)
        return tuple(m for m in every if m not in (served, other))

    def draw(self) -> bool:
        return self.rate > 0 and not self.closed and self._rng.random() < self.rate

    def replay(
        self, body: dict[str, Any], kind: str, served: int, sides: Sequence[int], capped: bool
    ) -> dict[str, Any] | None:
        """The body the shadow calls of a drawn request send (:func:`replay_body`), or None, the skip
        counted by its reason: ``prompt_too_long`` (a body past ``max_prompt_chars``), ``over_cap``
        (a request a budget cap downgraded: no shadow call to a dearer model, later in the cost
        order, goes out on its key's behalf), each side counted."""
        skip = None
        if capped and any(m > served for m in sides):
            skip = "over_cap"
        elif body_chars(body, self.max_prompt_chars) > self.max_prompt_chars:
            skip = "prompt_too_long"
        if skip is not None:
            for m in sides:
                self._count(self.ups[m].who, skip)
            return None
        own = PROTOCOLS.get(kind)  # Messages, Responses: the protocol's own replay
        return own.replay(body, self.max_tokens) if own is not None else replay_body(body, kind, self.max_tokens)

    def submit(self, job: ShadowJob) -> None:
        """Start the shadow call of a drawn request (after its answer has been sent), within its
        key's share of the ceiling (:class:`FairCeiling`): one call per side asked, each side of a
        skipped request counted."""
        if self.closed:
            return
        calls = 1 + len(job.more)
        skipped = self.ceiling.take(job.key, calls)
        if skipped is not None:
            for m in (job.other, *job.more):
                self._count(self.ups[m].who, skipped)
            return
        task = asyncio.ensure_future(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self.ceiling.done(job.key, calls))

    async def _ask(self, job: ShadowJob, model: int) -> tuple[str, float | None] | None:
        """One shadow answer of ``model`` to the replayed body: its text and estimated cost; None
        when the upstream failed."""
        up, wire = self.ups[model], WIRES[job.kind]  # the request's protocol, to an upstream that speaks it
        got = await wire.send(up, job.body, False, job.headers)
        if not isinstance(got, Answer):
            self._count(up.who, "upstream_error")
            return None
        return wire.answer_text(got.payload), self._price(up.who, wire.usage(got.payload), "shadow")

    def _judged(self, verdicts: list[tuple[int, int]]) -> dict[str, Any]:
        """Count and price the judge's verdicts of one pair: the access log's ``judge`` entry."""
        costs = [
            self._price(self.judge_name, {"prompt_tokens": pin, "completion_tokens": pout}, "judge")
            for pin, pout in verdicts
        ]
        out: dict[str, Any] = {"model": self.judge_name, "calls": len(verdicts),
                               "prompt_tokens": sum(max(0, p) for p, _ in verdicts),
                               "completion_tokens": sum(max(0, c) for _, c in verdicts)}  # fmt: skip
        if costs and all(c is not None for c in costs):
            out["cost"] = round(sum(c for c in costs if c is not None), 8)
        return out

    async def _run(self, job: ShadowJob) -> None:
        up = self.ups[job.other]
        sides = (job.other, *job.more)
        verdicts: list[tuple[int, int]] = []
        async with self._slots.hold(len(sides)):
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(self._ask(job, m) for m in sides))
            if any(a is None for a in answers):
                return
            texts = [a[0] for a in answers if a is not None]
            costs = [a[1] for a in answers if a is not None]
            judge_usage.set(verdicts)  # the judge's calls below (tasks of this context) report here
            try:
                q_served, *q_sides = await asyncio.gather(
                    self.scorer.score(job.prompt, job.answer), *(self.scorer.score(job.prompt, t) for t in texts)
                )
            except Exception as exc:  # a judge that fails loses this pair only (its verdicts are still paid)
                self._count(up.who, "judge_error")
                log.info(json.dumps({"event": "shadow", "id": job.rid, "model": up.who, "key": job.key,
                                     "error": str(exc)[:200], "judge": self._judged(verdicts)}))  # fmt: skip
                return
        extra = tuple(zip(job.more, q_sides[1:], strict=True))
        pair = ShadowPair(job.scores, job.served, job.other, q_served, q_sides[0], job.weight, time.time(), extra,
                          job.cost, costs[0])  # fmt: skip
        for m in sides:
            self._count(self.ups[m].who, "scored")
        line: dict[str, Any] = {"event": "shadow", "id": job.rid, "model": up.who, "served": self.ups[job.served].who,
                                "q_served": round(q_served, 4), "q_other": round(q_sides[0], 4),
                                "latency_ms": round((time.perf_counter() - t0) * 1000, 1)}  # fmt: skip
        if job.key is not None:
            line["key"] = job.key
        if extra:
            line["q_more"] = {self.ups[m].who: round(q, 4) for m, q in extra}
        if all(c is not None for c in costs):
            line["cost"] = round(sum(c for c in costs if c is not None), 8)
        if verdicts:
            line["judge"] = self._judged(verdicts)
        log.info(json.dumps(line))
        for sink in self.sinks:
            sink(pair, job)

    async def close(self) -> None:
        """Cancel the shadow calls in flight (shutdown)."""
        self.closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


#: the shadow job of a drawn request, from its draw to its submission
SHADOW_JOB: Slot[ShadowJob] = Slot("shadow job")


class ShadowHook(BaseHook):
    """Shadow checks on the request path. When a routed request's answer is known, the draw: a
    :class:`ShadowJob` with the bounded replay of the body as sent, and the answer's text asked for;
    none for a request a before-call hook moved (a budget cap's downgrade: its answer is not the
    decided model's, and no fallback explains it) when the other side is dearer. Once the answer has
    been sent (status 200), the job goes to :meth:`Shadow.submit` with the answer's text and its
    cost (when priced from the upstream's usage). Closing cancels the shadow calls in flight."""

    def __init__(self, shadow: Shadow) -> None:
        self.shadow = shadow
        self._index = {u.who: i for i, u in enumerate(shadow.ups)}
        self._apis = [u.api for u in shadow.ups]

    def on_answer(self, ctx: RequestContext) -> None:
        job = self._draw(ctx)
        if job is not None:
            ctx.put(SHADOW_JOB, job)
            ctx.keep_answer = True

    def _draw(self, ctx: RequestContext) -> ShadowJob | None:
        shadow, decision, body = self.shadow, ctx.decision, ctx.sent
        if decision is None or body is None or decision.row is None or not shadow.draw():
            return None
        served, api = self._index[ctx.model], WIRES[ctx.kind].api
        other = shadow.other_side(served, decision.row)
        if self._apis[other] != api:  # no other side of the request's protocol: no pair (never translated)
            shadow._count(self.shadow.ups[other].who, "other_protocol")
            return None
        more = shadow.more_sides(served, other, decision.row)
        for m in more:
            if self._apis[m] != api:  # that side stays unasked (its row is not complete)
                shadow._count(shadow.ups[m].who, "other_protocol")
        more = tuple(m for m in more if self._apis[m] == api)
        replay = shadow.replay(body, ctx.kind, served, (other, *more), ctx.moved)
        if replay is None:
            return None
        checked = ctx.checked
        if ctx.kind == "completion" or checked is None:
            prompt = replay.get("messages") if ctx.kind == "chat" else replay.get("prompt")
        else:  # what the judge reads: the conversation as chat messages (Messages, Responses: their chat view)
            prompt = checked.prompt
        headers = {} if checked is None else dict(checked.headers)
        return ShadowJob(ctx.rid, ctx.kind, replay, prompt, served, other, decision.row, 1.0 / shadow.rate, more=more,
                         key=ctx.key, headers=headers)  # fmt: skip

    async def after_sent(self, ctx: RequestContext) -> None:
        job = ctx.pop(SHADOW_JOB)
        if job is None or ctx.status != 200:
            return
        job.answer = ctx.answer or ""
        job.cost = ctx.cost if ctx.billed is None else None  # priced from the upstream's own usage only
        self.shadow.submit(job)

    async def close(self) -> None:
        await self.shadow.close()
