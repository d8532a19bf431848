"""Which models can serve a request (docs/sessions.md, "Capabilities and windows"): what a chat,
completions, Messages or Responses body needs, and, against each model's ``context_window``, ``max_output_tokens`` and
``supports`` (the models file: :mod:`hybridllm.tables.registry`), which models of a fleet it may go
to, why the others may not, and where a routing decision goes when the policy's choice cannot serve.

- :func:`needs`: the capabilities a body needs (tools: non-empty ``tools`` / ``functions`` or tool
  calls in its history, read by its protocol's reader in
  :data:`hybridllm.routing.conversation.READERS`; vision, audio, files: its content parts or
  blocks, those in tool results too; json_schema / json_object: chat's ``response_format``,
  Responses' ``text.format``; Messages has no standard one), its prompt's tokens
  (:func:`hybridllm.routing.money.estimate_prompt_tokens` of the body, or of a Messages or Responses
  conversation's chat view and its tools, plus :data:`IMAGE_TOKENS` an image, times
  :data:`MARGIN_RATIO` plus :data:`MARGIN_TOKENS`) and the answer it asks for (the larger of
  ``max_tokens`` and ``max_completion_tokens``; Messages' ``max_tokens``; Responses'
  ``max_output_tokens``; :data:`DEFAULT_OUTPUT_TOKENS` when it names none). A Responses turn that
  continues a stored conversation (``previous_response_id``) is estimated on what its body holds.
- :func:`eligible`: each model's yes or no and, for a no, the reasons (:class:`Lack`). A model lacks
  a capability its ``supports`` does not list, a window below the prompt plus the answer, or a
  ``max_output_tokens`` below the ``max_tokens`` asked. An absent key is no limit.
- :func:`pick`: the routed model when the policy's choice cannot serve: the cheapest eligible model
  at least as dear (the fleet's cost order), else the dearest eligible one; ``filtered`` says the
  choice was overridden, so a server counts these apart from the router's own decisions.
- :func:`refusal`: the one-line message for a forced model that cannot serve (the server's 400).

Pure and cheap (called per request), no I/O. A body the functions cannot read raises a
:class:`CapabilityError` or, for a malformed tool history, the
:class:`~hybridllm.routing.conversation.ConversationError` it derives from: both a ``ValueError``
with the request field at fault in ``param``, the server's 400, and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from hybridllm.errors import UsageError
from hybridllm.tables.registry import CAPABILITIES

from .conversation import IMAGE_PARTS, READERS, ConversationError, ToolState
from .money import DEFAULT_ANSWER_TOKENS, estimate_prompt_tokens

#: the request kinds :func:`needs` reads (a server's ``RequestContext.kind``)
KINDS = ("chat", "completion", "messages", "responses")
#: the safety margin on the prompt's estimate: the estimate (4 UTF-8 bytes a token) is within ±15 %
#: on English prose; code and non-Latin scripts can have more tokens than it says, which the
#: upstream's own error (and a fallback) still catches
MARGIN_RATIO = 1.15
MARGIN_TOKENS = 64
#: an image part's tokens (the estimate counts no image): a 1024 x 1024 image at OpenAI's high detail
IMAGE_TOKENS = 765
#: the answer a request leaves room for when it names no ``max_tokens``: a model's typical answer
DEFAULT_OUTPUT_TOKENS = int(DEFAULT_ANSWER_TOKENS)
#: content-part types (besides :data:`~hybridllm.routing.conversation.IMAGE_PARTS`) and the capability they need
_PART_NEEDS = {"input_audio": "audio", "file": "files", "input_file": "files", "document": "files"}
#: the fields that ask for the answer's length, by request kind
_OUTPUT_FIELDS = {
    "chat": ("max_tokens", "max_completion_tokens"),
    "completion": ("max_tokens", "max_completion_tokens"),
    "messages": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
#: the field that asks for a structured answer, by request kind (Messages has no standard one)
_FORMAT_FIELDS = {"chat": ("response_format",), "completion": ("response_format",), "responses": ("text", "format")}
_JSON = ("json_schema", "json_object")
#: what a capability is, in a reason's words, and the request field that asks for it ("": the
#: request's conversation field, ``Needs.prompt_field``; "format": its ``Needs.format_field``)
_ASKED = {
    "tools": ("tools or tool calls", "tools"),
    "vision": ("image parts", ""),
    "audio": ("audio parts", ""),
    "files": ("file parts", ""),
    "json_schema": ("json_schema", "format"),
    "json_object": ("json_object", "format"),
}


class CapabilityError(ConversationError):
    """A request no model can serve, a forced model that cannot, or a body :func:`needs` cannot read:
    one line, ``param`` the request field at fault, ``code`` OpenAI's error code where one fits
    (``context_length_exceeded``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param)
        self.code = code


@dataclass(frozen=True, slots=True)
class Needs:
    """What one request needs: ``capabilities`` (names of :data:`CAPABILITIES`), ``prompt_tokens``
    (the estimate with the margin), ``max_output`` (the answer it asks for; None: it names none) and
    ``output_field`` (the field that asked it)."""

    capabilities: frozenset[str]
    prompt_tokens: int
    max_output: int | None = None
    output_field: str = "max_tokens"
    #: the request's conversation field (``messages``, Responses' ``input``) and structured-answer
    #: field (``response_format``, Responses' ``text.format``): what a refusal names
    prompt_field: str = "messages"
    format_field: str = "response_format"

    @property
    def output_tokens(self) -> int:
        """The answer the window must hold: the one asked, else :data:`DEFAULT_OUTPUT_TOKENS`."""
        return DEFAULT_OUTPUT_TOKENS if self.max_output is None else self.max_output

    @property
    def window_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ModelCaps:
    """A model's limits: ``context_window`` and ``max_output_tokens`` in tokens (None: no limit
    known) and ``supports`` (None: every capability)."""

    name: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    supports: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for key in ("context_window", "max_output_tokens"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"model {self.name!r}: {key} must be a positive integer, got {v!r}")
        unknown = sorted(set(self.supports or ()) - set(CAPABILITIES))
        if unknown:
            raise UsageError(f"model {self.name!r}: unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")

    @property
    def unrestricted(self) -> bool:
        """Whether it serves every request (no key says otherwise)."""
        return self.context_window is None and self.max_output_tokens is None and self.supports is None

    @classmethod
    def of(cls, name: str, entry: Any) -> ModelCaps:
        """A models-file entry's limits (:class:`hybridllm.tables.registry.ModelEntry`); None: none."""
        if entry is None:
            return cls(name)
        supports = getattr(entry, "supports", None)
        return cls(
            name,
            getattr(entry, "context_window", None),
            getattr(entry, "max_output_tokens", None),
            None if supports is None else frozenset(supports),
        )


def fleet_caps(entries: Mapping[str, Any] | None, names: Sequence[str]) -> tuple[ModelCaps, ...]:
    """The limits of the models ``names`` (the fleet's cost order) from the models file's entries
    (``Registry.models``; None, or a model not in it: no limits)."""
    return tuple(ModelCaps.of(n, None if entries is None else entries.get(n)) for n in names)


# --- what a request needs -----------------------------------------------------------------------


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _parts(types: Sequence[str]) -> tuple[set[str], int]:
    """The capabilities content parts of ``types`` need, and their image parts."""
    caps: set[str] = set()
    images = 0
    for t in types:
        if t in IMAGE_PARTS:
            images += 1
        elif t in _PART_NEEDS:
            caps.add(_PART_NEEDS[t])
    if images:
        caps.add("vision")
    return caps, images


def _format(body: Mapping[str, Any], kind: str) -> str | None:
    """The structured answer the body asks for (json_schema, json_object), else None."""
    fmt: Any = body
    for key in _FORMAT_FIELDS.get(kind, ()):
        fmt = fmt.get(key) if isinstance(fmt, Mapping) else None
    kind_of = fmt.get("type") if isinstance(fmt, Mapping) and fmt is not body else None
    return kind_of if kind_of in _JSON else None


def needs(
    body: Mapping[str, Any], kind: str, tools: ToolState | None = None, chat: list[dict[str, Any]] | None = None
) -> Needs:
    """What the ``kind`` request (one of :data:`KINDS`) ``body`` needs of a model. ``tools``: the
    body's tool state (its reader's ``tool_state``) when the caller has it already (a server reading
    the turn for sessions); else it is read here. ``chat``: a Messages or Responses body's chat view
    when the caller has it (a server has checked the body). Raises :class:`CapabilityError` (or
    :class:`~hybridllm.routing.conversation.ConversationError`, a malformed tool history)."""
    if not isinstance(body, Mapping):
        raise CapabilityError(f"the request body must be an object, got {type(body).__name__}")
    if kind not in KINDS:
        raise CapabilityError(f"unknown request kind {kind!r}; expected one of {', '.join(KINDS)}")
    caps: set[str] = set()
    images = 0
    reader = READERS.get(kind)
    field_ = "messages" if reader is None else reader.prompt_field
    if reader is not None:
        if kind == "chat" and (not isinstance(body.get("messages"), list) or not body["messages"]):
            raise CapabilityError("'messages' must be a non-empty list", "messages")
        state = reader.tool_state(body) if tools is None else tools
        if state.calls or state.in_loop or any(_listed(body.get(f)) for f in ("tools", "functions")):
            caps.add("tools")
        caps_parts, images = _parts(reader.part_types(body))
        caps |= caps_parts
        fmt = _format(body, kind)
        if fmt is not None:
            caps.add(fmt)
    try:
        if reader is None or kind == "chat":
            estimate = estimate_prompt_tokens(body)
        else:  # the conversation as the router reads it, tool results and calls counted, and the tools
            view = reader.chat_view(body) if chat is None else chat
            estimate = estimate_prompt_tokens({"messages": view, "tools": body.get("tools")})
        estimate += IMAGE_TOKENS * images
    except (RecursionError, UnicodeError, TypeError, ValueError) as exc:  # a library caller's odd body
        raise CapabilityError(f"the request's prompt cannot be read ({type(exc).__name__})", field_) from None
    asked = [(n, f) for f in _OUTPUT_FIELDS[kind] if (n := _count(body.get(f))) is not None]
    out, field = max(asked) if asked else (None, _OUTPUT_FIELDS[kind][0])
    fmt_field = ".".join(_FORMAT_FIELDS.get(kind, ("response_format",)))
    return Needs(frozenset(caps), math.ceil(estimate * MARGIN_RATIO + MARGIN_TOKENS), out, field, field_, fmt_field)


def _listed(v: object) -> bool:
    return isinstance(v, list) and bool(v)


# --- which models can serve it ------------------------------------------------------------------


class Lack(NamedTuple):
    """Why a model cannot serve a request: ``key`` (a capability, ``context_window`` or
    ``max_output_tokens``), ``param`` (the request field that asks for it) and the reason's words."""

    key: str
    param: str
    text: str

    def __str__(self) -> str:
        return self.text


def lacks(model: ModelCaps, need: Needs) -> tuple[Lack, ...]:
    """Everything ``model`` lacks to serve a request that needs ``need`` (empty: it can serve it)."""
    if model.unrestricted:
        return ()
    out: list[Lack] = []
    if model.supports is not None:
        for cap in CAPABILITIES:  # a fixed order: the same request gives the same message
            if cap in need.capabilities and cap not in model.supports:
                asked, param = _ASKED[cap]
                if param == "format":
                    asked, param = f"{need.format_field} {asked}", need.format_field
                text = f"it does not support {cap} (the request has {asked})"
                out.append(Lack(cap, param or need.prompt_field, text))
    most = model.max_output_tokens
    if most is not None and need.max_output is not None and need.max_output > most:
        text = f"its max_output_tokens {most} is below the request's {need.output_field} {need.max_output}"
        out.append(Lack("max_output_tokens", need.output_field, text))
    if model.context_window is not None and need.window_tokens > model.context_window:
        text = (
            f"its context_window {model.context_window} is below the request's ~{need.window_tokens} tokens "
            f"(prompt estimated {need.prompt_tokens} with margin + {need.output_tokens} answer)"
        )
        out.append(Lack("context_window", need.prompt_field, text))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Pick:
    """Where a decision goes: ``target``, an index into the fleet (as ``RouteDecision.target``), and
    ``filtered``: the policy's choice could not serve the request and another model was taken."""

    target: int
    filtered: bool


def pick(choice: int, allowed: Sequence[bool]) -> Pick:
    """The model a request goes to when the policy chose ``choice`` (an index into the fleet, in cost
    order, cheapest first) and ``allowed`` says which models can serve it: the choice when it can,
    else the cheapest allowed model dearer than it, else the dearest allowed model cheaper than it.
    Never a model that cannot serve; :class:`CapabilityError` when none can."""
    n = len(allowed)
    if not 0 <= choice < n:
        raise UsageError(f"choice {choice} is not an index of the {n} models")
    if allowed[choice]:
        return Pick(choice, False)
    for i in range(choice + 1, n):
        if allowed[i]:
            return Pick(i, True)
    for i in range(choice - 1, -1, -1):
        if allowed[i]:
            return Pick(i, True)
    raise CapabilityError("no model can serve this request")


def refusal(model: str, reasons: Sequence[Lack | str]) -> str:
    """One line for a request forced to ``model``, which cannot serve it for ``reasons``."""
    why = "; ".join(str(r) for r in reasons) or "it cannot serve it"
    return f"model {model!r} cannot serve this request: {why}"


class Eligibility(NamedTuple):
    """Which models of a fleet (``names``, cost order) can serve one request: ``allowed[i]``, and
    for each model that cannot, ``reasons[i]`` (its :class:`Lack` es)."""

    allowed: tuple[bool, ...]
    reasons: Mapping[int, tuple[Lack, ...]]
    names: tuple[str, ...]

    @property
    def everyone(self) -> bool:
        """Every model can serve it (nothing to filter)."""
        return not self.reasons

    def allowed_models(self) -> frozenset[str]:
        """The names of the models that can serve it (``SessionRules.decide``'s ``allowed``)."""
        return frozenset(n for n, ok in zip(self.names, self.allowed, strict=True) if ok)

    def require(self, index: int) -> None:
        """Raise :class:`CapabilityError` (the server's 400 for a forced model) when model ``index``
        cannot serve the request, naming what it lacks."""
        lack = self.reasons.get(index)
        if lack:
            raise CapabilityError(refusal(self.names[index], lack), lack[0].param, _code(lack))

    def pick(self, choice: int) -> Pick:
        """:func:`pick` on this request; when no model can serve it, the error names each model's
        reasons."""
        try:
            return pick(choice, self.allowed)
        except CapabilityError:
            lack = [r for i in range(len(self.names)) for r in self.reasons[i]]
            per = "; ".join(f"{self.names[i]}: {', '.join(map(str, self.reasons[i]))}" for i in range(len(self.names)))
            raise CapabilityError(f"no model can serve this request ({per})", lack[0].param, _code(lack)) from None


def _code(lack: Sequence[Lack]) -> str | None:
    return "context_length_exceeded" if any(r.key == "context_window" for r in lack) else None


def eligible(
    need: Needs, models: Sequence[ModelCaps], speaks: Sequence[bool] | None = None, api: str = "chat"
) -> Eligibility:
    """Which of ``models`` (the fleet's cost order) can serve a request that needs ``need``;
    ``speaks``: which of them speak the request's protocol ``api`` (None: every one): one that does
    not cannot serve it either."""
    reasons = {}
    for i, m in enumerate(models):
        lack = lacks(m, need)
        if speaks is not None and not speaks[i]:
            lack = (Lack("api", "model", f"it does not speak the {api} API"), *lack)
        if lack:
            reasons[i] = lack
    allowed = tuple(i not in reasons for i in range(len(models)))
    return Eligibility(allowed, reasons, tuple(m.name for m in models))


__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "IMAGE_TOKENS",
    "KINDS",
    "MARGIN_RATIO",
    "MARGIN_TOKENS",
    "CapabilityError",
    "Eligibility",
    "Lack",
    "ModelCaps",
    "Needs",
    "Pick",
    "eligible",
    "fleet_caps",
    "lacks",
    "needs",
    "pick",
    "refusal",
]
