"""Anthropic's Messages API (``POST /v1/messages``) read as the router and the session rules read a
chat (docs/sessions.md): the same :class:`~.chat.Turn`, nothing of the body rewritten.

- :func:`chat_view`: the conversation as chat-completions messages: ``system`` (a string or text
  blocks) is the system turn; a user message's ``tool_result`` blocks are tool turns (before its
  text, as a chat's ``role: tool`` messages come), its text blocks the user turn; an assistant's
  ``tool_use`` blocks are its tool calls. The router's views, a derived session and a prompt's
  estimate read it.
- :func:`tool_state`: an assistant's ``tool_use`` blocks are tool calls (their ``id``); each is
  answered once by a ``tool_result`` block (its ``tool_use_id``) in the user messages before the
  next assistant message; only the conversation's end may leave calls unanswered. A malformed
  history is a :class:`~.chat.ConversationError` naming the block.
- :func:`part_types`: the content blocks' types, those inside tool results too (``image``: vision,
  ``document``: files).
- :func:`session_key`: the ``x-session-id`` header, else derived from the system prompt and first
  user turn, scoped by ``metadata.user_id`` when given. ``metadata.user_id`` names an end user, not
  a conversation (Claude Code sends one for a session's main loop and its side requests alike, and
  longer than a session id), so it keeps two users' alike conversations apart rather than naming
  one session for all of a user's requests.
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
    check_session_id,
    derive_session_id,
    text_of,
    view_text,
)

KIND = "messages"
_TEXT = ("text",)
#: Anthropic's own limit on ``metadata.user_id``
MAX_USER_ID = 256


def _messages(body: Mapping[str, Any]) -> list[Any]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ConversationError("'messages' must be a non-empty list", "messages")
    return msgs


def _blocks(m: Any) -> list[Any]:
    content = m.get("content") if isinstance(m, Mapping) else None
    return content if isinstance(content, list) else []


def chat_view(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conversation as chat-completions messages (see the module docstring). Blocks of other
    types (images, documents, thinking) carry no text the router reads; a block this cannot read
    is left out (:func:`tool_state` is what refuses a malformed one)."""
    out: list[dict[str, Any]] = []
    system = text_of(body.get("system"), _TEXT)
    if system:
        out.append({"role": "system", "content": system})
    msgs = body.get("messages")
    for m in msgs if isinstance(msgs, list) else ():
        if not isinstance(m, Mapping):
            continue
        content = m.get("content")
        if not isinstance(content, list):
            out.append({"role": m.get("role"), "content": content if isinstance(content, str) else ""})
            continue
        calls, rest = [], []
        for b in content:
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "tool_result" and isinstance(b.get("tool_use_id"), str):
                said = text_of(b.get("content"), _TEXT)
                out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": said})
            elif kind == "tool_use" and isinstance(b.get("id"), str) and isinstance(b.get("name"), str):
                args = json.dumps(b.get("input"), ensure_ascii=False, default=str)
                calls.append({"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": args}})
            elif kind == "text" and isinstance(b.get("text"), str):
                rest.append({"type": "text", "text": b["text"]})
        if rest or calls or not content:
            turn: dict[str, Any] = {"role": m.get("role"), "content": rest}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
    return out


def _call_ids(blocks: list[Any], i: int) -> dict[str, None]:
    """The ids of an assistant message's ``tool_use`` blocks, checked."""
    ids: dict[str, None] = {}
    for j, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "tool_use":
            continue
        where = f"messages[{i}].content[{j}]"
        cid = check_call_id(b.get("id"), f"{where}.id", "messages")
        if not isinstance(b.get("name"), str) or not b["name"]:
            raise ConversationError(f"{where}.name must be a non-empty string", "messages")
        if cid in ids:
            raise ConversationError(f"{where}.id {cid[:64]!r} repeats an id of the same message", "messages")
        ids[cid] = None
    return ids


def tool_state(body: Mapping[str, Any]) -> ToolState:
    """Where the conversation stands in its tool calls (see the module docstring): a tool loop when
    its last message gives tool results, or calls are left unanswered at its end. Raises
    :class:`~.chat.ConversationError` naming the message or block at fault."""
    msgs = _messages(body)
    pending: dict[str, None] = {}  # the unanswered calls of the assistant message ``made``, in order
    made, seen, calls = -1, set[str](), 0
    for i, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise ConversationError(f"messages[{i}] must be an object", "messages")
        blocks = _blocks(m)
        if m.get("role") == "assistant":
            if pending:
                left = ", ".join(repr(c[:64]) for c in list(pending)[:3])
                raise ConversationError(
                    f"messages[{i}]: assistant message while tool_use blocks of messages[{made}] are unanswered "
                    f"({left}); each tool_use needs its tool_result in a user message first",
                    "messages",
                )
            ids = _call_ids(blocks, i)
            reused = [c for c in ids if c in seen]
            if reused:
                raise ConversationError(f"messages[{i}]: tool_use id {reused[0][:64]!r} was used before", "messages")
            seen.update(ids)
            pending, made, calls = ids, i, calls + len(ids)
            continue
        for j, b in enumerate(blocks):
            if not isinstance(b, dict) or b.get("type") != "tool_result":
                continue
            where = f"messages[{i}].content[{j}]"
            tid = b.get("tool_use_id")
            if not isinstance(tid, str) or not tid:
                raise ConversationError(f"{where}.tool_use_id must be a non-empty string", "messages")
            if tid not in pending:
                why = "answers a tool_use already answered" if tid in seen else "matches no unanswered tool_use"
                raise ConversationError(f"{where}: tool_result {tid[:64]!r} {why}", "messages")
            del pending[tid]
    last = msgs[-1]
    results = last.get("role") != "assistant" and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in _blocks(last)
    )
    return ToolState(results or bool(pending), tuple(pending), calls)


def part_types(body: Mapping[str, Any]) -> list[str]:
    """The type of every content block of the conversation, the blocks inside tool results too."""
    out: list[str] = []
    msgs = body.get("messages")
    for m in msgs if isinstance(msgs, list) else ():
        for b in _blocks(m):
            kind = b.get("type") if isinstance(b, dict) else None
            if not isinstance(kind, str):
                continue
            out.append(kind)
            if kind == "tool_result" and isinstance(b.get("content"), list):
                out += [n["type"] for n in b["content"] if isinstance(n, dict) and isinstance(n.get("type"), str)]
    return out


def has_images(body: Mapping[str, Any]) -> bool:
    """Whether the conversation carries an image block (a text-only model cannot serve it)."""
    return any(t in IMAGE_PARTS for t in part_types(body))


def user_id(body: Mapping[str, Any]) -> str:
    """The body's ``metadata.user_id`` ('' when it gives none), checked as Anthropic checks it."""
    meta = body.get("metadata")
    if meta is None:
        return ""
    if not isinstance(meta, Mapping):
        raise ConversationError("metadata must be an object", "metadata")
    uid = meta.get("user_id")
    if uid is None:
        return ""
    if not isinstance(uid, str) or len(uid) > MAX_USER_ID:
        raise ConversationError(f"metadata.user_id must be a string of at most {MAX_USER_ID} characters",
                                "metadata.user_id")  # fmt: skip
    return uid


def session_key(
    headers: Mapping[str, str], body: Mapping[str, Any], secret: bytes, chat: list[dict[str, Any]] | None = None
) -> SessionKey:
    """The request's session (see the module docstring); ``chat``: its :func:`chat_view` when the
    caller has it already."""
    scope = user_id(body)
    header = headers.get("x-session-id")
    if header is not None:
        return SessionKey("s:" + check_session_id(header, "x-session-id"), "header")
    view = chat_view(body) if chat is None else chat
    if not view:
        raise ConversationError("a session is derived from 'messages', which must be a non-empty list", "messages")
    return SessionKey(derive_session_id(view, secret, scope), "derived")


def opens(body: Mapping[str, Any]) -> bool:
    """Whether the conversation is at its first turn: no assistant message yet."""
    msgs = body.get("messages")
    return not any(isinstance(m, Mapping) and m.get("role") == "assistant" for m in msgs or ())


def read_turn(headers: Mapping[str, str], body: Mapping[str, Any], secret: bytes, view: str = DEFAULT_VIEW) -> Turn:
    """The Messages request's :class:`~.chat.Turn`: its session, tool state, the router's text
    (``view`` of its :func:`chat_view`) and whether it carries images. Raises
    :class:`~.chat.ConversationError` for a malformed session id or tool history."""
    tools = tool_state(body)
    chat = chat_view(body)
    return Turn(session_key(headers, body, secret, chat), tools, view_text(chat, view), has_images(body))


__all__ = [
    "KIND",
    "MAX_USER_ID",
    "chat_view",
    "has_images",
    "opens",
    "part_types",
    "read_turn",
    "session_key",
    "tool_state",
    "user_id",
]
