"""A request's cost in money, and the running estimates that price a request on every model before
and after its call (docs/control.md: the budget hold in money). Pure numbers, no I/O.

- :class:`Price`: a model's prices per 1M tokens: prompt, cached prompt (``price_cached_in`` in the
  models file; the prompt price when not given) and completion.
- :func:`usage_tokens` / :func:`cost`: what an upstream's ``usage`` object says was used (prompt
  tokens, of which ``prompt_tokens_details.cached_tokens`` read from the provider's cache, and
  completion tokens) and what that costs. A usage without both counts is no count (None), never 0.
- :func:`estimate_prompt_tokens`: a prompt's tokens from its UTF-8 size before the call (about 4
  bytes a token for English prose on BPE tokenizers, ±15 %; code and non-Latin scripts have fewer
  bytes a token, up to 4 times more tokens). :class:`CostModel` learns each model's actual ratio
  from the usage it reports, so the margin only holds until the first answers of the traffic.
- :class:`CostModel`: each model's typical answer length on this traffic (a running mean: money is
  linear in tokens, so the mean, not the median, is the expected cost), its ratio of actual to
  estimated prompt tokens and its typical cached tokens, and the ratios of two models' answer
  lengths and prompt tokens on the requests one of them is routed (each a plain mean of its first
  ``memory`` values, then forgetting at 1/memory a value); from them a request's cost on every
  model before its call (:meth:`CostModel.before`) and, after it, on the model that answered (its
  usage) and on every other (:meth:`CostModel.after`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hybridllm.errors import UsageError

#: a token count above this is no count (a broken or hostile upstream): about 10^12 tokens
MAX_COUNT = 1 << 40
#: the estimate's UTF-8 bytes per prompt token (English prose on BPE tokenizers: 3.5 to 4.5)
BYTES_PER_TOKEN = 4.0
#: the chat template's tokens per message and per request, on top of the text (an estimate)
MESSAGE_TOKENS = 4
REQUEST_TOKENS = 8
#: a model's typical answer before its traffic or a routing table says otherwise
DEFAULT_ANSWER_TOKENS = 256.0
#: a request's prompt before any was seen (what :meth:`CostModel.before` assumes without one)
DEFAULT_PROMPT_TOKENS = 500.0
#: one answer or prompt counts for at most this many tokens in the running means (a 10^12-token
#: usage is charged as reported, but does not move the typical answer by 10^12 / memory)
MAX_LEARNED = 1_000_000
#: the learnt ratio of actual to estimated prompt tokens stays within [1/16, 16]
MAX_PROMPT_RATIO = 16.0


@dataclass(frozen=True)
class Price:
    """A model's prices per 1M tokens: ``prompt`` (uncached), ``completion``, and ``cached`` for the
    prompt tokens read from the provider's cache (None: the prompt price)."""

    prompt: float
    completion: float
    cached: float | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "completion", "cached"):
            v = getattr(self, name)
            if v is None and name == "cached":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise UsageError(f"price {name}: expected a finite number >= 0 per 1M tokens, got {v!r}")

    @property
    def cached_prompt(self) -> float:
        return self.prompt if self.cached is None else float(self.cached)

    @classmethod
    def of(cls, entry: Any) -> Price:
        """A models-file entry's prices (``price_in``, ``price_cached_in``, ``price_out``); a bare
        ``cost`` is both the prompt and the completion price."""
        pin = entry.price_in if entry.price_in is not None else entry.relative_cost
        pout = entry.price_out if entry.price_out is not None else entry.relative_cost
        return cls(float(pin), float(pout), getattr(entry, "price_cached_in", None))


class Tokens(NamedTuple):
    """A usage's counts: ``prompt`` tokens (all of them), of which ``cached``, and ``completion``."""

    prompt: int
    cached: int
    completion: int


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT else None


def usage_tokens(usage: object) -> Tokens | None:
    """The counts of an OpenAI-shaped ``usage`` object; None unless ``prompt_tokens`` and
    ``completion_tokens`` are both whole numbers in 0..:data:`MAX_COUNT` (a float, a string, a bool,
    a negative or an absurd count is no count: the caller charges its own bound instead). A missing
    or malformed ``prompt_tokens_details.cached_tokens``, or one above the prompt's tokens, counts
    as nothing cached: the prompt is priced in full, never below what it may have cost."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return Tokens(prompt, cached if cached is not None and cached <= prompt else 0, completion)


def tokens_cost(t: Tokens, price: Price) -> float:
    """The cost of these counts at ``price``."""
    return (
        (t.prompt - t.cached) * price.prompt + t.cached * price.cached_prompt + t.completion * price.completion
    ) / 1e6


def cost(usage: object, price: Price) -> float | None:
    """What an answer whose upstream reported ``usage`` costs at ``price``: uncached prompt tokens at
    the prompt price, cached ones (``prompt_tokens_details.cached_tokens``) at the cached price,
    completion tokens at the completion price; None when the usage has no count
    (:func:`usage_tokens`)."""
    t = usage_tokens(usage)
    return None if t is None else tokens_cost(t, price)


def _text_bytes(content: object) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):  # content parts: the text ones (an image is billed apart: not estimated)
        return sum(len(p["text"].encode()) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def _json_bytes(v: object) -> int:
    return len(json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str).encode()) if v else 0


def estimate_prompt_tokens(body: Mapping[str, Any] | str) -> float:
    """A prompt's tokens before the call: its text's UTF-8 bytes / :data:`BYTES_PER_TOKEN`, plus
    :data:`MESSAGE_TOKENS` per message and :data:`REQUEST_TOKENS`. ``body``: a chat or completions
    request body (message texts, tool calls and tool definitions count; image parts do not), or the
    prompt's text. An estimate, not a bound (``serve.settle.token_bound`` is the bound)."""
    if isinstance(body, str):
        return len(body.encode()) / BYTES_PER_TOKEN + MESSAGE_TOKENS + REQUEST_TOKENS
    size, parts = _json_bytes(body.get("tools")), 1
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = len(messages)
        for m in messages:
            if isinstance(m, dict):
                size += _text_bytes(m.get("content")) + _json_bytes(m.get("tool_calls"))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        size += len(prompt.encode())
    elif isinstance(prompt, list):
        size += sum(len(p.encode()) for p in prompt if isinstance(p, str))
    return size / BYTES_PER_TOKEN + MESSAGE_TOKENS * parts + REQUEST_TOKENS


class CostModel:
    """Running estimates that price one request on every model of a fleet (``prices``, in the
    fleet's order), before its call and after it.

    ``answer_tokens``: each model's typical answer length to start from (:func:`table_lengths` reads
    them from a routing table; None: :data:`DEFAULT_ANSWER_TOKENS`); ``ratios``: [M, M], model m's
    answer length over model s's on the same prompts (None: 1, the same verbosity), held as if from
    ``prior`` requests both answered. ``memory``: the running means forget at 1/memory a request.

    The typical answer of a model is learnt from the answers it served, so it is the typical answer
    to the requests routed to it: a good guess for a request before the call, not for the answer
    another model would have given to the same request (the reference gets the hard questions, and
    their long answers). After a call, the other models are priced from this request's own answer
    (its length times the ratio of their lengths on the same prompts, learnt from shadow pairs:
    :meth:`pair`) and its own prompt tokens (times the ratio of the models' prompt tokens, 1
    until shadow pairs tell: the same tokenizer)."""

    def __init__(
        self,
        prices: Sequence[Price],
        *,
        answer_tokens: Sequence[float | None] | None = None,
        ratios: np.ndarray | None = None,
        prompt_tokens: float = DEFAULT_PROMPT_TOKENS,
        memory: int = 200,
        prior: float = 50.0,
    ) -> None:
        m = len(prices)
        if m < 1 or memory < 1:
            raise UsageError("CostModel needs at least one model's prices and memory >= 1")
        self.prices = tuple(prices)
        self.p_in = np.array([p.prompt for p in prices])
        self.p_cached = np.array([p.cached_prompt for p in prices])
        self.p_out = np.array([p.completion for p in prices])
        seed = [None] * m if answer_tokens is None else list(answer_tokens)
        if len(seed) != m:
            raise UsageError(f"CostModel answer_tokens: expected one per model ({m}), got {len(seed)}")
        self.answer = np.array([DEFAULT_ANSWER_TOKENS if a is None else float(a) for a in seed])
        self.prompt_ratio = np.ones(m)  # actual prompt tokens / estimated, per model
        self.cached = np.zeros(m)  # prompt tokens read from the provider's cache, per model
        self.prompt = np.array([float(prompt_tokens)])  # the typical prompt's estimated tokens
        # each running mean's weight so far: a plain mean of the first `memory` values (a table's
        # answer lengths count as `prior` of them; a default as none), then forgetting at 1/memory
        self._n_answer = np.array([0.0 if a is None else float(prior) for a in seed])
        self._n_prompt, self._n_cached, self._n_prompt_all = np.zeros(m), np.zeros(m), np.zeros(1)
        r = np.ones((m, m)) if ratios is None else np.asarray(ratios, dtype=np.float64)
        if r.shape != (m, m) or not np.all(np.isfinite(r) & (r > 0)):
            raise UsageError(f"CostModel ratios: expected a {m}x{m} matrix of positive numbers")
        # Σ of model m's and model s's counts on the requests s served and m answered in a shadow
        # pair: [0] completion tokens (a table's ratios as `prior` such requests), [1] prompt tokens
        self._num = np.stack([r * prior, np.full((m, m), float(prior))])
        self._den = np.full((2, m, m), float(prior))
        self.memory = memory
        self.alpha = 1.0 / memory
        self.answers_seen = np.zeros(m, dtype=np.int64)

    def _learn(self, mean: np.ndarray, weight: np.ndarray, i: int, value: float) -> None:
        weight[i] += 1
        mean[i] += (value - mean[i]) / min(weight[i], self.memory)

    def ratio(self, m: int, s: int, of: int = 0) -> float:
        """Model ``m``'s answer length (``of=1``: prompt tokens, for tokenizers that differ) over
        model ``s``'s on the requests routed to ``s``."""
        return float(self._num[of, m, s] / self._den[of, m, s]) if self._den[of, m, s] > 0 else 1.0

    def _price(self, prompt: np.ndarray, cached: np.ndarray, answer: np.ndarray) -> np.ndarray:
        cached = np.minimum(cached, prompt)
        return ((prompt - cached) * self.p_in + cached * self.p_cached + answer * self.p_out) / 1e6

    def before(self, prompt_tokens: float | None = None, cached_tokens: float | None = None) -> np.ndarray:
        """A request's estimated cost on every model before its call: ``prompt_tokens``
        (:func:`estimate_prompt_tokens`; None: the typical prompt) times each model's learnt ratio of
        actual to estimated prompt tokens, of which each model's typical cached tokens
        (``cached_tokens``: that many on every model, e.g. 0 for a conversation moved to a model
        that never saw it), plus each model's typical answer."""
        p = (self.prompt[0] if prompt_tokens is None else max(float(prompt_tokens), 0.0)) * self.prompt_ratio
        c = self.cached if cached_tokens is None else np.full(len(self.prices), max(float(cached_tokens), 0.0))
        return self._price(p, c, self.answer)

    def typical(self) -> np.ndarray:
        """The typical request's cost on every model (:meth:`before` without a prompt)."""
        return self.before()

    def after(self, model: int, usage: object, prompt_estimate: float | None = None) -> np.ndarray | None:
        """The request's cost on every model once ``model`` answered with ``usage``: its own from
        the usage (:func:`cost`), every other model's from this request's prompt and cached tokens
        and this answer's length, each times :meth:`ratio` (the same prefix cached on every model:
        always-reference, the spend's measure, would have kept the reference's cache as warm).
        Learns the model's typical answer, cached tokens and ratio of actual to estimated prompt
        tokens (``prompt_estimate``: the estimate made before the call). None (nothing learnt)
        when the usage has no count."""
        t = usage_tokens(usage)
        if t is None:
            return None
        self._learn(self.answer, self._n_answer, model, min(t.completion, MAX_LEARNED))
        self.answers_seen[model] += 1
        self._learn(self.cached, self._n_cached, model, min(t.cached, MAX_LEARNED))
        if prompt_estimate is not None and math.isfinite(prompt_estimate) and prompt_estimate > 0 and t.prompt > 0:
            got = min(max(t.prompt / prompt_estimate, 1 / MAX_PROMPT_RATIO), MAX_PROMPT_RATIO)
            self._learn(self.prompt_ratio, self._n_prompt, model, got)
            self._learn(self.prompt, self._n_prompt_all, 0, min(prompt_estimate, MAX_LEARNED))
        tokens = np.array([self.ratio(m, model, 1) for m in range(len(self.prices))])
        answer = t.completion * np.array([self.ratio(m, model) for m in range(len(self.prices))])
        out = self._price(t.prompt * tokens, t.cached * tokens, answer)
        out[model] = tokens_cost(t, self.prices[model])
        return out

    def pair(self, served: int, usage_served: object, other: int, usage_other: object) -> None:
        """A shadow pair: ``other``'s answer to a request routed to ``served``. The ratios of their
        answer lengths and prompt tokens are learnt on the requests each model is routed (the
        easy questions a cheap model gets may have shorter answers from every model than the
        table's average): what :meth:`after` prices the other models of such a request with."""
        ts, to = usage_tokens(usage_served), usage_tokens(usage_other)
        if ts is None or to is None or served == other:
            return
        keep = 1 - self.alpha
        for of, mine, theirs in ((0, ts.completion, to.completion), (1, ts.prompt, to.prompt)):
            self._num[of, other, served] = self._num[of, other, served] * keep + min(theirs, MAX_LEARNED)
            self._den[of, other, served] = self._den[of, other, served] * keep + min(mine, MAX_LEARNED)


def table_lengths(rows: Iterable[Mapping[str, Any]], models: Sequence[str]) -> tuple[list[float | None], np.ndarray]:
    """Each model's mean answer length on a routing table's rows (``meta.completion_tokens``, as
    ``hybridllm collect`` writes them; None for a model without any) and the ratio of their lengths
    on the prompts both answered, [M, M] (1 where no prompt was answered by both): the starting
    point of a :class:`CostModel` (``answer_tokens``, ``ratios``)."""
    m = len(models)
    total, count = np.zeros(m), np.zeros(m)
    num, den = np.zeros((m, m)), np.zeros((m, m))
    for row in rows:
        meta = row.get("meta")
        got = meta.get("completion_tokens") if isinstance(meta, Mapping) else None
        if not isinstance(got, Mapping):
            continue
        mean = np.full(m, np.nan)
        for i, name in enumerate(models):
            each = got.get(name)
            counts = [c for c in each if _count(c) is not None] if isinstance(each, list) else []
            if counts:
                mean[i] = float(np.mean(counts))
                total[i] += sum(counts)
                count[i] += len(counts)
        both = ~np.isnan(mean)
        pair = both[:, None] & both[None, :]
        num += np.where(pair, np.nan_to_num(mean)[:, None], 0.0)
        den += np.where(pair, np.nan_to_num(mean)[None, :], 0.0)
    lengths = [float(total[i] / count[i]) if count[i] else None for i in range(m)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where((num > 0) & (den > 0), num / np.where(den > 0, den, 1.0), 1.0)
    return lengths, ratios


__all__ = [
    "BYTES_PER_TOKEN",
    "DEFAULT_ANSWER_TOKENS",
    "MAX_COUNT",
    "CostModel",
    "Price",
    "Tokens",
    "cost",
    "estimate_prompt_tokens",
    "table_lengths",
    "tokens_cost",
    "usage_tokens",
]
