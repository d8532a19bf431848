"""Waiting for work the server does after it answers (shadow calls, settlement), and reading one
sample of its /metrics text."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families


def wait_for(cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` until it holds: a liveness bound (how long a failing test waits), not a timing claim."""
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels include ``labels`` in a /metrics text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0
