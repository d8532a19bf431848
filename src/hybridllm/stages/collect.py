"""Collecting responses: prompts → routing table with sampled responses of each model.

Crash safety: every finished sample is appended to a journal (``TABLE.journal.jsonl``) as one line,
flushed and fsynced before the next is recorded. After ``kill -9`` at any moment the journal holds
whole lines plus at most one torn tail, which the next run cuts off; samples already journaled are
never requested again, and each sample's seed depends only on (seed, id, model, index), so the
finished table is the same whether or not the run was interrupted. The table is written atomically
at the end, its settings recorded beside it (``TABLE.collect.json``), and the journal removed: an
identical rerun is then a no-op, and a rerun with other settings is refused unless told to overwrite.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridllm.backends import Backend, SamplingParams
from hybridllm.tables.format import Row, read_table, write_table

from .journal import Journal, collect_settings, finished_collection, mark_finished


def sample_seed(seed: int, row_id: str, model: str, k: int) -> int:
    """A per-sample seed that does not depend on scheduling or on interruptions."""
    h = hashlib.sha256(f"{seed}:{row_id}:{model}:{k}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


@dataclass
class CollectStats:
    requested: int = 0
    resumed: int = 0
    completion_tokens: int = 0


def format_prompt(row: Row, template: str | None = None, system: str | None = None) -> Row:
    """The row as sent to the models: a string prompt wrapped in ``template`` (``{prompt}`` marks
    where it goes), then, with ``system``, a chat of a system turn and the user turn. A system turn
    of one's own also replaces a chat template's default one (Qwen's costs 24 tokens per prompt),
    and being the same for every prompt it is evaluated once per batch by the batched decoder."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if template is not None:
            prompt = template.replace("{prompt}", prompt)
        if system is not None:
            prompt = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    elif system is not None and not (prompt and prompt[0].get("role") == "system"):
        prompt = [{"role": "system", "content": system}, *prompt]
    return row if prompt is row["prompt"] else dict(row, prompt=prompt)


async def sample_groups(
    rows: Sequence[Row],
    backends: dict[str, Backend],
    samples: int,
    params: SamplingParams,
    seed: int,
    batch: int,
    done: dict[tuple[str, str, int], dict[str, Any]],
    sink: Callable[[list[dict[str, Any]]], None],
) -> None:
    """Draw every (row, model, k) sample not in ``done``; ``sink`` gets each finished decode group's
    records. The backends must already be entered."""

    async def run(group: list[tuple[Row, str, int]]) -> None:
        model = group[0][1]
        backend = backends[model]
        items = [
            (r["prompt"], SamplingParams(**{**params.__dict__, "seed": sample_seed(seed, r["id"], m, k)}))
            for r, m, k in group
        ]
        if batch > 1 and backend.batched:
            got = await backend.generate_many(items)
        else:
            got = [await backend.generate(*items[0])]
        recs = []
        for (row, _, k), s in zip(group, got, strict=True):
            rec = {
                "id": row["id"],
                "model": model,
                "k": k,
                "text": s.text,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "latency_s": round(s.latency_s, 4),
            }
            if len(got) > 1:
                rec["batch"] = len(got)
            recs.append(rec)
        sink(recs)

    await asyncio.gather(*(run(g) for g in _groups(rows, backends, samples, batch, done)))


async def sample_rows(
    rows: Sequence[Row],
    backends: dict[str, Backend],
    samples: int,
    params: SamplingParams,
    seed: int = 0,
    keep: Sequence[Row] | None = None,
    batch: int = 1,
) -> tuple[list[Row], list[dict[str, Any]]]:
    """The collect stage as a pure batch function (rows in, rows out, nothing on disk): what a Ray
    worker runs on one shard. Returns the table rows and the per-sample records (usage, latency)."""
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    recs: list[dict[str, Any]] = []

    def sink(group: list[dict[str, Any]]) -> None:
        recs.extend(group)
        for r in group:
            done[(r["id"], r["model"], r["k"])] = r

    async with _enter_all(backends):
        await sample_groups(rows, backends, samples, params, seed, batch, done, sink)
    return assemble(keep if keep is not None else rows, done, list(backends), samples), recs


async def collect_async(
    rows: Sequence[Row],
    backends: dict[str, Backend],
    output: Path,
    samples: int,
    params: SamplingParams,
    seed: int = 0,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    keep: Sequence[Row] | None = None,
    batch: int = 1,
    on_start: Callable[[CollectStats], None] | None = None,
    overwrite: bool = False,
) -> tuple[list[Row], CollectStats]:
    """Sample every (row, model, k) not yet journaled. ``keep``: the rows to write into the table (the
    originals, when ``rows`` carry templated prompts), same order and ids as ``rows``. ``batch``: how
    many samples a local backend decodes together (see :mod:`hybridllm.batched`); HTTP backends take
    one request per sample and get their parallelism from their concurrency limit."""
    journal_path = output.with_name(output.name + ".journal.jsonl")
    settings = collect_settings(rows, backends, samples, params, seed)
    if finished_collection(output, settings, overwrite):
        table = read_table(output)
        stats = CollectStats(resumed=len(rows) * len(backends) * samples)
        if on_start is not None:
            on_start(stats)
        return table, stats
    output.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(journal_path, settings)
    stats = CollectStats(resumed=len(journal.done))
    if on_start is not None:  # e.g. a progress bar that starts at the samples already journaled
        on_start(stats)

    def sink(recs: list[dict[str, Any]]) -> None:
        journal.append(*recs)
        for rec in recs:
            stats.requested += 1
            stats.completion_tokens += rec["completion_tokens"] or 0
            if on_sample is not None:
                on_sample(rec)

    try:
        async with _enter_all(backends):
            await sample_groups(rows, backends, samples, params, seed, batch, journal.done, sink)
    finally:
        journal.close()
    out_rows = assemble(keep if keep is not None else rows, journal.done, list(backends), samples)
    write_table(out_rows, output)
    mark_finished(output, settings)
    journal_path.unlink()
    return out_rows, stats


def _groups(
    rows: Sequence[Row],
    backends: dict[str, Backend],
    samples: int,
    batch: int,
    done: dict[tuple[str, str, int], dict[str, Any]],
) -> list[list[tuple[Row, str, int]]]:
    """The unfinished samples, cut into decode groups. Groups are cut from the full list of samples,
    not from what is left, so their boundaries do not move between runs; with group-atomic journal
    writes, a resumed run decodes each remaining sample in the same company (hence to the same text)
    as an uninterrupted one."""
    out: list[tuple[int, int, list[tuple[Row, str, int]]]] = []
    every = [(i, r, k) for i, r in enumerate(rows) for k in range(samples)]
    for mi, (m, b) in enumerate(backends.items()):
        size = batch if batch > 1 and b.batched else 1
        for start in range(0, len(every), size):
            g = [(r, m, k) for _, r, k in every[start : start + size] if (r["id"], m, k) not in done]
            if g:
                out.append((every[start][0], mi, g))
    out.sort(key=lambda x: (x[0], x[1]))  # prompt order, models interleaved: a partial run is usable
    return [g for _, _, g in out]


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
