"""Sessions on the request path (docs/sessions.md): a chat, Messages or Responses request's turn goes
where the session rules (:class:`hybridllm.routing.sessions.SessionRules`) say, given the decider's
routed choice: a session's model only moves up, a turn that continues a tool loop stays on the model
that made the call, a turn that continues a conversation its upstream stores (a Responses
``previous_response_id``) stays on the model that holds it, and a turn that opens its conversation
(no assistant message yet) is routed on its own and pins it anew. Only among the upstreams that
speak the request's protocol.

- The session is named as its protocol's reader says
  (:data:`hybridllm.routing.conversation.READERS`): chat: ``x-session-id``, the body's ``user`` or
  ``metadata.session_id``, else derived from the system prompt and first user turn with the
  server's secret; Messages: ``x-session-id``, else derived (scoped by ``metadata.user_id``);
  Responses: ``previous_response_id`` or ``conversation``, else as chat. A malformed id or tool
  history is a 400 naming the field, in the endpoint's error shape.
- A Responses answer the upstream stores (``store`` not false) pins its response id to the model
  that answered, before the answer is sent (a stream's: before its end), so that the request that
  names it next goes there.
- Pins belong to the client key that made them (the namespace is the key's name): one key cannot
  read, pin or move another's, and a flood of session ids from one key evicts its own pins.
- Pins live in this process (:class:`~hybridllm.routing.session_store.MemorySessionStore`) or, with
  ``--state redis://``, in Redis (:class:`~.session_store.RedisSessionStore`), shared by
  ``--workers N`` and replicas.
- A forced request (the client named a model) is left alone; a routed one moved by its session says
  so in its reason. A turn a fallback answered moves its session to the model that answered.
- Counted on ``/metrics`` (``hybridllm_session_events_total{event}``: pins, escalations, moves,
  switches, tool-loop holds, …) and in the access log (``session``: where its id came from,
  ``session_event``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hybridllm.routing.conversation import READERS, ConversationError
from hybridllm.routing.conversation.responses import answer_session_id
from hybridllm.routing.session_store import MemorySessionStore
from hybridllm.routing.sessions import SessionCounters, SessionDecision, SessionRules, Steps, drive

from ..hooks import BaseHook, RequestContext, Slot
from ..wire import WIRES
from .capabilities import ALLOWED, chat_view, is_forced, refused, speaking, tool_history
from .session_store import AsyncSessionStore, RedisSessionStore

if TYPE_CHECKING:
    from ..state import StateStore
    from ..telemetry import Metrics

log = logging.getLogger("hybridllm.serve")


@dataclass(frozen=True, slots=True)
class _Held:
    """A request's session, kept for after its answer: namespace, id, and the rules' decision."""

    ns: str
    sid: str
    decision: SessionDecision


SESSION: Slot[_Held] = Slot("the request's session")


def secret(given: bytes | None, shared: bool = False) -> bytes:
    """The derived ids' key: ``given`` (``--session-secret-env``), else one made for this process.
    ``shared``: the pins live in Redis for several servers, which then derive different ids for one
    conversation until they share a secret, so that case is warned about (a lone server's own key
    is all it needs; the workers of ``--workers N`` share the one their parent made)."""
    if given is not None:
        return given
    if shared:
        log.warning(
            "sessions: no session secret ($HYBRIDLLM_SESSION_SECRET or --session-secret-env) while the pins are "
            "shared through --state: derived session ids are keyed with one made for this process, so "
            "replicas derive different ids for one conversation until they share one"
        )
    return os.urandom(32)


def per_key_share(capacity: int, keys: int) -> int:
    """The most pins one client key holds: all of them on a server with one key (or none), half with
    two, a third with three, a quarter with more (the store's whole-capacity rule bounds the rest)."""
    return max(1, capacity // min(max(keys, 1), 4))


async def drive_async(steps: Steps, store: AsyncSessionStore) -> SessionDecision:
    """:func:`hybridllm.routing.sessions.drive` on a store whose calls are awaited."""
    try:
        call = next(steps)
        while True:
            call = steps.send(await getattr(store, call.method)(*call.args))
    except StopIteration as stop:
        return stop.value


class _Counted(SessionCounters):
    """The rules' counters, each change also counted on ``/metrics`` (a Prometheus counter: summed
    over the workers of ``--workers N``)."""

    _counter: Any

    def __init__(self, counter: Any) -> None:
        object.__setattr__(self, "_counter", counter)
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        delta = value - getattr(self, name, 0)
        if delta:
            self._counter.labels(name).inc(delta)
        object.__setattr__(self, name, value)


class SessionHook(BaseHook):
    """The session rules over the upstreams ``models`` (cost order; ``apis``: the API each speaks,
    None: all the same) and a store: this process's, or Redis (``redis_client``). Goes right after
    the capability filter (it reads what it allowed)."""

    def __init__(
        self, models: list[str], metrics: Metrics, key: bytes, capacity: int, ttl_s: float, per_key: int,
        redis_client: Any = None, apis: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        from prometheus_client import Counter

        counter = Counter(
            "hybridllm_session_events",
            "session turns by what they did: pins (new), escalations, moves (what a turn needs, a failover), "
            "switches (escalations + moves), tool_loop_holds (kept on the model that made the call), "
            "tool_loop_overrides (of those, turns the router would have sent elsewhere), kept_down (the router "
            "chose a cheaper model), tool_loop_unpinned (a tool loop with no live pin)",
            ["event"],
            registry=metrics.registry,
        )
        self.memory = MemorySessionStore(capacity, ttl_s, per_key)
        self.redis = None if redis_client is None else RedisSessionStore(redis_client, capacity, ttl_s, per_key)
        self.rules = SessionRules(models, self.memory, _Counted(counter))
        self.models, self.key = models, key
        # the models that speak each request kind's protocol, where not every one does
        self._speakers = {
            kind: frozenset(m for m, ok in zip(models, speak, strict=True) if ok)
            for kind in WIRES
            if (speak := speaking(apis, kind)) is not None
        }
        self._rank = {m: i for i, m in enumerate(models)}
        self._writes: set[asyncio.Future[SessionDecision]] = set()  # answers' pins still being written
        # Redis orders pins by the replicas' shared wall clock; this process's store by its own clock
        self.clock: Callable[[], float] = time.time if self.redis is not None else time.monotonic

    async def _run(self, steps: Steps) -> SessionDecision:
        if self.redis is None:
            return drive(steps, self.memory)
        return await drive_async(steps, self.redis)

    def _allowed(self, ctx: RequestContext) -> frozenset[str] | None:
        """The models this turn may go to: those the capability filter allowed, else (a fleet of
        more than one protocol) those that speak the request's; None: every one."""
        allowed = ctx.get(ALLOWED)
        return self._speakers.get(ctx.kind) if allowed is None else allowed

    async def before_call(self, ctx: RequestContext) -> None:
        decision, body, reader = ctx.decision, ctx.body, READERS.get(ctx.kind)
        if reader is None or decision is None or body is None:
            return
        tools = tool_history(ctx)  # a malformed tool history: 400, whether forced or routed
        try:
            named = reader.session_key(ctx.headers or {}, body, self.key, chat_view(ctx))
        except ConversationError as exc:
            raise refused(exc) from None
        ctx.note(session=named.source)
        if is_forced(ctx) or tools is None:
            return
        ns, choice = ctx.key or "", self.models[decision.target]
        fresh = tools.calls == 0 and reader.opens(body)
        stays = tools.in_loop or named.stored  # the tool loop's model, or the one that holds the history
        steps = self.rules.decide_steps(ns, named.id, choice, stays, self._allowed(ctx), self.clock(), fresh)
        got = await self._run(steps)
        ctx.put(SESSION, _Held(ns, named.id, got))
        ctx.note(session_event=got.event)
        if got.model != choice:
            reason = f"{decision.reason}; session {got.event} on {got.model}"
            ctx.decision = replace(decision, target=self._rank[got.model], reason=reason)

    def _answer_pin(self, ctx: RequestContext) -> Steps | None:
        """The pin of an answer a later request may name (a Responses response the upstream stores)
        to the model that made it; None for any other answer."""
        body = ctx.body
        if ctx.kind != "responses" or ctx.status != 200 or not ctx.answer_id or body is None:
            return None
        if body.get("store") is False or ctx.model not in self._rank:
            return None
        return self.rules.failover_steps(ctx.key or "", answer_session_id(ctx.answer_id, self.key), ctx.model,
                                         self.clock())  # fmt: skip

    def on_answer(self, ctx: RequestContext) -> None:
        """A whole answer's id pinned before the answer is sent: in this process's store at once, in
        Redis by a write started now (a client's next request names it as soon as it has it)."""
        steps = None if ctx.stream else self._answer_pin(ctx)
        if steps is None:
            return
        if self.redis is None:
            try:
                drive(steps, self.memory)
            except Exception:  # the answer goes out whatever becomes of its pin
                log.exception("sessions: an answer's pin was not written")
            return
        write = asyncio.ensure_future(drive_async(steps, self.redis))
        self._writes.add(write)
        write.add_done_callback(self._written)

    def _written(self, write: asyncio.Future[SessionDecision]) -> None:
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.warning("sessions: an answer's pin was not written: %s", write.exception())

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def after_sent(self, ctx: RequestContext) -> None:
        """A stream's answer id pinned (its relay has not ended yet); a turn a fallback answered:
        the session moves to the model that now holds its context."""
        steps = self._answer_pin(ctx) if ctx.stream else None
        if steps is not None:
            await self._run(steps)
        held = ctx.get(SESSION)
        if held is None or ctx.status != 200 or ctx.fallback_from is None or ctx.model == held.decision.model:
            return
        if ctx.model in self._rank:
            await self._run(self.rules.failover_steps(held.ns, held.sid, ctx.model, self.clock()))


def session_hook(
    models: list[str], metrics: Metrics, opts: Any, store: StateStore, keys: int, apis: Sequence[str] | None = None
) -> SessionHook:
    """The hook ``opts`` ask for: pins in Redis when the state store is (``--state``), else here."""
    client = getattr(store, "client", None)
    share = per_key_share(opts.session_capacity, keys)
    key = secret(opts.session_secret, shared=client is not None)
    return SessionHook(models, metrics, key, opts.session_capacity, opts.session_ttl_s, share, client, apis)


__all__ = ["SESSION", "SessionHook", "drive_async", "per_key_share", "secret", "session_hook"]
