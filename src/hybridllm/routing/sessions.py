"""The session rules (docs/sessions.md): which model a conversation's turn goes to, given the
router's own choice for the turn and the model the session is pinned to.

- A session's model only moves up the fleet's cost order: a turn whose per-turn choice (the router's
  at the knob in force) is dearer than the pinned model escalates the session to it; a cheaper
  choice keeps the pinned model. Never down: the cheaper model would re-read the whole history at
  full price (:func:`history_reread_cost`) without the context the dearer model built.
- A turn that continues a tool loop (:func:`hybridllm.routing.conversation.tool_state`) stays on the
  pinned model, whatever the knob: the tool result goes back to the model that made the call.
- Pins live in a :class:`~hybridllm.routing.session_store.SessionStore`, per namespace (the client
  key): one key cannot read, pin or move another key's session, even under the same session id.
- A pinned model that cannot serve a turn (``allowed``: the models that can, from the capability
  filter) is left for the cheapest allowed model at or above the higher of the pin and the choice,
  or, when none is, the dearest allowed model below: the only way a session moves down.

Pure bookkeeping: no I/O, no clock of its own unless the caller gives none.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hybridllm.errors import UsageError

from .money import Price, Tokens, tokens_cost
from .session_store import Pin, SessionStore, monotonic

#: what a turn did to its session (SessionDecision.event)
EVENTS = ("pinned", "kept", "escalated", "tool_loop", "moved")


class StoreCall(NamedTuple):
    """One call the rules make of their store: ``method`` (``get``, ``raise_pin`` or ``set_pin`` of
    :class:`~hybridllm.routing.session_store.SessionStore`) and its arguments."""

    method: str
    args: tuple[Any, ...]


#: the rules of one turn as steps: each yields a :class:`StoreCall`, is sent its result, and
#: returns the turn's :class:`SessionDecision`
Steps = Generator[StoreCall, Any, "SessionDecision"]


def drive(steps: Steps, store: SessionStore) -> SessionDecision:
    """Run the rules' ``steps`` on ``store`` (each call made as it comes); the decision."""
    try:
        call = next(steps)
        while True:
            call = steps.send(getattr(store, call.method)(*call.args))
    except StopIteration as stop:
        return stop.value


@dataclass
class SessionCounters:
    """Counts since start (the server shows them on /metrics): ``pins`` sessions pinned for the first
    time (or again after expiry); ``escalations`` moves up by the router's choice; ``moves`` moves
    forced by what a turn needs (``allowed``) or by a failover; ``switches`` every change of a
    session's model (escalations + moves); ``tool_loop_holds`` tool-loop turns kept on their pin, of
    which ``tool_loop_overrides`` the router alone would have sent elsewhere; ``kept_down`` turns the
    router would have sent to a cheaper model; ``tool_loop_unpinned`` tool-loop turns of a session
    with no live pin (expired, evicted, or begun elsewhere), routed as a first turn."""

    pins: int = 0
    escalations: int = 0
    moves: int = 0
    switches: int = 0
    tool_loop_holds: int = 0
    tool_loop_overrides: int = 0
    kept_down: int = 0
    tool_loop_unpinned: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SessionDecision:
    """The model a turn goes to, the session's model before it (None: no live pin), the router's
    own choice, and the ``event`` (one of :data:`EVENTS`)."""

    model: str
    before: str | None
    choice: str
    event: str

    @property
    def switched(self) -> bool:
        """Whether the session's model changed with this turn."""
        return self.before is not None and self.before != self.model


@dataclass
class SessionRules:
    """The rules over a fleet (``models`` cheapest first) and a store of pins."""

    models: Sequence[str]
    store: SessionStore
    counters: SessionCounters = field(default_factory=SessionCounters)

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        if len(self.models) < 1 or len(set(self.models)) != len(self.models):
            raise UsageError(f"session rules need distinct models in cost order, got {list(self.models)}")
        self._rank = {m: i for i, m in enumerate(self.models)}

    def rank(self, model: str) -> int:
        try:
            return self._rank[model]
        except KeyError:
            raise UsageError(f"model {model!r} is not in the session fleet ({', '.join(self.models)})") from None

    def decide(
        self,
        ns: str,
        sid: str,
        choice: str,
        tool_loop: bool,
        allowed: Collection[str] | None = None,
        now: float | None = None,
        fresh: bool = False,
    ) -> SessionDecision:
        """Route one turn of session ``sid`` of namespace ``ns`` (the client key; "" when the server
        has none). ``choice``: the router's per-turn model at the knob in force; ``tool_loop``: the
        turn continues a tool loop; ``allowed``: the models that can serve this turn (None: all);
        ``fresh``: the turn opens its conversation (no assistant message yet): it goes to ``choice``
        and pins the session anew, whatever the pin was (two conversations that open alike share a
        derived session; the new one has no context to keep)."""
        return drive(self.decide_steps(ns, sid, choice, tool_loop, allowed, now, fresh), self.store)

    def failover(self, ns: str, sid: str, model: str, now: float | None = None) -> SessionDecision:
        """The session's turn was answered by ``model`` instead of its pin (the pinned model failed
        and a fallback answered): the session moves there, since that model now holds its context."""
        return drive(self.failover_steps(ns, sid, model, now), self.store)

    # The rules written once, apart from the store's I/O: each step yields a call of the store
    # (:class:`StoreCall`) and is sent its result. :func:`drive` runs them on a SessionStore; a server
    # with an asynchronous store (Redis) runs the same steps with awaits.
    def decide_steps(
        self,
        ns: str,
        sid: str,
        choice: str,
        tool_loop: bool,
        allowed: Collection[str] | None = None,
        now: float | None = None,
        fresh: bool = False,
    ) -> Steps:
        """:meth:`decide`, as steps (see :func:`drive`)."""
        now = monotonic() if now is None else now
        want = self.rank(choice)
        if allowed is not None and choice not in allowed:
            raise UsageError(f"the router's choice {choice!r} is not among the models allowed for this turn")
        c = self.counters
        if fresh:
            yield StoreCall("set_pin", (ns, sid, choice, want, now))
            c.pins += 1
            return SessionDecision(choice, None, choice, "pinned")
        pin: Pin | None = yield StoreCall("get", (ns, sid, now))
        stale = pin is not None and self._rank.get(pin.model) != pin.rank  # pinned under another fleet
        if pin is None or stale:  # a fresh session; raise_pin: a worker that pinned it meanwhile stays
            first = None
            if stale:  # a changed models file: the session starts afresh, whatever its old rank
                yield StoreCall("set_pin", (ns, sid, choice, want, now))
            else:
                first = (yield StoreCall("raise_pin", (ns, sid, choice, want, now)))[0]
            c.pins += 1
            c.tool_loop_unpinned += tool_loop
            return SessionDecision(choice if first is None else first.model, None, choice, "pinned")
        if allowed is not None and pin.model not in allowed:
            model = self._fallback(max(pin.rank, want), allowed)
            yield StoreCall("set_pin", (ns, sid, model, self._rank[model], now))
            self._moved()
            return SessionDecision(model, pin.model, choice, "moved")
        if tool_loop:
            c.tool_loop_holds += 1
            c.tool_loop_overrides += choice != pin.model
            return SessionDecision(pin.model, pin.model, choice, "tool_loop")
        if want > pin.rank:
            now_pin, before = yield StoreCall("raise_pin", (ns, sid, choice, want, now))
            if before is not None and now_pin.model != before.model:
                c.escalations += 1
                c.switches += 1
                return SessionDecision(now_pin.model, before.model, choice, "escalated")
            return SessionDecision(now_pin.model, pin.model, choice, "kept")  # another worker raised it first
        c.kept_down += want < pin.rank
        return SessionDecision(pin.model, pin.model, choice, "kept")

    def failover_steps(self, ns: str, sid: str, model: str, now: float | None = None) -> Steps:
        """:meth:`failover`, as steps (see :func:`drive`)."""
        now = monotonic() if now is None else now
        before: Pin | None = yield StoreCall("set_pin", (ns, sid, model, self.rank(model), now))
        if before is None or before.model == model:
            return SessionDecision(model, None if before is None else before.model, model, "kept")
        self._moved()
        return SessionDecision(model, before.model, model, "moved")

    def _moved(self) -> None:
        self.counters.moves += 1
        self.counters.switches += 1

    def _fallback(self, floor: int, allowed: Collection[str]) -> str:
        ranks = sorted(self._rank[m] for m in allowed if m in self._rank)
        if not ranks:
            raise UsageError("no model of the session fleet is allowed for this turn")
        up = [r for r in ranks if r >= floor]
        return self.models[up[0] if up else ranks[-1]]


# --- money --------------------------------------------------------------------------------------


def turn_cost(
    prompt_tokens: int, cached_prefix_tokens: int, completion_tokens: int, price: Price, *, moved: bool
) -> float:
    """A session turn's cost on a model at ``price``. ``cached_prefix_tokens``: the part of the
    prompt the session's model has read before (the previous request's prompt, which a provider's
    prompt cache holds); staying, it is billed as cached; ``moved`` to another model, the whole
    prompt is read uncached (the new model has no cache of it)."""
    if min(prompt_tokens, cached_prefix_tokens, completion_tokens) < 0:
        raise UsageError("token counts must be >= 0")
    cached = 0 if moved else min(cached_prefix_tokens, prompt_tokens)
    return tokens_cost(Tokens(prompt_tokens, cached, completion_tokens), price)


def history_reread_cost(history_tokens: int, price: Price) -> float:
    """What moving a session costs beyond staying, on its next turn, at one model's ``price``: the
    history a model holding it reads from its prompt cache (the cached price), a model new to it
    reads uncached (the prompt price). Weigh it against what the move buys before moving."""
    if history_tokens < 0:
        raise UsageError(f"history_tokens must be >= 0, got {history_tokens}")
    return history_tokens * (price.prompt - price.cached_prompt) / 1e6


__all__ = [
    "EVENTS",
    "SessionCounters",
    "SessionDecision",
    "SessionRules",
    "Steps",
    "StoreCall",
    "drive",
    "history_reread_cost",
    "turn_cost",
]
