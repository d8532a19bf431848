"""What a request needs, acted on right after the decider (docs/sessions.md, "Capabilities and
windows"): a chat, completions, Messages or Responses request is never routed to a model the models
file says cannot serve it (``supports``, ``context_window``, ``max_output_tokens``:
:mod:`hybridllm.routing.capabilities`), nor to one that does not speak its protocol (the models
file's ``api``).

- routed: the router's choice that cannot serve it is replaced by
  :meth:`~hybridllm.routing.capabilities.Eligibility.pick` (the cheapest model at least as dear that
  can, else the dearest that can), its reason saying why, and counted apart from the router's own
  decisions (``hybridllm_capability_filtered_total``);
- forced (the client named the model): a 400 naming what the model lacks
  (``hybridllm_capability_refused_total``);
- either way the decision's ``allowed`` names the models that can serve it, so that a failed call
  falls back only to one of them, and the session rules (:mod:`.sessions`) move a session only
  among them.

A malformed tool history is a 400 naming the message (the same reading the session rules use, made
once per request by the protocol's reader, :data:`hybridllm.routing.conversation.READERS`:
:data:`TOOLS`), in the endpoint's own error shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hybridllm.routing.capabilities import KINDS, CapabilityError, ModelCaps, eligible, needs
from hybridllm.routing.conversation import READERS, ConversationError, ToolState

from ..errors import RequestError
from ..hooks import BaseHook, RequestContext, Slot
from ..wire import WIRES

if TYPE_CHECKING:
    from ..telemetry import Metrics

#: the request's tool calls and results, read once (:func:`tool_history`)
TOOLS: Slot[ToolState] = Slot("the conversation's tool state")
#: the names of the models that can serve the request (None in it: every model)
ALLOWED: Slot[frozenset[str]] = Slot("the models that can serve the request")


def refused(exc: ConversationError) -> RequestError:
    """A body the conversation or capability reading refused, as the client's 400 (its field in
    ``param``; ``context_length_exceeded`` where a window is why)."""
    return RequestError(400, str(exc), exc.param, getattr(exc, "code", None))


def tool_history(ctx: RequestContext) -> ToolState | None:
    """The request's tool state, read once per request by its protocol's reader (None for a kind
    without a conversation: completions); a malformed tool history is the client's 400."""
    reader = READERS.get(ctx.kind)
    if reader is None or ctx.body is None:
        return None
    got = ctx.get(TOOLS)
    if got is None:
        try:
            got = reader.tool_state(ctx.body)
        except ConversationError as exc:
            raise refused(exc) from None
        ctx.put(TOOLS, got)
    return got


def chat_view(ctx: RequestContext) -> list[dict[str, Any]] | None:
    """A Messages or Responses request's conversation as chat messages, as its wire read it (None
    when a hook changed the body since, or for another kind: the reader then reads the body)."""
    checked = ctx.checked
    if ctx.kind not in ("messages", "responses") or checked is None or checked.body is not ctx.body:
        return None
    return checked.prompt if isinstance(checked.prompt, list) else None


def speaking(apis: Sequence[str] | None, kind: str) -> tuple[bool, ...] | None:
    """Which upstreams (``apis``: each one's API, cost order) speak the ``kind`` request's protocol;
    None when every one does (or ``apis`` is not known)."""
    if apis is None:
        return None
    api = WIRES[kind].api
    mask = tuple(a == api for a in apis)
    return None if all(mask) else mask


def is_forced(ctx: RequestContext) -> bool:
    """The client named the model (the decider scored nothing): no hook moves it elsewhere."""
    return ctx.decided is not None and ctx.decided.score is None


class CapabilityHook(BaseHook):
    """The filter over a fleet's limits (``caps``: one per upstream, cost order) and the API each
    upstream speaks (``apis``; None: all the same); first of the hooks, so that every later one sees
    where the request can go."""

    def __init__(self, caps: tuple[ModelCaps, ...], metrics: Metrics, apis: Sequence[str] | None = None) -> None:
        from prometheus_client import Counter

        self.caps, self.names = caps, tuple(c.name for c in caps)
        self.speak = {kind: speaking(apis, kind) for kind in WIRES}  # fixed: computed once
        self.filtered = Counter(
            "hybridllm_capability_filtered",
            "routed requests the router's choice could not serve, sent to another model "
            "(from_model: the router's choice; lack: what it lacked first)",
            ["from_model", "to_model", "lack"],
            registry=metrics.registry,
        )
        self.refused = Counter(
            "hybridllm_capability_refused",
            "requests forced to a model that cannot serve them (answered 400), by what it lacked first",
            ["model", "lack"],
            registry=metrics.registry,
        )

    async def before_call(self, ctx: RequestContext) -> None:
        decision, body = ctx.decision, ctx.body
        if ctx.kind not in KINDS or decision is None or body is None:
            return
        try:
            need = needs(body, ctx.kind, tool_history(ctx), chat_view(ctx))
            elig = eligible(need, self.caps, self.speak[ctx.kind], WIRES[ctx.kind].api)
            if elig.everyone:
                return
            target = decision.target
            if is_forced(ctx):
                lack = elig.reasons.get(target)
                if lack:
                    self.refused.labels(self.names[target], lack[0].key).inc()
                elig.require(target)
                to, reason = target, decision.reason
            else:
                picked = elig.pick(target)
                to, reason = picked.target, decision.reason
                if picked.filtered:
                    lack = elig.reasons[target]
                    self.filtered.labels(self.names[target], self.names[to], lack[0].key).inc()
                    reason = f"{reason}; {self.names[target]} cannot serve it ({lack[0].key}): {self.names[to]}"
                    ctx.note(filtered=lack[0].key)
        except ConversationError as exc:  # CapabilityError too: no model can serve it, or the forced one cannot
            raise refused(exc) from None
        allowed = frozenset(i for i, ok in enumerate(elig.allowed) if ok)
        ctx.decision = replace(decision, target=to, reason=reason, allowed=allowed)
        ctx.put(ALLOWED, elig.allowed_models())


__all__ = [
    "ALLOWED",
    "TOOLS",
    "CapabilityError",
    "CapabilityHook",
    "chat_view",
    "is_forced",
    "refused",
    "speaking",
    "tool_history",
]
