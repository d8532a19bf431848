"""The last minutes of traffic, for people (the dashboard) rather than for scrapers (/metrics):
a bounded window of recent requests plus running totals, summarised on demand."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybridllm.fsutil import atomic_write

WINDOW_S = 60  # requests/s series length
BINS = 20  # score histogram bins over 0..1


@dataclass(frozen=True)
class Event:
    t: float  # time.time() at the end of the request
    model: str
    status: int
    latency_s: float
    score: float | None
    fallback: bool


class TrafficWindow:
    """Fed once per finished request; :meth:`snapshot` is what ``/dashboard/data`` returns."""

    def __init__(self, models: list[str], keep: int = 5000, share_dir: str | None = None) -> None:
        """``share_dir``: the workers of one server publish their window there (:meth:`publish`)
        and each snapshot adds up all of them."""
        self.models = list(models)
        self.share_dir = share_dir
        self.recent: deque[Event] = deque(maxlen=keep)
        self.started = time.time()
        self.by_model: dict[str, int] = dict.fromkeys(self.models, 0)
        self.by_status: dict[str, int] = {}
        self.fallbacks = 0
        self.total = 0
        self.spent = 0.0
        self.always_best = 0.0
        self._lock = threading.Lock()  # snapshots may run while a request finishes (thread pools)

    def add(self, event: Event, cost: float | None = None, best: float | None = None) -> None:
        with self._lock:
            self.recent.append(event)
            self.total += 1
            if event.status == 200:
                self.by_model[event.model] = self.by_model.get(event.model, 0) + 1
            key = str(event.status)
            self.by_status[key] = self.by_status.get(key, 0) + 1
            self.fallbacks += event.fallback
            if cost is not None and best is not None:
                self.spent += cost
                self.always_best += best

    def _state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": [[e.t, e.model, e.status, e.latency_s, e.score, e.fallback] for e in self.recent],
                "by_model": dict(self.by_model),
                "by_status": dict(self.by_status),
                "totals": [self.total, self.fallbacks, self.spent, self.always_best, self.started],
            }

    def publish(self) -> None:
        """This worker's window, for the other workers' snapshots (no fsync: it lives as long as the server)."""
        if self.share_dir is not None:
            atomic_write(os.path.join(self.share_dir, f"{os.getpid()}.json"), json.dumps(self._state()), durable=False)

    def _states(self) -> list[dict[str, Any]]:
        states = [self._state()]
        if self.share_dir is None:
            return states
        mine = f"{os.getpid()}.json"
        for name in os.listdir(self.share_dir):
            if name.endswith(".json") and name != mine:
                try:
                    with open(os.path.join(self.share_dir, name), encoding="utf-8") as fh:
                        states.append(json.load(fh))
                except (OSError, ValueError):
                    continue  # a worker that just went away
        return states

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        events: list[Any] = []  # [t, model, status, latency_s, score, fallback] rows of every worker
        by_model: dict[str, int] = dict.fromkeys(self.models, 0)
        by_status: dict[str, int] = {}
        total = fallbacks = 0
        spent = best = 0.0
        started = self.started
        for st in self._states():
            events.extend(st["events"])
            for k, v in st["by_model"].items():
                by_model[k] = by_model.get(k, 0) + v
            for k, v in st["by_status"].items():
                by_status[k] = by_status.get(k, 0) + v
            t, f, s, b, s0 = st["totals"]
            total, fallbacks, spent, best, started = total + t, fallbacks + f, spent + s, best + b, min(started, s0)
        # the window as columns (numpy, not a Python loop per event: this runs once a second per open page)
        events.sort(key=lambda e: e[0])
        keep = self.recent.maxlen or len(events)
        events = events[-keep:]
        t_col = np.array([e[0] for e in events], dtype=np.float64)
        model_col = np.array([e[1] for e in events], dtype=object)
        ok = np.array([e[2] == 200 for e in events], dtype=bool)
        lat_col = np.array([e[3] for e in events], dtype=np.float64)
        # requests/s per model over the last WINDOW_S whole seconds (oldest first)
        age = int(now) - t_col.astype(np.int64) if len(events) else np.zeros(0, dtype=np.int64)
        recent = ok & (age >= 0) & (age < WINDOW_S)
        series: dict[str, list[int]] = {}
        latency: dict[str, dict[str, float]] = {}
        for m in self.models:
            mine = model_col == m
            counts = np.bincount(WINDOW_S - 1 - age[recent & mine], minlength=WINDOW_S)
            series[m] = [int(c) for c in counts]
            lat = lat_col[mine & ok]
            if len(lat):
                p50, p95 = np.percentile(lat, [50, 95]) * 1000
                latency[m] = {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "n": len(lat)}
        scores = np.array([e[4] for e in events if e[4] is not None], dtype=np.float64)
        hist = np.histogram(np.clip(scores, 0, 1), bins=BINS, range=(0.0, 1.0))[0] if len(scores) else np.zeros(BINS)
        answered = sum(by_model.values())
        return {
            "uptime_s": round(now - started, 1),
            "requests": total,
            "answered": answered,
            "by_model": by_model,
            "share": {m: (by_model.get(m, 0) / answered * 100.0 if answered else 0.0) for m in self.models},
            "by_status": by_status,
            "errors": sum(v for k, v in by_status.items() if not k.startswith("2")),
            "fallbacks": fallbacks,
            "rps": {"window_s": WINDOW_S, "series": series},
            "latency": latency,
            "score_histogram": {"bins": BINS, "counts": [int(c) for c in hist]},
            "cost": {
                "spent": spent,
                "always_best": best,
                "saved": best - spent,
                "saved_ratio": (1 - spent / best) if best > 0 else None,
            },
        }
