"""Scoring: responses → per-sample quality (docs/tables.md), as pure row-batch functions.

Each metric maps (response, row) to a number; ``score_rows`` fills ``quality`` for every model that
has ``responses``. Rows in, rows out, no hidden state: the same function runs over a list here and
over Ray Data batches on a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from hybridllm.errors import UsageError, install_command
from hybridllm.features.transformer import TransformerEncoder
from hybridllm.stages.judge import JUDGE_RUBRIC as JUDGE_RUBRIC  # the judge lives in stages.judge; re-exported
from hybridllm.stages.judge import JudgeError as JudgeError
from hybridllm.stages.judge import check_rubric as check_rubric
from hybridllm.stages.judge import judge_batch as judge_batch
from hybridllm.stages.judge import judge_rating as judge_rating
from hybridllm.tables.format import Row, TableError, prompt_text

_NUM = r"-?\d[\d,]*(?:\.\d+)?"


def _normalise_number(text: str) -> str | None:
    t = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        v = float(t)
    except ValueError:
        return None
    return str(int(v)) if v.is_integer() else repr(round(v, 6))


def extract_final_number(response: str) -> str | None:
    """The answer a GSM8K-style response commits to: after '####', else in a \\boxed{}, else after
    'answer is', else the last number in the text."""
    for pattern in (rf"####\s*\$?\s*({_NUM})", rf"\\boxed\{{\s*\$?({_NUM})", rf"answer(?: is|:)\s*\$?\s*({_NUM})"):
        m = re.findall(pattern, response, flags=re.IGNORECASE)
        if m:
            return _normalise_number(m[-1])
    nums = re.findall(_NUM, response)
    return _normalise_number(nums[-1]) if nums else None


def exact_match(response: str, row: Row) -> float:
    """1.0 when the response's final number equals the reference's (numeric compare), else 0.0.
    Non-numeric references fall back to case- and space-insensitive string equality."""
    ref = _require_reference(row, "exact-match")
    ref_num = _normalise_number(ref)
    if ref_num is not None:
        return 1.0 if extract_final_number(response) == ref_num else 0.0
    return 1.0 if " ".join(response.lower().split()) == " ".join(ref.lower().split()) else 0.0


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The option letter a multiple-choice response picks: 'answer is (C)', 'Answer: C', else a
    lone letter at the start, else the last standalone letter."""
    patterns = (
        rf"answer is\s*\(?([{letters}])\)?",
        rf"answer\s*[:：]\s*\(?([{letters}])\)?",
        rf"^\s*\(?([{letters}])(?:[.):]|\s*$)",
    )
    for p in patterns:
        m = re.findall(p, response, flags=re.IGNORECASE | re.MULTILINE)
        if m:
            return m[-1].upper() if p.startswith("answer") else m[0].upper()
    m = re.findall(rf"\(([{letters}])\)", response)  # "(C)" anywhere; bare letters are too ambiguous ("I")
    return m[-1].upper() if m else None


def choice(response: str, row: Row) -> float:
    ref = _require_reference(row, "choice").strip().upper()
    return 1.0 if extract_choice(response) == ref else 0.0


def rouge_l(response: str, row: Row) -> float:
    """ROUGE-L F-measure against the reference (Google's rouge-score package, with stemming)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UsageError(f"metric rouge-l needs the rouge-score package: {install_command('score')}") from None
    ref = _require_reference(row, "rouge-l")
    scorer = _ROUGE.get("s")
    if scorer is None:
        scorer = _ROUGE["s"] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(scorer.score(ref, response)["rougeL"].fmeasure)


_ROUGE: dict[str, Any] = {}


def _require_reference(row: Row, metric: str) -> str:
    ref = row.get("reference")
    if ref is None:
        raise TableError(f"row {row.get('id')!r}: reference: missing (metric {metric} needs one)")
    return str(ref)


METRICS: dict[str, Callable[[str, Row], float]] = {
    "exact-match": exact_match,
    "choice": choice,
    "rouge-l": rouge_l,
}


def embedding_similarity_batch(pairs: Sequence[tuple[str, Row]], encoder: str | None = None) -> list[float]:
    """Cosine similarity of response and reference embeddings (all-MiniLM-L6-v2 by default, the
    router's encoder family; any local HF encoder directory works), in one batched pass."""
    import numpy as np

    if not pairs:
        return []
    refs = [_require_reference(row, "embedding-similarity") for _, row in pairs]
    enc = _ENCODERS.get(encoder)
    if enc is None:
        enc = _ENCODERS[encoder] = TransformerEncoder(encoder)
    vecs = enc.encode([r for r, _ in pairs] + refs)
    a, b = vecs[: len(pairs)], vecs[len(pairs) :]
    return [float(x) for x in np.clip((a * b).sum(axis=1), -1.0, 1.0)]


_ENCODERS: dict[str | None, Any] = {}


def _load_hf(path: str | None, kind: str) -> tuple[Any, Any]:
    """A local Hugging Face checkpoint (never downloaded), cached per process."""
    from pathlib import Path

    if not path or not Path(path).is_dir():
        raise UsageError(f"metric {kind} needs a local checkpoint directory (--model-path), got {path!r}")
    key = (kind, str(path))
    if key not in _HF:
        import transformers
        from transformers import AutoTokenizer

        transformers.logging.set_verbosity_error()
        cls = (
            transformers.AutoModelForSeq2SeqLM
            if kind == "bartscore"
            else transformers.AutoModelForSequenceClassification
        )
        _HF[key] = (AutoTokenizer.from_pretrained(path), cls.from_pretrained(path).eval())
    return _HF[key]


_HF: dict[tuple[str, str], tuple[Any, Any]] = {}


def bartscore_batch(
    pairs: Sequence[tuple[str, Row]], model_path: str | None = None, batch_size: int = 16
) -> list[float]:
    """BARTScore (Yuan et al., 2021), the paper's metric: mean log-likelihood per token of the
    reference given the response under a BART model, log p(reference | response). Higher is better
    (values are <= 0). Any local BART-style seq2seq checkpoint path works."""
    import torch

    tok, model = _load_hf(model_path, "bartscore")
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            src = tok([r for r, _ in chunk], return_tensors="pt", padding=True, truncation=True, max_length=1024)
            refs = [_require_reference(row, "bartscore") for _, row in chunk]
            tgt = tok(text_target=refs, return_tensors="pt", padding=True, truncation=True, max_length=1024)
            labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
            logits = model(input_ids=src["input_ids"], attention_mask=src["attention_mask"], labels=labels).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            mask = labels != -100
            tok_lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            out.extend((tok_lp.sum(-1) / mask.sum(-1).clamp(min=1)).tolist())
    return out


def reward_model_batch(
    pairs: Sequence[tuple[str, Row]], model_path: str | None = None, batch_size: int = 16, unit: bool = False
) -> list[float]:
    """A reward model's score of (prompt, response): the single logit for 1-label heads, else the
    probability of the last (positive) label. Any local sequence-classification checkpoint.
    ``unit``: a 1-label head's logit through the logistic function, so every score is in [0, 1]."""
    import torch

    tok, model = _load_hf(model_path, "reward-model")
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            enc = tok(
                [prompt_text(row["prompt"]) for _, row in chunk],
                [r for r, _ in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=512,
            )
            logits = model(**enc).logits.float()
            if logits.shape[-1] == 1:
                vals = torch.sigmoid(logits[:, 0]) if unit else logits[:, 0]
            else:
                vals = torch.softmax(logits, -1)[:, -1]
            out.extend(vals.tolist())
    return out


BATCH_METRICS: dict[str, Callable[..., list[float]]] = {
    "embedding-similarity": embedding_similarity_batch,
    "bartscore": bartscore_batch,
    "reward-model": reward_model_batch,
}


def available_metrics() -> list[str]:
    return sorted([*METRICS, *BATCH_METRICS, "judge"])


def score_rows(
    rows: Sequence[Row],
    metric: str,
    models: Sequence[str] | None = None,
    judge: Any = None,
    model_path: str | None = None,
    rubric: str | None = None,
) -> list[Row]:
    """Return copies of the rows with ``quality[model]`` computed from ``responses[model]``.
    ``judge``: the backend for ``judge`` (``rubric``: its prompt, default :data:`JUDGE_RUBRIC`);
    ``model_path``: the checkpoint for ``bartscore`` / ``reward-model`` (or the encoder for
    ``embedding-similarity``). A judge error on any of a model's answers in a row leaves that row
    without ``quality[model]`` (never a default number; :func:`unscored` counts them)."""
    if metric == "judge":
        if judge is None:
            raise UsageError("metric judge needs a judge backend (--judge SPEC)")
    elif metric not in METRICS and metric not in BATCH_METRICS:
        raise UsageError(f"unknown metric {metric!r}; available: {', '.join(available_metrics())}")
    slots: list[tuple[int, str]] = []
    pairs: list[tuple[str, Row]] = []
    for i, row in enumerate(rows):
        for model, responses in row.get("responses", {}).items():
            if models is not None and model not in models:
                continue
            slots.append((i, model))
            pairs.extend((r, row) for r in responses)
    values: Sequence[float | None]
    if metric == "judge":
        values = judge_batch(pairs, judge, rubric or JUDGE_RUBRIC)
    elif metric in METRICS:
        fn = METRICS[metric]
        values = [fn(r, row) for r, row in pairs]
    elif metric == "embedding-similarity":
        values = embedding_similarity_batch(pairs, model_path)
    else:
        values = BATCH_METRICS[metric](pairs, model_path)
    out = [dict(row, quality=dict(row.get("quality", {}))) for row in rows]
    pos = 0
    for i, model in slots:
        n = len(rows[i]["responses"][model])
        got = values[pos : pos + n]
        pos += n
        if any(v is None for v in got):
            out[i]["quality"].pop(model, None)  # a judge error: no score, and no stale one either
        else:
            out[i]["quality"][model] = list(got)
    return out


def unscored(rows: Sequence[Row], models: Sequence[str] | None = None) -> int:
    """How many (row, model) slots have responses but no quality (judge errors after ``score_rows``)."""
    return sum(
        1
        for row in rows
        for model in row.get("responses", {})
        if (models is None or model in models) and model not in row.get("quality", {})
    )
