"""Served prompts as table prompts: every chat shape the proxy accepts (``check_request`` in
:mod:`hybridllm.serve.protocol`: string, null or content-part content, tool calls, tool results,
image parts) in the one shape :func:`~hybridllm.tables.format.validate_row` and every stage after it
read: a string, or a list of ``{"role": str, "content": str}``.

Each message keeps its role and the text the router read at serving time (the text parts joined
by newlines, as :func:`~hybridllm.tables.format.prompt_text` joins them); what carries no text
(an image, a tool call's arguments, a null content) adds nothing. A prompt that cannot be read this
way, or is left with no text at all, is refused with a reason the export counts.
"""

from __future__ import annotations

from typing import Any

#: why a served prompt is left out of an exported table (the export counts each)
REASONS = ("no_prompt", "not_a_chat", "bad_message", "no_text")


def content_text(content: Any) -> str | None:
    """A message's text: a string as it is, the text of content parts joined by newlines, "" for
    null; None for anything else (not what the proxy accepts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type", "text") == "text" or "text" in p]
        if not all(isinstance(t, str) for t in texts):
            return None
        return "\n".join(t for t in texts if isinstance(t, str))
    return None


def table_prompt(prompt: Any) -> tuple[str | list[dict[str, str]] | None, str | None]:
    """(the prompt as a table row holds it, None) or (None, the reason it cannot be one)."""
    if prompt is None:
        return None, "no_prompt"
    if isinstance(prompt, str):
        return (prompt, None) if prompt.strip() else (None, "no_text")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        text = "\n".join(prompt)  # a completion's list of strings, joined as the proxy joined it
        return (text, None) if text.strip() else (None, "no_text")
    if not isinstance(prompt, list) or not prompt:
        return None, "not_a_chat"
    out: list[dict[str, str]] = []
    for m in prompt:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None, "bad_message"
        said = content_text(m.get("content"))
        if said is None:
            return None, "bad_message"
        out.append({"role": m["role"], "content": said})
    if not any(m["content"].strip() for m in out):
        return None, "no_text"
    return out, None
