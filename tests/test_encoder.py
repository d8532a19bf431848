"""Encoders: the ONNX export must be the same function as the torch model, and caches must hit."""

import numpy as np
import pytest

from hybridllm.features.base import EncoderError
from hybridllm.features.cache import EmbeddingCache, embed_texts
from hybridllm.features.static import StaticEncoder
from hybridllm.features.transformer import TransformerEncoder

pytestmark = pytest.mark.slow  # the transformer encoder (ONNX and torch)

TEXTS = [
    "hello",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Which of the following is a primary source of energy for the sun? A. fusion B. fission",
]


def test_onnx_matches_sentence_transformers(cache_env):
    from sentence_transformers import SentenceTransformer

    enc = TransformerEncoder(None, max_length=256, backend="onnx")
    assert enc.backend == "onnx" and enc.dim == 384
    ref = SentenceTransformer(str(enc.path), device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = enc.encode(TEXTS, batch_size=3)  # one padded batch
    np.testing.assert_allclose((ref * got).sum(1), 1.0, atol=1e-4)
    single = np.stack([enc.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(single, got, atol=1e-5)


def test_torch_backend_agrees_with_onnx(cache_env):
    a = TransformerEncoder(None, backend="onnx").encode(TEXTS)
    b = TransformerEncoder(None, backend="torch").encode(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_static_encoder_is_normalised_and_topical(cache_env):
    enc = StaticEncoder(None)
    v = enc.encode(["the derivative of x squared", "integrate x squared dx", "a recipe for apple pie", ""])
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # calculus questions are closer to each other than to baking
    assert np.all(v[3] == 0)  # an empty prompt has no tokens: the zero vector, not NaN


def test_cache_hits_skip_the_encoder(cache_env, tmp_path):
    enc = TransformerEncoder(None)
    calls = []
    real = enc.encode

    def counting(texts, batch_size=64, progress=None):
        calls.append(len(texts))
        return real(texts, batch_size, progress)

    enc.encode = counting
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    first = embed_texts(enc, [*TEXTS, TEXTS[0]], cache, show_progress=False)
    assert calls == [3]  # the duplicate text is embedded once
    second = embed_texts(enc, TEXTS, cache, show_progress=False)
    assert calls == [3]
    np.testing.assert_allclose(first[:3], second)


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="never downloads"):
        TransformerEncoder("bert-base-uncased")
    with pytest.raises(EncoderError, match=r"config\.json"):
        TransformerEncoder(str(tmp_path))


def test_static_one_pass_equals_truncating_tokenizer(cache_env):
    """encode_with_lengths does truncation itself so that one tokenizer pass yields both vectors and
    untruncated lengths; it must equal the tokenizer's own right truncation and full token counts."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from .conftest import MMLU

    enc = StaticEncoder(max_length=64)
    with MMLU.open() as fh:
        texts = [json.loads(next(fh))["prompt"] for _ in range(40)]
    texts += [texts[0] * 5, "", "short", "[SEP] literal specials [CLS] in text"]
    vecs, lengths = enc.encode_with_lengths(texts)
    tok = enc.tokenizer.tok  # truncates at 64, adds [CLS] ... [SEP]
    for i, e in enumerate(tok.encode_batch([t or " " for t in texts])):
        ids = np.asarray(e.ids)
        ids = ids[~np.isin(ids, enc._specials)]
        want = np.zeros(enc.dim, dtype=np.float32)
        if len(ids):
            v = enc.table[ids].mean(axis=0)
            want = v / (np.linalg.norm(v) + 1e-12)
        np.testing.assert_allclose(vecs[i], want, atol=1e-6)
    tok_full = tok.__class__.from_str(tok.to_str())
    tok_full.no_truncation()
    assert lengths.tolist() == [len(e.ids) for e in tok_full.encode_batch([t or " " for t in texts])]
    assert lengths.max() > 64 and tok.truncation["max_length"] == 64
    # scoring from many threads at once (serve's worker threads) gives the same answers
    with ThreadPoolExecutor(8) as pool:
        again = list(pool.map(lambda t: enc.encode_with_lengths([t]), texts * 5))[-len(texts) :]
    np.testing.assert_allclose(np.concatenate([a[0] for a in again]), vecs, atol=1e-6)
    assert [int(a[1][0]) for a in again] == lengths.tolist()


def test_token_counts_are_untruncated_for_every_encoder(cache_env):
    """log_tokens counts the whole prompt whatever the encoder truncates to (the transformer's
    tokenizer truncates; its counts come from an untruncated twin, not from toggling it)."""
    from hybridllm.features.base import resolve_encoder_path
    from hybridllm.features.tokenizer import Tokenizer

    tok = Tokenizer(resolve_encoder_path(None)[1], max_length=8)
    text = "one two three four five six seven eight nine ten eleven twelve"
    ids, _ = tok([text])
    assert ids.shape[1] == 8  # the model still sees at most max_length tokens
    assert tok.lengths([text]) == [len(text.split()) + 2]  # [CLS] + 12 words + [SEP]
    assert tok.tok.truncation["max_length"] == 8


def test_static_vectors_do_not_depend_on_the_batch(cache_env):
    """A prompt gets the same vector alone or in any micro-batch (the proxy scores both ways), and
    the batched pooling equals the plain mean of the prompt's token vectors."""
    enc = StaticEncoder(max_length=64)
    texts = ["What is 2 + 2?", "", "[CLS] [SEP]", "the the the " * 40, "Prove that sqrt(2) is irrational."]
    batch, lengths = enc.encode_with_lengths(texts)
    for i, t in enumerate(texts):
        alone, n = enc.encode_with_lengths([t])
        assert np.array_equal(alone[0], batch[i]) and n[0] == lengths[i]
    ids = [i for i in enc.tokenizer.raw.encode(texts[0], add_special_tokens=False).ids if not enc._is_special[i]]
    v = np.asarray(enc.table)[ids].mean(axis=0)
    assert np.allclose(batch[0], v / np.linalg.norm(v), atol=1e-6)
    assert not batch[1].any() and not batch[2].any()  # nothing but special tokens: a zero vector
