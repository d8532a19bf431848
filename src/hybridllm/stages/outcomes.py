"""Served traffic back into training: the outcomes log a running proxy appends to (shadow pairs,
the application's own ``/v1/feedback`` scores) and its export as a routing table.

The log is JSON lines, one record per ``write(2)``, fsynced: a proxy killed with ``kill -9`` loses at
most the record being written, and a torn last line is dropped when the log is opened again or read.
Records point at their request: a ``request`` record (the model, and the prompt when the server logs
prompts, ``--log-prompts``) is written once per request id, with the first outcome record for it;
``shadow`` and ``feedback`` records carry only the id (older logs, whose outcome records carry the
prompt themselves, read the same). The export joins them and keeps the rows that have a prompt a
table can hold (:func:`hybridllm.tables.chat.table_prompt`), counting the others by reason.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hybridllm.tables.chat import REASONS, table_prompt
from hybridllm.tables.format import Row, TableError

#: the record types of an outcomes log
TYPES = ("request", "shadow", "feedback")


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

    def append(self, record: dict[str, Any] | str, *more: dict[str, Any] | str) -> None:
        """Append records (a dict, or one already JSON text) in one ``write(2)``: a request record
        and its first outcome land together."""
        lines = (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in (record, *more))
        data = "".join(line + "\n" for line in lines).encode("utf-8")
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
        if not isinstance(rec, dict) or rec.get("type") not in TYPES or not isinstance(rec.get("id"), str):
            raise TableError(f"{path}:{n}: type: expected a request, shadow or feedback record with an id")
        if rec["type"] == "shadow":
            q = rec.get("q")
            if not isinstance(q, dict) or not all(_finite(v) for v in q.values()):
                raise TableError(f"{path}:{n}: q: expected each model's score, a number")
        elif rec["type"] == "feedback" and not _finite(rec.get("score")):
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
    model's quality when there is no shadow pair; the first feedback of an id counts, as the server
    keeps only the first). Returns (rows, counts of the requests left out, by reason:
    :data:`hybridllm.tables.chat.REASONS`, ``no_outcome``; feedback records with a score outside
    [0, 1], which an older server accepted, in ``score_out_of_range``)."""
    by_id: dict[str, Row] = {}
    skipped = dict.fromkeys((*REASONS, "no_outcome", "score_out_of_range"), 0)
    for rec in records:
        row = by_id.setdefault(rec["id"], {"id": rec["id"], "quality": {}, "meta": {"source": []}})
        if rec.get("prompt") is not None:
            row["prompt"] = rec["prompt"]
        if rec["type"] == "request":
            row["meta"]["served"] = row["meta"].get("served") or rec.get("model")
        elif rec["type"] == "feedback" and "feedback" in row["meta"]:
            continue
        elif rec["type"] == "feedback" and not 0.0 <= rec["score"] <= 1.0:  # an older server took any number
            skipped["score_out_of_range"] += 1
        elif rec["type"] == "shadow":
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
        if not row["meta"]["source"]:
            skipped["no_outcome"] += 1
            continue
        prompt, why = table_prompt(row.get("prompt"))
        if why is not None:
            skipped[why] += 1
            continue
        row["prompt"] = prompt
        if not row["quality"] and "feedback" in row["meta"] and row["meta"].get("served"):
            row["quality"][row["meta"]["served"]] = [row["meta"]["feedback"]]
        if models is not None:
            row["quality"] = {m: q for m, q in row["quality"].items() if m in models}
        rows.append(row)
    return rows, skipped
