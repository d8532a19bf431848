"""From query text to the head's inputs: the encoder a spec names, the prompt's embedding and the
extra features beside it. Serving and training both compute features here, so they cannot drift."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hybridllm.errors import UsageError

from .base import Encoder
from .cache import EmbeddingCache, embed_texts
from .static import StaticEncoder
from .transformer import TransformerEncoder


def make_encoder(spec: str | None = None, max_length: int = 256, backend: str = "auto") -> Encoder:
    """``static`` / ``NAME:static`` gives the distilled static encoder; anything else the transformer."""
    if spec is not None and (spec == "static" or spec.endswith(":static")):
        base = None if spec == "static" else spec[: -len(":static")]
        return StaticEncoder(base, max_length=max(max_length, 512))
    return TransformerEncoder(spec, max_length=max_length, backend=backend)


#: ``head_embed`` reads the prompt's first words alone: text appended to a prompt cannot move it
HEAD_WORDS = 24


def extra_features(
    encoder: Encoder, texts: Sequence[str], names: Sequence[str], lengths: np.ndarray | None = None
) -> np.ndarray:
    """Query features beside the embedding. ``log_tokens``: the encoder's token count before
    truncation (log-scaled); long prompts are harder for small models, and mean pooling hides length.
    ``head_embed``: the embedding of the prompt's first ``HEAD_WORDS`` words alone, which a suffix
    cannot move (a router that weighs it resists appended text). ``lengths``: the token counts when
    the encoder already produced them with the vectors."""
    cols = []
    for name in names:
        if name == "log_tokens":
            if lengths is None:
                lengths = _token_lengths(encoder, texts)
            cols.append(np.log1p(np.asarray(lengths, dtype=np.float32))[:, None])
        elif name == "head_embed":
            heads = [" ".join(t.split()[:HEAD_WORDS]) for t in texts]
            cols.append(np.asarray(encoder.encode(heads), dtype=np.float32))
        else:
            raise UsageError(f"unknown extra feature {name!r}")
    if not cols:
        return np.zeros((len(texts), 0), dtype=np.float32)
    return np.concatenate(cols, axis=1).astype(np.float32)


def _token_lengths(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    if hasattr(encoder, "token_lengths"):
        return encoder.token_lengths(texts)
    return np.array([len(t.split()) for t in texts], dtype=np.float32)


def featurize(
    encoder: Encoder,
    texts: Sequence[str],
    extra: Sequence[str] = (),
    cache: EmbeddingCache | None = None,
    show_progress: bool = False,
    batch_size: int = 64,
) -> np.ndarray:
    if not extra:
        return embed_texts(encoder, texts, cache=cache, show_progress=show_progress, batch_size=batch_size)
    lengths = None
    if cache is None and "log_tokens" in extra and hasattr(encoder, "encode_with_lengths"):
        emb, lengths = encoder.encode_with_lengths(texts, batch_size)  # one tokenizer pass (serving)
    else:
        emb = embed_texts(encoder, texts, cache=cache, show_progress=show_progress, batch_size=batch_size)
    return np.concatenate([emb, extra_features(encoder, texts, extra, lengths)], axis=1)
