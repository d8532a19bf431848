"""The text a router reads, made hard to steer with cheap tricks.

Why: the router embeds the prompt and reads its token count, so text that adds length or shifts the
mean embedding without adding content moves the decision. Two measured levers
(``benchmarks/reroute_robustness.py``): a long run of a repeated word or of punctuation (``the`` x50
sent every small-routed prompt of the default pair to the large model), and an earlier long user turn
that pushed the actual question past the encoder's window. So: runs are collapsed (a word or short
phrase kept at most twice in a row, a punctuation run cut to three characters), and in a chat the last
user turn is read first, earlier user turns after it (what the window cuts is the oldest context).
A prompt without such runs is left exactly as it is.
"""

from __future__ import annotations

import re
from typing import Any

from .table import prompt_text

_PHRASE = re.compile(r"\b((?:\w+[\s,;:.!?]+){1,4}?)\1{2,}", re.IGNORECASE)
_WORD_AT_END = re.compile(r"\b(\w+)(?:[\s,;:.!?]+\1\b){2,}", re.IGNORECASE)
_PUNCT = re.compile(r"(?:[^\w\s]\s*){4,}")


def _cut_punct(m: re.Match[str]) -> str:
    kept = [c for c in m.group(0) if not c.isspace()][:3]
    return "".join(kept) + (" " if m.group(0)[-1].isspace() else "")


_WORDS = re.compile(r"\w+")


def _has_repeats(text: str) -> bool:
    """Cheap pre-check (the phrase pattern backtracks): some 1-4 word phrase three times in a row."""
    w = _WORDS.findall(text.lower())
    return any(a == b == c for k in (1, 2, 3, 4) for a, b, c in zip(w, w[k:], w[2 * k :], strict=False))


def normalize(text: str) -> str:
    """Collapse repeated words/phrases and punctuation runs; other text unchanged."""
    if _has_repeats(text):
        text = _PHRASE.sub(r"\1\1", text)
        text = _WORD_AT_END.sub(r"\1 \1", text)
    return _PUNCT.sub(_cut_punct, text)


def routing_text(prompt: str | list[dict[str, Any]], turns: str = "all", harden: bool = True) -> str:
    """What the router embeds for ``prompt`` (a string or chat messages). ``turns``: "all" user turns
    (the last one first when ``harden``) or the "last" one only."""
    text = flatten(prompt, turns, harden)
    return normalize(text) if harden else text


def flatten(prompt: str | list[dict[str, Any]], turns: str = "all", harden: bool = True) -> str:
    """The prompt as one string, turns ordered as :func:`routing_text` reads them, not normalised."""
    if harden and isinstance(prompt, list) and turns == "all":
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if len(users) > 1:
            prompt = [users[-1], *(m for m in prompt if m is not users[-1])]
    return prompt_text(prompt, turns)


def distractor_copies(texts: list[str], copies: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Training augmentation: ``copies`` variants of each text with something that does not change
    the question appended (random words of the corpus, or a sentence of another prompt), and the index
    of the text each came from (its label is that text's). A router trained on them learns that
    appended filler is no evidence of difficulty, so a user cannot buy the large model with it."""
    import random

    rng = random.Random(seed)
    words = [w for t in texts for w in re.findall(r"[A-Za-z]{3,}", t)] or ["the"]
    sentences = [s.strip() for t in texts for s in re.split(r"(?<=[.?!])\s+", t) if 20 <= len(s.strip()) <= 200]
    sentences = sentences or words
    blocks = [ln for t in texts if (ln := t.splitlines()) and len(ln) > 2] or [[w] for w in words]
    out, src = [], []
    for i, t in enumerate(texts):
        for _ in range(copies):
            kind = rng.random()
            if kind < 0.4:  # random words of the corpus
                tail = " ".join(rng.choices(words, k=rng.randint(3, 20)))
            elif kind < 0.75:  # a sentence or two of another prompt
                tail = " ".join(rng.choices(sentences, k=rng.randint(1, 2)))
            else:  # the last lines of another multi-line prompt (a list, a table, options)
                lines = rng.choice(blocks)  # one word each when no prompt has several lines
                keep = rng.randint(2, min(10, len(lines))) if len(lines) >= 2 else len(lines)
                tail = "\n".join(lines[-keep:])
            out.append(normalize(f"{t}{rng.choice([' ', ' ', chr(10)])}{tail}"))
            src.append(i)
    return out, src
