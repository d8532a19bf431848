"""The one progress helper: a live bar on a terminal, occasional whole lines anywhere else.

A bar that redraws per sample is right on a terminal and wrong in a log file (thousands of
carriage-return frames, and status lines glued onto the last one). When stderr is not a terminal,
:func:`progress_bar` prints one complete line at most every ``interval`` seconds and one at the end.
``HYBRIDLLM_NO_PROGRESS=1`` silences both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

LINE_INTERVAL_S = 15.0


def _disabled() -> bool:
    return os.environ.get("HYBRIDLLM_NO_PROGRESS") == "1"


class LineProgress:
    """tqdm's small interface (update, set_postfix, close, n, context manager), as whole lines."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", interval: float = LINE_INTERVAL_S) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self.postfix = ""
        self.t0 = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        n, total, unit = self.n, self.total, self.unit
        if unit == "B":  # bytes read as megabytes
            n, total, rate, unit = round(n / 1e6), round(total / 1e6) if total else total, rate / 1e6, "MB"
        done = f"{n}/{total}" if total else str(n)
        pct = f" ({self.n / self.total * 100:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {unit}{pct} in {elapsed:.0f} s, {rate:.1f} {unit}/s{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            print(self._line(), file=sys.stderr, flush=True)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def close(self) -> None:
        if not self._closed and self.n:
            print(self._line(), file=sys.stderr, flush=True)
        self._closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self._closed = True


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **tqdm_kw: Any) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` otherwise, a silent counter when disabled."""
    if not enabled or _disabled():
        return _Silent(total, desc, unit)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, **tqdm_kw)
    return LineProgress(total, desc, unit)


def progress_iter(items: Iterable[T], total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[T]:
    with progress_bar(total, desc, unit, enabled) as bar:
        for x in items:
            yield x
            bar.update(1)
