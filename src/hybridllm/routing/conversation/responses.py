"""OpenAI's Responses API (``POST /v1/responses``) read as the router and the session rules read a
chat (docs/sessions.md): the same :class:`~.chat.Turn`, nothing of the body rewritten.

- :func:`chat_view`: the conversation as chat-completions messages: ``instructions`` is the system
  turn; ``input`` a string (one user turn) or a list of items: messages (``input_text`` /
  ``output_text`` parts; ``developer`` read as ``system``), tool call items (``function_call`` and
  the other ``*_call`` items with a ``call_id``) as an assistant's tool calls, and every
  ``*_call_output`` item as a tool turn. Reasoning items and references to stored items carry no
  text the router reads.
- :func:`tool_state`: each ``*_call_output`` answers one call (its ``call_id``) made before it;
  every call is answered before the next user, system or developer message. An output may answer
  a call the body does not hold when the upstream stores the conversation (``previous_response_id``,
  ``conversation``, an ``item_reference``). A malformed history is a
  :class:`~.chat.ConversationError` naming the item.
- :func:`part_types`: the content parts' types, those of tool outputs too (``input_image``:
  vision, ``input_file``: files).
- :func:`session_key`: a conversation the upstream stores names the session:
  ``previous_response_id`` (the model that produced that response holds the history) or
  ``conversation``; else the ``x-session-id`` header, the body's ``user``, its
  ``metadata.session_id`` (as a chat request's); else derived from the instructions and first user
  turn. ``prompt_cache_key`` names a cache, which clients share across conversations: not a session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .chat import (
    DEFAULT_VIEW,
    IMAGE_PARTS,
    ConversationError,
    SessionKey,
    ToolState,
    Turn,
    check_call_id,
    derive_session_id,
    named_session,
    stored_session_id,
    text_of,
    view_text,
)

KIND = "responses"
_TEXT = ("input_text", "output_text", "text")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: the most characters of a stored conversation's id (a response's, a conversation's)
MAX_STORED_ID = 256


def _input(body: Mapping[str, Any]) -> str | list[Any]:
    items = body.get("input")
    if not isinstance(items, (str, list)):
        raise ConversationError("'input' must be a string or a list of input items", "input")
    return items


def _kind(item: Mapping[str, Any]) -> str:
    kind = item.get("type", "message")
    return kind if isinstance(kind, str) else ""


def chat_view(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conversation as chat-completions messages (see the module docstring); an item this
    cannot read is left out (:func:`tool_state` is what refuses a malformed one)."""
    out: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        out.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        kind, cid = _kind(item), item.get("call_id")
        if kind == "message":
            role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
            if role is None:
                continue
            content = item.get("content")
            parts = content if isinstance(content, str) else [{"type": "text", "text": text_of(content, _TEXT)}]
            out.append({"role": role, "content": parts})
        elif kind.endswith("_call") and isinstance(cid, str):
            _add_call(out, item, kind, cid)
        elif kind.endswith("_call_output") and isinstance(cid, str):
            out.append({"role": "tool", "tool_call_id": cid, "content": text_of(item.get("output"), _TEXT)})
    return out


def _add_call(out: list[dict[str, Any]], item: Mapping[str, Any], kind: str, cid: str) -> None:
    """A tool call item as a chat tool call: on the assistant turn just before it (a message, or
    the calls made with it), else on a turn of its own."""
    name = item.get("name") if isinstance(item.get("name"), str) and item.get("name") else kind
    args = item.get("arguments")
    if not isinstance(args, str):
        args = json.dumps(item.get("input", item.get("action")), ensure_ascii=False, default=str)
    call = {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _stored_id(body: Mapping[str, Any], key: str) -> str | None:
    """``previous_response_id`` or ``conversation`` (a string, or an object with a string ``id``):
    1 to :data:`MAX_STORED_ID` characters; None when absent."""
    v = body.get(key)
    if v is None:
        return None
    if key == "conversation" and isinstance(v, Mapping):
        v = v.get("id")
        key = "conversation.id"
    if not isinstance(v, str) or not 0 < len(v) <= MAX_STORED_ID:
        raise ConversationError(f"{key} must be a string of 1 to {MAX_STORED_ID} characters", key.split(".")[0])
    return v


def stored(body: Mapping[str, Any]) -> bool:
    """Whether the upstream holds part of the conversation (a previous response, a conversation, a
    referenced item): an output may answer a call the body does not hold."""
    items = body.get("input")
    refs = isinstance(items, list) and any(isinstance(i, Mapping) and _kind(i) == "item_reference" for i in items)
    return refs or _stored_id(body, "previous_response_id") is not None or _stored_id(body, "conversation") is not None


def tool_state(body: Mapping[str, Any]) -> ToolState:
    """Where the conversation stands in its tool calls (see the module docstring): a tool loop when
    its last item is a tool output, or calls are left unanswered at its end. Raises
    :class:`~.chat.ConversationError` naming the item at fault."""
    items = _input(body)
    if isinstance(items, str):
        return ToolState(False, (), 0)
    held = stored(body)
    pending: dict[str, None] = {}
    answered: set[str] = set()
    seen: set[str] = set()
    calls = 0
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConversationError(f"input[{i}] must be an object", "input")
        kind = _kind(item)
        if kind.endswith("_call_output"):
            cid = check_call_id(item.get("call_id"), f"input[{i}].call_id", "input")
            if cid in pending:
                del pending[cid]
            elif cid in answered:
                raise ConversationError(f"input[{i}]: {kind} {cid[:64]!r} answers a call already answered", "input")
            elif not held:
                raise ConversationError(f"input[{i}]: {kind} {cid[:64]!r} matches no call before it", "input")
            answered.add(cid)
        elif kind.endswith("_call") and item.get("call_id") is not None:
            cid = check_call_id(item.get("call_id"), f"input[{i}].call_id", "input")
            if cid in seen:
                raise ConversationError(f"input[{i}]: call id {cid[:64]!r} was used before", "input")
            seen.add(cid)
            pending[cid] = None
            calls += 1
        elif kind == "message" and pending and item.get("role") != "assistant":
            left = ", ".join(repr(c[:64]) for c in list(pending)[:3])
            raise ConversationError(
                f"input[{i}]: {item.get('role')} message while calls are unanswered ({left}); every call needs "
                "its output first",
                "input",
            )
    last = _kind(items[-1]) if items and isinstance(items[-1], Mapping) else ""
    return ToolState(last.endswith("_call_output") or bool(pending), tuple(pending), calls)


def part_types(body: Mapping[str, Any]) -> list[str]:
    """The type of every content part of the conversation, the parts of tool outputs too."""
    out: list[str] = []
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        parts = item.get("output") if _kind(item).endswith("_call_output") else item.get("content")
        if isinstance(parts, list):
            out += [p["type"] for p in parts if isinstance(p, dict) and isinstance(p.get("type"), str)]
    return out


def has_images(body: Mapping[str, Any]) -> bool:
    """Whether the conversation carries an image part (a text-only model cannot serve it)."""
    return any(t in IMAGE_PARTS for t in part_types(body))


def answer_session_id(response_id: str, secret: bytes) -> str:
    """The session a later request names by ``previous_response_id`` = ``response_id``: what a
    server pins to the model that produced the response."""
    return stored_session_id("r", response_id, secret)


def session_key(
    headers: Mapping[str, str], body: Mapping[str, Any], secret: bytes, chat: list[dict[str, Any]] | None = None
) -> SessionKey:
    """The request's session (see the module docstring); ``chat``: its :func:`chat_view` when the
    caller has it already. Every id given is checked, whichever names the session."""
    named = named_session(headers, body)
    previous, conversation = _stored_id(body, "previous_response_id"), _stored_id(body, "conversation")
    if previous is not None:
        return SessionKey(answer_session_id(previous, secret), "previous_response_id")
    if conversation is not None:
        return SessionKey(stored_session_id("c", conversation, secret), "conversation")
    if named is not None:
        return named
    view = chat_view(body) if chat is None else chat
    return SessionKey(derive_session_id(view, secret), "derived")


def opens(body: Mapping[str, Any]) -> bool:
    """Whether the conversation is at its first turn: nothing stored upstream, no assistant message,
    tool call or tool output in its input."""
    if stored(body):
        return False
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping) and (
            item.get("role") == "assistant" or _kind(item).endswith(("_call", "_call_output"))
        ):
            return False
    return True


def read_turn(headers: Mapping[str, str], body: Mapping[str, Any], secret: bytes, view: str = DEFAULT_VIEW) -> Turn:
    """The Responses request's :class:`~.chat.Turn`: its session, tool state, the router's text
    (``view`` of its :func:`chat_view`) and whether it carries images. Raises
    :class:`~.chat.ConversationError` for a malformed session id or tool history."""
    tools = tool_state(body)
    chat = chat_view(body)
    return Turn(session_key(headers, body, secret, chat), tools, view_text(chat, view), has_images(body))


__all__ = [
    "KIND",
    "MAX_STORED_ID",
    "answer_session_id",
    "chat_view",
    "has_images",
    "opens",
    "part_types",
    "read_turn",
    "session_key",
    "stored",
    "tool_state",
]
