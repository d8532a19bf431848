"""The ``--budget-cap`` value, ``KEY=AMOUNT/PERIOD``: its grammar (checked with the settings) and the
period counters a cap keeps (the caps themselves are :mod:`hybridllm.serve.control.budget`)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from .errors import ServeConfigError

PERIODS = {"minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}


@dataclass(frozen=True)
class Cap:
    key: str  # a key's name, or "*" for all traffic
    amount: float
    period: str

    @property
    def seconds(self) -> int:
        return PERIODS[self.period]

    def bucket(self, now: float) -> str:
        """The counter of the current period (periods start at multiples of their length, UTC)."""
        start = int(now // self.seconds) * self.seconds
        return f"{_slug(self.key)}:{self.period}:{start}"


def _slug(name: str) -> str:
    return "all" if name == "*" else hashlib.sha256(name.encode()).hexdigest()[:16]


def parse_cap(text: str) -> Cap:
    """``KEY=AMOUNT/PERIOD`` (AMOUNT in the models file's price unit)."""
    key, sep, rest = text.partition("=")
    amount_s, slash, period = rest.partition("/")
    try:
        amount = float(amount_s)
    except ValueError:
        amount = math.nan
    key = key.strip()
    if not sep or not slash or not key or period not in PERIODS or not (amount >= 0 and math.isfinite(amount)):
        raise ServeConfigError(
            f"budget cap {text!r}: expected KEY=AMOUNT/PERIOD, e.g. team-a=5/day or *=100/day "
            f"(periods: {', '.join(PERIODS)})"
        )
    return Cap(key, amount, period)
