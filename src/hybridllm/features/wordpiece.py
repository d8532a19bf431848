"""Token ids of plain ASCII text from a per-word cache, for BERT-style (WordPiece) tokenizers.

The router tokenises every request, and on a busy proxy the Rust tokenizer's per-call work (and the
cache misses it takes between requests) was the largest single cost of a routing decision. A
BERT-style tokenizer cuts text into words at whitespace and punctuation and then tokenises each word
on its own, so the ids of a text are the ids of its words in order: each word is tokenised once, by
the tokenizer itself, and remembered. Only text on which that identity provably holds takes this
path (printable ASCII plus tab and newlines, none of the tokenizer's added tokens such as ``[CLS]``,
a tokenizer whose pipeline is exactly normaliser ``BertNormalizer``, pre-tokeniser
``BertPreTokenizer``, model ``WordPiece``); any other text goes to the tokenizer whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import chain
from typing import Any

#: characters for which lower-casing, accent stripping and control-character removal change nothing
#: and the only whitespace is what the pre-tokeniser splits on (vertical tab and form feed are
#: control characters to BERT's normaliser, which deletes them and so joins their neighbours)
_UNSAFE = re.compile(r"[^\t\n\r\x20-\x7e]")
#: BERT's pre-tokeniser on such text: runs of letters and digits, and each punctuation mark alone
_WORDS = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")
#: words remembered at most (text a client controls must not grow memory without bound)
MAX_WORDS = 100_000
_chain = chain.from_iterable


class WordpieceCache:
    """``ids(texts)``: each text's token ids, without special tokens and without truncation, equal
    to ``tokenizer.encode_batch(texts, add_special_tokens=False)`` (tested on real prompts and on
    generated text). ``tokenizer`` is a ``tokenizers.Tokenizer`` without truncation."""

    def __init__(self, tokenizer: Any, max_words: int = MAX_WORDS) -> None:
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.enabled = _is_plain_wordpiece(tokenizer)
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        # an added token is matched in the raw text before anything else; case-insensitive, since
        # one marked `normalized` is matched after lower-casing
        self._added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None
        self._words: dict[str, list[int]] = {}
        self.max_words = max_words

    def _plain(self, text: str) -> bool:
        return (
            self.enabled and _UNSAFE.search(text) is None and (self._added is None or self._added.search(text) is None)
        )

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in texts]
        whole: list[int] = []  # texts the tokenizer must see whole
        words = self._words
        for i, text in enumerate(texts):
            if not self._plain(text):
                whole.append(i)
                continue
            pieces = _WORDS.findall(text)
            try:  # every word already known (most prompts, once the cache is warm): one pass in C
                out[i] = list(_chain(map(words.__getitem__, pieces)))
                continue
            except KeyError:
                pass
            fresh: dict[str, list[int]] = {}
            missing = [w for w in dict.fromkeys(pieces) if w not in words]
            if missing:  # tokenised in one call; kept while there is room (a full cache still answers)
                encs = self._encode(missing, add_special_tokens=False)
                fresh = {w: e.ids for w, e in zip(missing, encs, strict=True)}
                if len(words) + len(fresh) <= self.max_words:
                    words.update(fresh)
            got = out[i]
            for w in pieces:
                ids = words.get(w)
                got += fresh[w] if ids is None else ids
        if whole:
            for i, enc in zip(whole, self._encode([texts[i] for i in whole], add_special_tokens=False), strict=True):
                out[i] = enc.ids
        return out


def _is_plain_wordpiece(tokenizer: Any) -> bool:
    """Whether the tokenizer's pipeline is exactly BERT's: the identity the cache relies on is
    proved for that pipeline only (a cased BERT is fine: ASCII case is per character)."""
    try:
        spec = json.loads(tokenizer.to_str())
    except (ValueError, AttributeError):
        return False
    norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (
        norm.get("type") == "BertNormalizer"
        and norm.get("clean_text", True) is True
        and pre.get("type") == "BertPreTokenizer"
        and model.get("type") == "WordPiece"
    )
