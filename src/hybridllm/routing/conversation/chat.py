"""OpenAI's chat completions read for the router and the session rules, and what every protocol's
reader shares (docs/sessions.md).

Pure functions on a chat-completions body's ``messages`` (already checked by the server to be a
list of objects with a string ``role`` and string / null / content-part ``content``):

- the router's text views: :data:`VIEWS`, :func:`view_text`; :data:`DEFAULT_VIEW` is the one
  ``benchmarks/sessions.py`` measured to route a conversation's later turns best (every protocol's
  reader gives the router a chat view of its conversation, read by the same functions);
- content parts: :func:`content_text` keeps text parts, :func:`has_images` finds image parts;
- tool loops: :func:`tool_state` says whether a turn continues a tool loop (the last message is a
  tool result, or tool calls are unanswered) and refuses a malformed tool history with a
  :class:`ConversationError` that names the message (the server answers it with a 400);
- the session key: :func:`session_key` (``x-session-id`` header, else the body's ``user``, else
  ``metadata.session_id``, else derived from the system prompt and first user turn by a keyed
  BLAKE2b: collision-resistant, no raw text kept, unforgeable without the server's secret);
  :func:`stored_session_id` names a conversation an upstream stores (a Responses response id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybridllm.errors import HybridLLMError
from hybridllm.features.text import flatten


class ConversationError(HybridLLMError, ValueError):
    """A conversation the router cannot read: a malformed tool history or session id. ``param`` is
    the request field at fault (for the OpenAI error's ``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


Messages = Sequence[Mapping[str, Any]]

# --- content parts ----------------------------------------------------------------------------

#: content-part types that carry an image (OpenAI chat, OpenAI responses, and the bare form)
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def content_text(content: Any) -> str:
    """A message's text: the string, or its text parts joined by newlines (image, audio and file
    parts carry no text the router reads); None is empty."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def text_of(content: Any, kinds: Sequence[str]) -> str:
    """The text of a content that is a string or a list of parts: the ``text`` of the parts whose
    ``type`` is one of ``kinds`` (a part without a type: ``kinds[0]``), joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    out = []
    for p in content:
        if isinstance(p, dict) and p.get("type", kinds[0]) in kinds and isinstance(p.get("text"), str):
            out.append(p["text"])
    return "\n".join(out)


def _objects(messages: Messages) -> list[Mapping[str, Any]]:
    """The messages that are objects (the server refuses any other; a library caller may not)."""
    return [m for m in messages if isinstance(m, Mapping)]


def has_images(messages: Messages) -> bool:
    """Whether any message has an image content part (a request a text-only model cannot serve)."""
    return any(
        isinstance(p, dict) and p.get("type") in IMAGE_PARTS
        for m in _objects(messages)
        if isinstance(m.get("content"), list)
        for p in m["content"]
    )


# --- the router's text views ------------------------------------------------------------------

#: what the router can read of a conversation: the last user turn; all user turns (the last first,
#: as the router is trained); the first and the last user turn; the conversation (the last user turn
#: first, then every system, user and assistant message's text in order). Tool results are in no
#: view: they are third-party text (a web page, a file) that could otherwise steer the session's
#: model, and they can be long
VIEWS = ("last", "all", "first_last", "conversation")
#: measured by ``benchmarks/sessions.py`` on MT-Bench's second turns (docs/sessions.md)
DEFAULT_VIEW = "all"
_TOOL = ("tool", "function")  # the roles of tool results


def user_turns(messages: Messages) -> list[str]:
    """The text of every user message, in order."""
    return [content_text(m.get("content")) for m in _objects(messages) if m.get("role") == "user"]


def view_text(messages: Messages, view: str = DEFAULT_VIEW) -> str:
    """The text the router reads of ``messages`` under ``view`` (one of :data:`VIEWS`). "last" and
    "all" are :func:`hybridllm.features.text.flatten`'s, so a router trained on chat rows reads a
    served conversation the same way; with no user message every view reads every message."""
    if view not in VIEWS:
        raise ConversationError(f"unknown conversation view {view!r}; expected one of {', '.join(VIEWS)}")
    plain: list[dict[str, Any]] = [
        {"role": m.get("role"), "content": content_text(m.get("content"))} for m in _objects(messages)
    ]
    users = [i for i, m in enumerate(plain) if m["role"] == "user"]
    if view in ("last", "all") or not users:
        return flatten(plain, "last" if view == "last" else "all")
    last: str = plain[users[-1]]["content"]
    if view == "first_last":
        return last if len(users) == 1 else f"{last}\n{plain[users[0]]['content']}"
    said = [m["content"] for i, m in enumerate(plain) if i != users[-1] and m["content"] and m["role"] not in _TOOL]
    return "\n".join([last, *said])


# --- tool loops -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolState:
    """Where a conversation stands in its tool calls: ``in_loop`` when this turn continues a tool
    loop (its model must be the one that made the call); ``pending``: call ids not yet answered;
    ``calls``: tool calls made in the whole conversation."""

    in_loop: bool
    pending: tuple[str, ...]
    calls: int


_MAX_ID = 256


def check_call_id(value: Any, where: str, param: str) -> str:
    """``value`` as a tool call's id: a string of 1 to 256 characters, else a
    :class:`ConversationError` naming ``where``."""
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise ConversationError(f"{where} must be a string of 1 to {_MAX_ID} characters", param)
    return value


def _call_ids(m: Mapping[str, Any], i: int) -> list[str]:
    """The ids of an assistant message's ``tool_calls``, checked."""
    calls = m.get("tool_calls")
    if calls is None:
        return []
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list) or not calls:
        raise ConversationError(f"{where} must be a non-empty list of tool calls", "messages")
    ids: dict[str, None] = {}
    for j, c in enumerate(calls):
        if not isinstance(c, dict):
            raise ConversationError(f"{where}[{j}] must be an object", "messages")
        cid = check_call_id(c.get("id"), f"{where}[{j}].id", "messages")
        fn = c.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ConversationError(f"{where}[{j}].function.name must be a non-empty string", "messages")
        if cid in ids:
            raise ConversationError(f"{where}[{j}].id {cid[:64]!r} repeats an id of the same message", "messages")
        ids[cid] = None
    return list(ids)


def tool_state(messages: Messages) -> ToolState:
    """Read the conversation's tool calls and results, as OpenAI's chat API requires them: every
    ``tool`` message answers, by ``tool_call_id``, a call of the assistant message right before its
    run of tool messages, once; an assistant message's calls are all answered before the next
    non-tool message. Only the conversation's end may leave calls unanswered (a client sending
    results one by one), and that, or a tool result last, is a tool loop. The legacy form (an
    assistant ``function_call`` answered by a ``function`` message) is read the same way.

    Raises :class:`ConversationError` naming the message at fault."""
    pending: dict[str, None] = {}  # the unanswered calls, in order (a dict: each lookup O(1))
    legacy_pending = False
    seen: set[str] = set()
    calls = 0
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ConversationError(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        if role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str) or not cid:
                raise ConversationError(f"messages[{i}].tool_call_id must be a non-empty string", "messages")
            if cid not in pending:
                why = "answers a call already answered" if cid in seen else "matches no unanswered tool call before it"
                raise ConversationError(f"messages[{i}]: tool message {cid[:64]!r} {why}", "messages")
            del pending[cid]
            continue
        if role == "function":
            if not legacy_pending:
                why = "function message without a function_call before it"
                raise ConversationError(f"messages[{i}]: {why}", "messages")
            legacy_pending = False
            continue
        if pending or legacy_pending:
            left = ", ".join(repr(c[:64]) for c in list(pending)[:3]) or "the function_call"
            raise ConversationError(
                f"messages[{i}]: {role} message while tool calls are unanswered ({left}); every tool call needs "
                "its tool message first",
                "messages",
            )
        if role == "assistant":
            ids = _call_ids(m, i)
            reused = [c for c in ids if c in seen]
            if reused:
                raise ConversationError(f"messages[{i}]: tool call id {reused[0][:64]!r} was used before", "messages")
            seen.update(ids)
            pending, calls = dict.fromkeys(ids), calls + len(ids)
            if isinstance(m.get("function_call"), dict):
                legacy_pending, calls = True, calls + 1
    last = messages[-1].get("role") if messages else None
    return ToolState(last in ("tool", "function") or bool(pending) or legacy_pending, tuple(pending), calls)


# --- the session key --------------------------------------------------------------------------

#: a session id: 1 to MAX_SESSION_ID printable ASCII characters, no space (it is a log field and a
#: store key, and one that a client controls)
MAX_SESSION_ID = 128
_PERSON = b"hybridllm-sess1"  # the derivation's domain: a change of recipe changes every derived id


@dataclass(frozen=True)
class SessionKey:
    """A request's session: ``id`` (``s:`` + the client's id, ``d:`` + the derived digest, or a
    stored conversation's digest: :func:`stored_session_id`, so a client cannot name a derived or
    stored session) and where it came from: "header", "user", "metadata", "derived", or one of
    :data:`STORED_SOURCES`."""

    id: str
    source: str

    @property
    def stored(self) -> bool:
        """The upstream holds the conversation's history: each turn must go to the model that has it."""
        return self.source in STORED_SOURCES


def check_session_id(value: Any, field: str) -> str:
    """``value`` as a session id, or a :class:`ConversationError` naming ``field`` and the rule."""
    if not isinstance(value, str):
        raise ConversationError(f"{field} must be a string, got {type(value).__name__}", field)
    if not 1 <= len(value) <= MAX_SESSION_ID:
        raise ConversationError(f"{field} must be 1 to {MAX_SESSION_ID} characters, got {len(value)}", field)
    bad = next((c for c in value if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ConversationError(
            f"{field} holds {bad!r}: a session id is printable ASCII without spaces (! to ~)", field
        )
    return value


def _digest(parts: Sequence[str], secret: bytes, person: bytes = _PERSON) -> str:
    """A keyed BLAKE2b (128 bits, hex) of ``parts``, each length-prefixed (so no two different
    sequences encode the same)."""
    if not 16 <= len(secret) <= 64:
        raise ConversationError(f"the session secret must be 16 to 64 bytes, got {len(secret)}")
    h = hashlib.blake2b(key=secret, digest_size=16, person=person)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def derive_session_id(messages: Messages, secret: bytes, scope: str = "") -> str:
    """The session of a conversation whose client names none: a keyed BLAKE2b (128 bits) of its
    system prompt and first user turn, each length-prefixed (so no two different pairs encode the
    same), and of ``scope`` when given (an end user's id: two users who open alike get two sessions).
    The same conversation gives the same id on every turn and replica sharing ``secret``; without
    the secret no one can compute, or aim at, another conversation's id."""
    objects = _objects(messages)
    system = "\n".join(content_text(m.get("content")) for m in objects if m.get("role") in ("system", "developer"))
    users = user_turns(objects)
    first = users[0] if users else content_text(objects[0].get("content")) if objects else ""
    return "d:" + _digest((system, first, scope) if scope else (system, first), secret)


#: the sources of sessions whose history an upstream stores (a Responses ``previous_response_id``
#: or ``conversation``): every turn of one stays on the model that holds it
STORED_SOURCES = frozenset({"previous_response_id", "conversation"})
_STORED_PERSON = b"hybridllm-store1"


def stored_session_id(kind: str, value: str, secret: bytes) -> str:
    """The session of a conversation an upstream stores under ``value`` (``kind``: "r" a response
    id, "c" a conversation id): ``kind:`` + a keyed digest of it, so that a client's id of any
    length or spelling is a store key of fixed size, and one kind cannot name another."""
    return f"{kind}:" + _digest((value,), secret, _STORED_PERSON)


def named_session(headers: Mapping[str, str], body: Mapping[str, Any]) -> SessionKey | None:
    """The session the client names, by precedence: the ``x-session-id`` header, the body's
    ``user``, its ``metadata.session_id``; None when it names none. ``headers``: a mapping with
    lower-case keys (Starlette's headers are case-insensitive). A named id that breaks
    :func:`check_session_id` is an error, never silently derived instead."""
    header = headers.get("x-session-id")
    if header is not None:
        return SessionKey("s:" + check_session_id(header, "x-session-id"), "header")
    if body.get("user") is not None:
        return SessionKey("s:" + check_session_id(body["user"], "user"), "user")
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ConversationError("metadata must be an object", "metadata")
    if meta and meta.get("session_id") is not None:
        return SessionKey("s:" + check_session_id(meta["session_id"], "metadata.session_id"), "metadata")
    return None


def session_key(headers: Mapping[str, str], body: Mapping[str, Any], secret: bytes) -> SessionKey:
    """The chat request's session: :func:`named_session`, else :func:`derive_session_id` of its
    ``messages``."""
    named = named_session(headers, body)
    if named is not None:
        return named
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConversationError("a session is derived from 'messages', which must be a non-empty list", "messages")
    return SessionKey(derive_session_id(messages, secret), "derived")


def opens(messages: Messages) -> bool:
    """Whether a conversation is at its first turn: no assistant message yet (a turn that opens its
    conversation has no context to keep: the session rules route it on its own)."""
    return not any(m.get("role") == "assistant" for m in _objects(messages))


@dataclass(frozen=True)
class Turn:
    """What the router and the session rules need of one chat request: its session, where it stands
    in its tool calls, the text the router reads, and whether it carries images."""

    session: SessionKey
    tools: ToolState
    text: str
    images: bool

    @property
    def stays(self) -> bool:
        """The turn must go to the session's model: it continues a tool loop, or a conversation
        its upstream stores."""
        return self.tools.in_loop or self.session.stored


def read_turn(headers: Mapping[str, str], body: Mapping[str, Any], secret: bytes, view: str = DEFAULT_VIEW) -> Turn:
    """:func:`session_key`, :func:`tool_state`, :func:`view_text` and :func:`has_images` of a chat
    request whose ``messages`` the server has checked (a non-empty list). Raises
    :class:`ConversationError` (the server's 400) for a malformed session id or tool history."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConversationError("'messages' must be a non-empty list", "messages")
    tools = tool_state(messages)
    return Turn(session_key(headers, body, secret), tools, view_text(messages, view), has_images(messages))


__all__ = [
    "DEFAULT_VIEW",
    "IMAGE_PARTS",
    "MAX_SESSION_ID",
    "STORED_SOURCES",
    "VIEWS",
    "ConversationError",
    "SessionKey",
    "ToolState",
    "Turn",
    "check_call_id",
    "check_session_id",
    "content_text",
    "derive_session_id",
    "has_images",
    "named_session",
    "opens",
    "read_turn",
    "session_key",
    "stored_session_id",
    "text_of",
    "tool_state",
    "user_turns",
    "view_text",
]
