"""Routing names and the per-request knob: what a client may ask for, in a strict grammar.

Names (the ``model`` field): ``hybrid`` (the default operating point), ``hybrid-qd-<pct>`` (at most
this quality drop, percent), ``hybrid-ca-<pct>`` (two models: this share of queries to the small
model, percent), ``hybrid-budget-<pct>`` (N models: average cost at most this % of always using the
best model), ``hybrid-t-<x>`` (a raw score threshold in 0..1), and each model's own name (forced;
with two models also ``small`` / ``large``). ``<pct>`` is 0..100 with up to 4 decimals, ``<x>`` 0..1 with up to 6; ASCII
digits only, no sign, no spaces, no leading zeros: a name is an identifier, not a number to coerce.

A body field ``"hybridllm": {...}`` overrides the name: ``max_quality_drop``, ``cost_advantage``,
``budget``, ``threshold`` (finite numbers in range), ``force`` (a model name, or ``small``/``large``)
and ``fallback`` (bool).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from hybridllm.errors import HybridLLMError

_PCT = r"(?:0|[1-9][0-9]{0,2})(?:\.[0-9]{1,4})?"
_NAME = re.compile(rf"hybrid-(qd|ca|budget)-({_PCT})|hybrid-t-((?:0|1)(?:\.[0-9]{{1,6}})?)", re.ASCII)
_FIELDS = {"max_quality_drop", "cost_advantage", "budget", "threshold", "force", "fallback"}
NAME_FORMS = "hybrid, hybrid-qd-<pct>, hybrid-ca-<pct>, hybrid-budget-<pct>, hybrid-t-<x>"


class KnobError(HybridLLMError, ValueError):
    """The request's routing name or ``hybridllm`` field is not valid; ``unknown_model`` = 404."""

    def __init__(self, message: str, unknown_model: bool = False) -> None:
        super().__init__(message)
        self.unknown_model = unknown_model


@dataclass(frozen=True)
class Knob:
    """What one request asks for. ``force``: "small"/"large" or None (routed). ``fallback``: None =
    the server's default for routed requests (forced ones never fall back unless asked)."""

    max_quality_drop: float | None = None
    cost_advantage: float | None = None
    threshold: float | None = None
    force: str | None = None  # a key of the forced-names map
    fallback: bool | None = None
    budget: float | None = None


def forced_names(models: list[tuple[str, str]], pair: bool) -> dict[str, int]:
    """Every name that forces a model → its index: each model's name and the name sent upstream;
    with two models also ``small`` (0) and ``large`` (1)."""
    out: dict[str, int] = {"small": 0, "large": 1} if pair else {}
    for i, (name, sent) in enumerate(models):
        out.setdefault(name, i)
        if sent:
            out.setdefault(sent, i)
    return out


def routing_names(forced: dict[str, Any], budget: bool = False) -> list[str]:
    """What ``/v1/models`` lists: the routing examples (budgets when the router knows the models'
    costs) and every accepted forced name."""
    share = ["hybrid-budget-30", "hybrid-budget-60"] if budget else ["hybrid-ca-20", "hybrid-ca-50"]
    examples = ["hybrid", "hybrid-qd-0", "hybrid-qd-1", "hybrid-qd-5", *share, "hybrid-t-0.5"]
    return list(dict.fromkeys([*examples, *forced]))


def parse_name(model: str, forced: dict[str, Any]) -> Knob:
    if model in forced:
        return Knob(force=model)
    if model == "hybrid":
        return Knob()
    m = _NAME.fullmatch(model)
    if m is None:
        names = ", ".join(dict.fromkeys(forced))
        raise KnobError(f"unknown model {model!r}; use {NAME_FORMS} or one of: {names}", unknown_model=True)
    kind, pct, thr = m.groups()
    if thr is not None:
        value = float(thr)
        if value > 1.000001:
            raise KnobError(f"threshold in {model!r} is above 1")
        return Knob(threshold=value)
    value = float(pct)
    if value > 100:
        raise KnobError(f"percentage in {model!r} is above 100")
    if kind == "budget":
        return Knob(budget=value)
    return Knob(max_quality_drop=value) if kind == "qd" else Knob(cost_advantage=value)


def _number(extra: dict[str, Any], key: str, hi: float) -> float | None:
    v = extra.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise KnobError(f"hybridllm.{key} must be a number")
    try:
        f = float(v)
    except OverflowError:
        raise KnobError(f"hybridllm.{key} is out of range") from None
    if not math.isfinite(f) or f < 0 or f > hi:
        raise KnobError(f"hybridllm.{key} must be within 0..{hi:g}")
    return f


def parse_knob(model: str, extra: Any, forced: dict[str, Any]) -> Knob:
    """The knob of one request: the name, overridden by the ``hybridllm`` body field when present."""
    knob = parse_name(model, forced)
    if extra is None:
        return knob
    if not isinstance(extra, dict):
        raise KnobError("field 'hybridllm' must be an object")
    bad = set(extra) - _FIELDS
    if bad:
        shown = ", ".join(sorted(repr(b)[:40] for b in bad))
        raise KnobError(f"unknown keys in 'hybridllm': {shown} (allowed: {', '.join(sorted(_FIELDS))})")
    force = extra.get("force")
    if force is not None and (not isinstance(force, str) or force not in forced):
        raise KnobError(f"hybridllm.force must be one of: {', '.join(forced)}")
    fallback = extra.get("fallback")
    if fallback is not None and not isinstance(fallback, bool):
        raise KnobError("hybridllm.fallback must be true or false")
    values = {
        "max_quality_drop": _number(extra, "max_quality_drop", 100),
        "cost_advantage": _number(extra, "cost_advantage", 100),
        "threshold": _number(extra, "threshold", 1.000001),
        "budget": _number(extra, "budget", 100),
    }
    given = [k for k, v in values.items() if v is not None] + (["force"] if force else [])
    if len(given) > 1:
        raise KnobError(f"give at most one of {', '.join(given)} in 'hybridllm'")
    if given:
        return Knob(**values, force=force, fallback=fallback)
    return Knob(knob.max_quality_drop, knob.cost_advantage, knob.threshold, knob.force, fallback, knob.budget)
