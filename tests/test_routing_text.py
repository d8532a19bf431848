"""The router's text normalisation: its cheap gates must never skip a collapse or a punctuation cut
that the patterns make."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hybridllm.features.text import _PHRASE, _PUNCT, _WORD_AT_END, _cut_punct, normalize

from .conftest import MMLU

GSM8K = MMLU.parent / "gsm8k" / "test.jsonl"


def _ungated(text: str) -> str:
    """What normalize means: both collapse patterns and the punctuation cut, always applied."""
    return _PUNCT.sub(_cut_punct, _WORD_AT_END.sub(r"\1 \1", _PHRASE.sub(r"\1\1", text)))


WORDS = ["go", "Go", "GO", "the", "a", "900", "x1", "naïve", "İx", "ß", "東京", "_"]
SEPS = [" ", "  ", ", ", ". ", ",  ", "\n", "\t", "; ", "!", "?? ", "-", "(", ") ", ""]
SEPS += ["..", "! ?", "\x0b", "\x1c", "…"]  # punctuation split by space, ASCII whitespace \s knows, non-ASCII
PIECE = st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPS)).map("".join)


@st.composite
def texts_with_runs(draw):
    """Random word/separator text with a phrase of 1-5 pieces repeated 2-4 times somewhere."""
    before = draw(st.lists(PIECE, max_size=8))
    phrase = draw(st.lists(PIECE, min_size=1, max_size=5))
    after = draw(st.lists(PIECE, max_size=8))
    return "".join(before + phrase * draw(st.integers(2, 4)) + after)


@settings(max_examples=600, deadline=None)
@given(texts_with_runs())
def test_gates_never_skip_a_collapse(text):
    assert normalize(text) == _ungated(text)


def test_real_prompts_and_their_repeated_copies():
    import random

    prompts = [json.loads(line)["prompt"] for line in GSM8K.open()]
    prompts += [json.loads(line)["prompt"] for _, line in zip(range(2000), MMLU.open(), strict=False)]
    rng = random.Random(0)
    texts = list(prompts)
    for p in prompts[:1500]:
        words = p.split()
        i, k = rng.randrange(len(words)), rng.randint(1, 5)
        sep = rng.choice([" ", ", ", "  ", ". "])
        texts.append(
            " ".join(words[:i]) + " " + sep.join(words[i : i + k] * rng.randint(2, 4)) + " " + " ".join(words[i:])
        )
    changed = 0
    for t in texts:
        got = normalize(t)
        assert got == _ungated(t)
        changed += got != t
    assert changed > 300  # the copies with three or more repeats are collapsed
