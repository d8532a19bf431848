"""What the router reads of a conversation, and what a session is named by (docs/sessions.md).

One module per protocol, each reading a request body into the same :class:`Turn`: :mod:`.chat`
(OpenAI chat completions: the types every protocol shares, the router's views, the chat readers),
:mod:`.messages` (Anthropic's Messages API) and :mod:`.responses` (OpenAI's Responses API);
:data:`READERS` names each protocol's readers by request kind (:class:`Reader`:
``READERS[kind].read_turn(headers, body, secret, view)`` is any protocol's turn). Nothing here
translates a request for an upstream: a body is read, never rewritten.
"""

from __future__ import annotations

from . import chat, messages, responses
from .chat import (
    DEFAULT_VIEW,
    IMAGE_PARTS,
    MAX_SESSION_ID,
    VIEWS,
    ConversationError,
    SessionKey,
    ToolState,
    Turn,
    check_session_id,
    content_text,
    derive_session_id,
    has_images,
    read_turn,
    session_key,
    tool_state,
    user_turns,
    view_text,
)
from .readers import READERS, Reader

__all__ = [
    "DEFAULT_VIEW",
    "IMAGE_PARTS",
    "MAX_SESSION_ID",
    "READERS",
    "VIEWS",
    "ConversationError",
    "Reader",
    "SessionKey",
    "ToolState",
    "Turn",
    "chat",
    "check_session_id",
    "content_text",
    "derive_session_id",
    "has_images",
    "messages",
    "read_turn",
    "responses",
    "session_key",
    "tool_state",
    "user_turns",
    "view_text",
]
