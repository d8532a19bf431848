"""The dashboard's traffic window: what /dashboard/data summarises, checked against plain counting."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hybridllm.serve.traffic import WINDOW_S, Event, TrafficWindow


def test_snapshot_counts_like_a_plain_loop(tmp_path):
    rng = random.Random(3)
    now = 1_800_000_000.5
    live = TrafficWindow(["a", "b"])
    for _ in range(3000):
        status = rng.choice([200, 200, 200, 502, 400])
        score = rng.choice([None, rng.random()])
        live.add(Event(now - rng.random() * 90, rng.choice("ab"), status, rng.random() / 50, score, False), 0.1, 0.3)
    snap = live.snapshot(now)
    events = list(live.recent)
    for m in "ab":
        plain = [0] * WINDOW_S
        for e in events:
            age = int(now) - int(e.t)
            if 0 <= age < WINDOW_S and e.status == 200 and e.model == m:
                plain[WINDOW_S - 1 - age] += 1
        assert snap["rps"]["series"][m] == plain
        lat = [e.latency_s for e in events if e.model == m and e.status == 200]
        assert snap["latency"][m]["p50_ms"] == pytest.approx(np.percentile(lat, 50) * 1000, abs=0.01)
    assert sum(snap["score_histogram"]["counts"]) == sum(e.score is not None for e in events)
    assert snap["requests"] == 3000 and snap["answered"] == sum(e.status == 200 for e in events)
    assert snap["cost"]["saved_ratio"] == pytest.approx(1 - 0.1 / 0.3)


def test_workers_windows_add_up(tmp_path):
    """Two workers' windows published to one directory: each one's snapshot counts both."""
    import os

    share = tmp_path / "live"
    share.mkdir()
    mine = TrafficWindow(["a"], share_dir=str(share))
    mine.add(Event(100.0, "a", 200, 0.01, 0.5, False))
    other = {"events": [[100.0, "a", 200, 0.02, 0.7, True]], "by_model": {"a": 1}, "by_status": {"200": 1},
             "totals": [1, 1, 0.0, 0.0, 50.0]}  # fmt: skip
    (share / f"{os.getpid() + 1}.json").write_text(__import__("json").dumps(other))
    snap = mine.snapshot(now=101.0)
    assert snap["requests"] == 2 and snap["fallbacks"] == 1 and snap["by_model"]["a"] == 2
    assert sum(snap["rps"]["series"]["a"]) == 2 and snap["uptime_s"] == pytest.approx(51.0)
