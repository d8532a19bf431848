"""The plug-in points of the request path: a :class:`Hook` sees each proxied request through one typed
:class:`RequestContext` at four points, and live control (budget caps, the steering watch, shadow
checks, the outcomes log, live estimates: :mod:`hybridllm.serve.control`) is a list of hooks given
to the :class:`~hybridllm.serve.proxy.Proxy` when it is built. The core never names them.

The points, in the order a request meets them (docs/architecture.md draws them):

- ``before_call(ctx)``: the decision is made (``ctx.decision``), no upstream asked yet. A hook may
  refuse the request by raising :class:`~hybridllm.serve.errors.RequestError` (the client gets it in
  OpenAI's shape, the hooks after it are not asked), move it (``ctx.decision =
  dataclasses.replace(ctx.decision, ...)``: a decision is frozen) or change the body sent
  (``ctx.body``).
- ``on_answer(ctx)``: an upstream answered (``ctx.model``, ``ctx.status``, a whole answer's
  ``ctx.usage``), before the response starts. A hook that needs the answer's text sets
  ``ctx.keep_answer``; the text is then ``ctx.answer`` in ``after_sent`` (a stream's too, once it
  ended). Synchronous: nothing here may delay the answer.
- ``after_sent(ctx)``: the answer has been sent (a stream's relay ended), or the request ended any
  other way (refused, failed, the client left): the request's usage, cost and status are final.
  Off the client's critical path; one hook's failure is logged and does not stop the others.
- ``close()``: shutdown, after the requests' own after-steps; hooks close in the reverse of their
  order (a hook may rely on the ones before it until it has closed).

A hook keeps its own state of one request in the context through a :class:`Slot` (typed), never in
a field of the core's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .decision import RouteDecision
    from .wire import Checked

T = TypeVar("T")


class Slot(Generic[T]):
    """A hook's own per-request value in a :class:`RequestContext` (``ctx.put(SLOT, value)``,
    ``ctx.get(SLOT)``): typed, and no field of the core's to add for it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Slot({self.name!r})"


@dataclass(slots=True, eq=False)
class RequestContext:
    """One proxied request on its way through the path: what the hooks see, and what its access-log
    line and metrics say (:meth:`~hybridllm.serve.telemetry.Metrics.record`)."""

    rid: str  # the x-hybridllm-request-id
    t0: float  # time.perf_counter() at its first byte
    kind: str  # "chat", "completion", "messages" or "responses": its protocol (serve.wire.WIRES)
    key: str | None = None  # the client key's name (never the key); None when the server has no keys
    stream: bool = False
    chars: int = 0  # length of the text the router read
    prompt: str | None = None  # the text the router read, kept only with --log-prompts
    raw_prompt: object = None  # the body's messages or prompt, kept only with --log-prompts
    #: the checked body (its ``hybridllm`` field taken out): what the upstream is sent (with its model
    #: name); a before-call hook may replace it
    body: dict[str, Any] | None = None
    #: the request as its protocol read it (:class:`~hybridllm.serve.wire.Checked`: routing name, the
    #: router's text, the conversation, the client's protocol headers)
    checked: Checked | None = None
    #: the decider's decision, as it returned it (frozen)
    decided: RouteDecision | None = None
    #: the decision in force: ``decided``, or what a before-call hook replaced it with
    decision: RouteDecision | None = None
    sent: dict[str, Any] | None = None  # the body as sent upstream (its token bound is charged when no usage comes)
    model: str = "none"  # the upstream that answered (or the first one asked)
    fallback_from: str | None = None  # the upstream that failed before ``model`` answered
    status: int = 0
    error: str | None = None
    outcome: str | None = None  # "client_left": the client went before its answer (the answer still charged)
    usage: dict[str, Any] = field(default_factory=dict)  # the upstream's usage object
    #: the upstream's id of its answer where its protocol has one a later request may name (a
    #: Responses response's id: ``previous_response_id``); a stream's once its event came
    answer_id: str | None = None
    billed: dict[str, Any] | None = None  # the token bound charged when the upstream reported no usage
    prompt_seen: int | None = None  # a stream's prompt tokens as reported before its final usage (if ever)
    cost: float | None = None  # what the request is charged (its usage, else its bound, priced): computed once
    best_cost: float | None = None  # the same tokens on the reference model (when both are priced)
    strip_usage: bool = False  # the usage chunk of this stream was asked by the proxy, not the client
    asked: bool = False  # the upstream was asked for an answer that the client did not get whole: charged
    keep_answer: bool = False  # a hook asked for the answer's text (on_answer)
    answer: str | None = None  # the answer's text, when a hook asked for it
    headers: Mapping[str, str] | None = None  # the request's headers (case-insensitive), once authorised
    #: fields hooks add to the request's access-log line (a core field of the same name wins)
    log: dict[str, Any] | None = None
    _slots: dict[Slot[Any], Any] | None = None

    @property
    def moved(self) -> bool:
        """A before-call hook sent the request to another upstream than the decider chose."""
        return self.decided is not None and self.decision is not None and self.decision.target != self.decided.target

    def put(self, slot: Slot[T], value: T) -> None:
        if self._slots is None:
            self._slots = {}
        self._slots[slot] = value

    def get(self, slot: Slot[T]) -> T | None:
        return None if self._slots is None else self._slots.get(slot)

    def pop(self, slot: Slot[T]) -> T | None:
        return None if self._slots is None else self._slots.pop(slot, None)

    def note(self, **fields: Any) -> None:
        """Add ``fields`` to the request's access-log line."""
        if self.log is None:
            self.log = {}
        self.log.update(fields)


class Hook(Protocol):
    """What the proxy calls at each point of a request (see the module docstring)."""

    async def before_call(self, ctx: RequestContext) -> None: ...

    def on_answer(self, ctx: RequestContext) -> None: ...

    async def after_sent(self, ctx: RequestContext) -> None: ...

    async def close(self) -> None: ...


class BaseHook:
    """A :class:`Hook` that does nothing: subclass it and override the points you need (the proxy
    calls only the points a hook overrides)."""

    async def before_call(self, ctx: RequestContext) -> None:
        return None

    def on_answer(self, ctx: RequestContext) -> None:
        return None

    async def after_sent(self, ctx: RequestContext) -> None:
        return None

    async def close(self) -> None:
        return None


class HookPoints:
    """The hooks of one proxy, by point: each point lists only the hooks that override it (a hook
    that keeps the :class:`BaseHook` no-op costs nothing there)."""

    def __init__(self, hooks: tuple[Hook, ...]) -> None:
        self.all = hooks
        self.before_call = tuple(h for h in hooks if _overrides(h, "before_call"))
        self.on_answer = tuple(h for h in hooks if _overrides(h, "on_answer"))
        self.after_sent = tuple(h for h in hooks if _overrides(h, "after_sent"))
        self.close = tuple(h for h in reversed(hooks) if _overrides(h, "close"))


def _overrides(hook: Hook, point: str) -> bool:
    return getattr(type(hook), point, None) is not getattr(BaseHook, point)
