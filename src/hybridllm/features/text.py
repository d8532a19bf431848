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

import operator
import re
from typing import Any

from hybridllm.tables.format import prompt_text

_PHRASE = re.compile(r"\b((?:\w+[\s,;:.!?]+){1,4}?)\1{2,}", re.IGNORECASE)
_WORD_AT_END = re.compile(r"\b(\w+)(?:[\s,;:.!?]+\1\b){2,}", re.IGNORECASE)
_PUNCT = re.compile(r"(?:[^\w\s]\s*){4,}")


def _cut_punct(m: re.Match[str]) -> str:
    kept = [c for c in m.group(0) if not c.isspace()][:3]
    return "".join(kept) + (" " if m.group(0)[-1].isspace() else "")


#: each word with the first character of the separator run after it ("" when none follows)
_WORD_SEP = re.compile(r"(\w+)([\s,;:.!?]?)")
#: in the bytes of "item i equals item i + k": the same k items three times in a row (2k hits)
_RUN = {k: b"\x01" * (2 * k) for k in (1, 2, 3, 4)}


def _found(items: list[str], shifts: tuple[int, ...]) -> bool:
    """Whether the same k consecutive items occur three times in a row, for some k in ``shifts``
    (the equalities items[i] == items[i + k] computed in C, as bytes, and searched)."""
    return any(_RUN[k] in bytes(map(operator.eq, items, items[k:])) for k in shifts)


def _may_repeat(text: str) -> tuple[bool, bool]:
    """Cheap necessary conditions for _PHRASE and _WORD_AT_END to match (both backtrack, and on
    long prompts they cost more than the rest of a routing decision): 1-4 consecutive word units
    three times in a row, and one word three times in a row. A unit is compared by its word and the
    first character after it, which is all the copies _PHRASE finds must share (the last copy's
    separators may run longer). Only for ASCII text, where lower-casing is the patterns' own case
    rule character for character: elsewhere it can split words differently (``İ`` lower-cases to
    two characters) or differ from it, so non-ASCII text always goes through both patterns."""
    if not text.isascii():
        return True, True
    pairs = _WORD_SEP.findall(text.lower())
    words = [w for w, _ in pairs]
    return _found([w + sep for w, sep in pairs], (1, 2, 3, 4)), _found(words, (1,))


#: ASCII bytes as _PUNCT sees them: word characters "a", whitespace deleted, the rest "."
_PUNCT_VIEW = bytes((ord("a") if re.match(r"\w", chr(i)) else ord(".")) if i < 128 else ord("a") for i in range(256))
_SPACE_BYTES = bytes(i for i in range(128) if re.match(r"\s", chr(i)))


def _may_punct(text: str) -> bool:
    """A necessary condition for _PUNCT to match, in C: four non-word characters with nothing but
    whitespace between them (ASCII text; other text always goes through the pattern)."""
    return not text.isascii() or b"...." in text.encode("ascii").translate(_PUNCT_VIEW, _SPACE_BYTES)


def normalize(text: str) -> str:
    """Collapse repeated words/phrases and punctuation runs; other text unchanged."""
    phrase, word = _may_repeat(text)
    if phrase:
        text = _PHRASE.sub(r"\1\1", text)
    if word:  # collapsing a phrase makes no new run of one word, so the test on the text before holds
        text = _WORD_AT_END.sub(r"\1 \1", text)
    return _PUNCT.sub(_cut_punct, text) if _may_punct(text) else text


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
