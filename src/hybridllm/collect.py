"""Collecting responses: prompts → routing table with sampled responses of each model.

Crash safety: every finished sample is appended to a journal (``TABLE.journal.jsonl``) as one line,
flushed and fsynced before the next is recorded. After ``kill -9`` at any moment the journal holds
whole lines plus at most one torn tail, which the next run cuts off; samples already journaled are
never requested again, and each sample's seed depends only on (seed, id, model, index), so the
finished table is the same whether or not the run was interrupted. The table is written atomically
at the end and the journal removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .backends import Sample, SamplingParams
from .table import Row, write_table


class Backend(Protocol):
    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def generate(self, prompt: str | list[dict[str, Any]], params: SamplingParams) -> Sample: ...


def sample_seed(seed: int, row_id: str, model: str, k: int) -> int:
    """A per-sample seed that does not depend on scheduling or on interruptions."""
    h = hashlib.sha256(f"{seed}:{row_id}:{model}:{k}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


class JournalMismatch(ValueError):
    """A journal from a run with other settings: resuming it would mix samples of two experiments."""


class Journal:
    """Append-only, fsynced JSONL of finished samples keyed by (id, model, k). The first line records
    the run's settings; resuming with different settings is refused."""

    def __init__(self, path: Path, settings: dict[str, Any] | None = None) -> None:
        self.path = path
        self.done: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.settings: dict[str, Any] | None = None
        if path.exists():
            self._recover()
        if settings is not None and self.settings is not None and self.settings != settings:
            changed = sorted(k for k in set(settings) | set(self.settings) if settings.get(k) != self.settings.get(k))
            raise JournalMismatch(
                f"{path}: written by a run with other settings ({', '.join(changed)} differ); "
                "rerun the original command, or delete the journal to start over"
            )
        self._fh = path.open("ab")
        if settings is not None and self.settings is None:
            self.settings = settings
            self._write({"_settings": settings})

    def _recover(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
        if good < len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good)
        for line in data[:good].splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "_settings" in rec:
                self.settings = rec["_settings"]
                continue
            self.done.setdefault((rec["id"], rec["model"], int(rec["k"])), rec)

    def _write(self, rec: dict[str, Any]) -> None:
        self._fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, rec: dict[str, Any]) -> None:
        self._write(rec)
        self.done[(rec["id"], rec["model"], int(rec["k"]))] = rec

    def close(self) -> None:
        self._fh.close()


@dataclass
class CollectStats:
    requested: int = 0
    resumed: int = 0
    completion_tokens: int = 0


async def collect_async(
    rows: Sequence[Row],
    backends: dict[str, Backend],
    output: Path,
    samples: int,
    params: SamplingParams,
    seed: int = 0,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    keep: Sequence[Row] | None = None,
) -> tuple[list[Row], CollectStats]:
    """Sample every (row, model, k) not yet journaled. ``keep``: the rows to write into the table (the
    originals, when ``rows`` carry templated prompts), same order and ids as ``rows``."""
    journal_path = output.with_name(output.name + ".journal.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "models": {
            name: getattr(b, "spec", None) or f"{getattr(b, 'model', '')}@{getattr(b, 'base_url', '')}"
            for name, b in backends.items()
        },
        "samples": samples,
        "seed": seed,
        "params": {k: v for k, v in params.__dict__.items() if k != "seed"},
        "prompts_digest": hashlib.sha256(
            json.dumps([[r["id"], r["prompt"]] for r in rows], ensure_ascii=False).encode()
        ).hexdigest()[:16],
    }
    journal = Journal(journal_path, settings)
    stats = CollectStats(resumed=len(journal.done))
    todo = [(r, m, k) for r in rows for m in backends for k in range(samples) if (r["id"], m, k) not in journal.done]
    try:
        async with _enter_all(backends):

            async def one(row: Row, model: str, k: int) -> None:
                p = SamplingParams(**{**params.__dict__, "seed": sample_seed(seed, row["id"], model, k)})
                s = await backends[model].generate(row["prompt"], p)
                rec = {
                    "id": row["id"],
                    "model": model,
                    "k": k,
                    "text": s.text,
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "latency_s": round(s.latency_s, 4),
                }
                journal.append(rec)
                stats.requested += 1
                stats.completion_tokens += s.completion_tokens or 0
                if on_sample is not None:
                    on_sample(rec)

            await asyncio.gather(*(one(r, m, k) for r, m, k in todo))
    finally:
        journal.close()
    out_rows = assemble(keep if keep is not None else rows, journal.done, list(backends), samples)
    write_table(out_rows, output)
    journal_path.unlink()
    return out_rows, stats


def assemble(
    rows: Sequence[Row], done: dict[tuple[str, str, int], dict[str, Any]], models: Sequence[str], samples: int
) -> list[Row]:
    """Rows with ``responses[model]`` in sample order and usage in ``meta.collect`` (no timings, so
    the table's content does not depend on how fast or how often the run went)."""
    out = []
    for r in rows:
        new = dict(r)
        responses = dict(r.get("responses", {}))
        tokens: dict[str, list[int | None]] = {}
        for m in models:
            recs = [done[(r["id"], m, k)] for k in range(samples)]
            responses[m] = [x["text"] for x in recs]
            tokens[m] = [x.get("completion_tokens") for x in recs]
        new["responses"] = responses
        new["meta"] = {**r.get("meta", {}), "completion_tokens": tokens}
        out.append(new)
    return out


class _enter_all:
    def __init__(self, backends: dict[str, Backend]) -> None:
        self.backends = list(backends.values())

    async def __aenter__(self) -> None:
        for b in self.backends:
            await b.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        for b in self.backends:
            await b.__aexit__(*exc)
