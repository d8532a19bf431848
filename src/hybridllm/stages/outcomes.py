"""Served traffic back into training: the outcomes log a running proxy appends to (shadow pairs,
the application's own ``/v1/feedback`` scores) and its export as a routing table.

The log is JSON lines, one record per ``write(2)``, fsynced: a proxy killed with ``kill -9`` loses at
most the record being written, and a torn last line is dropped when the log is opened again or read.
Records carry the prompt only when the server logs prompts (``--log-prompts``); the export keeps
the rows that have one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hybridllm.tables.format import Row, TableError


class OutcomesLog:
    """Append-only, crash-safe JSONL of outcome records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            good = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
            if good < len(data):
                with self.path.open("r+b") as fh:
                    fh.truncate(good)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_outcomes(path: str | Path) -> list[dict[str, Any]]:
    """The log's records (a torn last line ignored); a malformed line is an error naming it."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TableError(f"{path}: {exc.strerror or exc}") from None
    out = []
    for n, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise TableError(f"{path}:{n}: not a JSON record") from None
        if (
            not isinstance(rec, dict)
            or rec.get("type") not in ("shadow", "feedback")
            or not isinstance(rec.get("id"), str)
        ):
            raise TableError(f"{path}:{n}: type: expected a shadow or feedback record with an id")
        if rec["type"] == "shadow":
            q = rec.get("q")
            if not isinstance(q, dict) or not all(_finite(v) for v in q.values()):
                raise TableError(f"{path}:{n}: q: expected each model's score, a number")
        elif not _finite(rec.get("score")):
            raise TableError(f"{path}:{n}: score: expected a finite number")
        out.append(rec)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def outcomes_table(
    records: Iterable[dict[str, Any]], models: Sequence[str] | None = None
) -> tuple[list[Row], dict[str, int]]:
    """Routing-table rows from outcome records, one per request: ``quality`` from its shadow pair
    (both answers, one judge), the application's feedback in ``meta.feedback`` (and as the served
    model's quality when there is no shadow pair). Returns (rows, counts of what was left out)."""
    by_id: dict[str, Row] = {}
    skipped = {"no_prompt": 0}
    for rec in records:
        row = by_id.setdefault(rec["id"], {"id": rec["id"], "quality": {}, "meta": {"source": []}})
        if rec.get("prompt") is not None:
            row["prompt"] = rec["prompt"]
        if rec["type"] == "shadow":
            for model, q in rec["q"].items():
                row["quality"][model] = [float(q)]
            row["meta"]["served"] = rec.get("served")
            row["meta"]["source"].append("shadow")
        else:
            row["meta"]["feedback"] = float(rec["score"])
            row["meta"]["served"] = row["meta"].get("served") or rec.get("model")
            row["meta"]["source"].append("feedback")
    rows = []
    for row in by_id.values():
        if "prompt" not in row:
            skipped["no_prompt"] += 1
            continue
        if not row["quality"] and "feedback" in row["meta"] and row["meta"].get("served"):
            row["quality"][row["meta"]["served"]] = [row["meta"]["feedback"]]
        if models is not None:
            row["quality"] = {m: q for m, q in row["quality"].items() if m in models}
        rows.append(row)
    return rows, skipped
