"""Each protocol's readers under one name, by request kind (a server's ``RequestContext.kind``):
``chat`` (:mod:`.chat`), ``messages`` (:mod:`.messages`), ``responses`` (:mod:`.responses`). What a
server or :mod:`hybridllm.routing.capabilities` reads of a body, with no branch per protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import chat, messages, responses
from .chat import DEFAULT_VIEW, ConversationError, SessionKey, ToolState, Turn

Body = Mapping[str, Any]
ChatView = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Reader:
    """How one protocol's request body is read: ``prompt_field`` (the body's conversation field, what
    an error about it names), ``chat_view`` (the conversation as chat messages), ``tool_state``,
    ``part_types`` (every content part's type), ``session_key(headers, body, secret, chat_view)``,
    ``opens`` (the conversation's first turn) and ``read_turn(headers, body, secret, view)``."""

    kind: str
    prompt_field: str
    chat_view: Callable[[Body], ChatView]
    tool_state: Callable[[Body], ToolState]
    part_types: Callable[[Body], list[str]]
    session_key: Callable[[Mapping[str, str], Body, bytes, ChatView | None], SessionKey]
    opens: Callable[[Body], bool]
    read_turn: Callable[[Mapping[str, str], Body, bytes, str], Turn]


def _messages(body: Body) -> list[Any]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ConversationError("'messages' must be a non-empty list", "messages")
    return msgs


def _chat_view(body: Body) -> ChatView:
    msgs = body.get("messages")
    return msgs if isinstance(msgs, list) else []


def _chat_tools(body: Body) -> ToolState:
    return chat.tool_state(_messages(body))


def _chat_opens(body: Body) -> bool:
    return chat.opens(_chat_view(body))


def _chat_parts(body: Body) -> list[str]:
    return [
        p["type"]
        for m in _chat_view(body)
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and isinstance(p.get("type"), str)
    ]


def _chat_key(headers: Mapping[str, str], body: Body, secret: bytes, view: ChatView | None = None) -> SessionKey:
    return chat.session_key(headers, body, secret)


def _chat_turn(headers: Mapping[str, str], body: Body, secret: bytes, view: str = DEFAULT_VIEW) -> Turn:
    return chat.read_turn(headers, body, secret, view)


#: the readers of each request kind that has a conversation (``completion`` has none)
READERS: Mapping[str, Reader] = MappingProxyType(
    {
        "chat": Reader("chat", "messages", _chat_view, _chat_tools, _chat_parts, _chat_key, _chat_opens, _chat_turn),
        **{
            m.KIND: Reader(m.KIND, p, m.chat_view, m.tool_state, m.part_types, m.session_key, m.opens, m.read_turn)
            for m, p in ((messages, "messages"), (responses, "input"))
        },
    }
)


__all__ = ["READERS", "Reader"]
