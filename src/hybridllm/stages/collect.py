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
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridllm.backends import Backend, SamplingParams
from hybridllm.errors import HybridLLMError
from hybridllm.fsutil import atomic_write
from hybridllm.tables.format import Row, read_table, write_table


def sample_seed(seed: int, row_id: str, model: str, k: int) -> int:
    """A per-sample seed that does not depend on scheduling or on interruptions."""
    h = hashlib.sha256(f"{seed}:{row_id}:{model}:{k}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


class JournalMismatch(HybridLLMError, ValueError):
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
        self._fh = path.open("ab", buffering=0)
        if settings is not None and self.settings is None:
            self.settings = settings
            self._write({"_settings": settings})

    def _recover(self) -> None:
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
        if good < len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good)
        self.settings, done = _parse(data[:good])
        for key, rec in done.items():
            self.done.setdefault(key, rec)

    def _write(self, *recs: dict[str, Any]) -> None:
        # one write(2) for all records: a kill -9 lands before or after it, never between the
        # samples of one batch (which must be redone together to come out the same)
        data = _encode(recs)
        if not self._still_ours():
            self._rewrite()
        fd = self._fh.fileno()
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)

    def _still_ours(self) -> bool:
        """Whether the path still names the file we append to. A `git stash`/checkout, a sync tool
        or a user can replace or delete it under a long run; appending to the orphaned inode would
        then lose every later sample at the next resume (this happened to a 6-hour run)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fh.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _rewrite(self) -> None:
        """Put the journal back at its path: settings and every sample this run knows, written to
        a temporary file, fsynced and renamed over whatever is there now (a stale copy holds a
        subset of what we know; a foreign file is kept beside it)."""
        known = set(self.done)
        if self.path.exists() and not set(_parse(self.path.read_bytes(), strict=False)[1]) <= known:
            self.path.replace(self.path.with_name(self.path.name + f".foreign-{os.getpid()}"))
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        head = [{"_settings": self.settings}] if self.settings is not None else []
        tmp.write_bytes(_encode([*head, *self.done.values()]))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        self._fh.close()
        self._fh = self.path.open("ab", buffering=0)

    def append(self, *recs: dict[str, Any]) -> None:
        self._write(*recs)
        for rec in recs:
            self.done[(rec["id"], rec["model"], int(rec["k"]))] = rec

    def close(self) -> None:
        self._fh.close()


def _encode(recs: Sequence[dict[str, Any]]) -> bytes:
    return b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in recs)


def _parse(
    data: bytes, strict: bool = True
) -> tuple[dict[str, Any] | None, dict[tuple[str, str, int], dict[str, Any]]]:
    """(settings, samples by key) of journal bytes; the first record of a key wins. ``strict``:
    a malformed line is an error (our own journal) rather than skipped (a file of unknown origin)."""
    settings, done = None, {}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if "_settings" in rec:
                settings = rec["_settings"]
                continue
            done.setdefault((rec["id"], rec["model"], int(rec["k"])), rec)
        except (ValueError, KeyError, TypeError):
            if strict:
                raise
    return settings, done


def read_journal(path: str | Path) -> tuple[dict[str, Any] | None, dict[tuple[str, str, int], dict[str, Any]]]:
    """(settings, samples) of a journal, read-only: a torn last line (a run killed mid-write, or
    one still writing) is ignored, not truncated, so a running collection can be looked at."""
    data = Path(path).read_bytes()
    return _parse(data[: data.rfind(b"\n") + 1])


def is_journal(path: str | Path) -> bool:
    with Path(path).open("rb") as fh:
        return fh.readline().startswith(b'{"_settings"')


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


def collect_settings(
    rows: Sequence[Row], backends: dict[str, Backend], samples: int, params: SamplingParams, seed: int
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (journal first line, Ray job file)."""
    return {
        "models": {name: b.identity for name, b in backends.items()},
        "samples": samples,
        "seed": seed,
        "params": {k: v for k, v in params.__dict__.items() if k != "seed"},
        "prompts_digest": hashlib.sha256(
            json.dumps([[r["id"], r["prompt"]] for r in rows], ensure_ascii=False).encode()
        ).hexdigest()[:16],
    }


class CollectionExists(HybridLLMError, ValueError):
    """The output already holds a finished collection this run would overwrite."""


def _receipt_path(output: Path) -> Path:
    return output.with_name(output.name + ".collect.json")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finished_collection(
    output: Path, settings: dict[str, Any], overwrite: bool = False, work: Path | None = None
) -> bool:
    """Whether ``output`` already holds this very collection (an identical rerun is then a no-op).

    A finished table keeps its settings beside it (``TABLE.collect.json``, with the table's digest).
    A table made with other settings, or not by ``collect`` at all, is refused unless ``overwrite``:
    a rerun with another ``--samples`` must not silently replace hours of finished work. A run
    in progress (its journal, or ``work``, the Ray engine's shard directory, present) resumes as
    before, whatever is at ``output``."""
    output = Path(output)
    work = work or output.with_name(output.name + ".journal.jsonl")
    if not output.exists() or work.exists():
        return False
    receipt = _receipt_path(output)
    try:
        done = json.loads(receipt.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = None
    if isinstance(done, dict) and done.get("table_sha256") == _file_digest(output):
        if done.get("settings") == json.loads(json.dumps(settings)):
            return True
        if overwrite:
            return False
        old = done.get("settings") or {}
        changed = sorted(k for k in set(settings) | set(old) if settings.get(k) != old.get(k))
        raise CollectionExists(
            f"{output}: already holds a finished collection made with other settings ({', '.join(changed)} "
            "differ); pass --overwrite to replace it, or choose another --output"
        )
    if overwrite:
        return False
    raise CollectionExists(
        f"{output}: exists and is not this collection's finished table (no matching {receipt.name}); "
        "pass --overwrite to replace it, or choose another --output"
    )


def mark_finished(output: Path, settings: dict[str, Any]) -> None:
    """Record the settings of the table just written at ``output``."""
    body = {"settings": settings, "table_sha256": _file_digest(Path(output))}
    atomic_write(_receipt_path(Path(output)), json.dumps(body, ensure_ascii=False, indent=1) + "\n")


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
