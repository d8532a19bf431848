"""What a collection keeps on disk: the crash-safe journal of finished samples (appended, fsynced, read
back on resume) and the receipt of a finished table (its settings and digest, so an identical rerun
is a no-op and a different one is refused)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybridllm.backends import Backend, SamplingParams
from hybridllm.errors import HybridLLMError
from hybridllm.fsutil import atomic_write
from hybridllm.tables.format import Row


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
    settings: dict[str, Any] | None = None
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
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


def stopped_at(output: Path, n_rows: int, total: int) -> str:
    """Where an interrupted collection into ``output`` stopped, read from its journal (what a rerun
    of the same command resumes from)."""
    journal = output.with_name(output.name + ".journal.jsonl")
    if not journal.exists():
        return f"collect stopped before its first sample; nothing to resume (0 of {total} samples)"
    done = read_journal(journal)[1]
    per_row: dict[str, int] = {}
    for row_id, _, _ in done:
        per_row[row_id] = per_row.get(row_id, 0) + 1
    complete = sum(1 for n in per_row.values() if n == total // max(n_rows, 1))
    return (
        f"collect stopped at {len(done)} of {total} samples ({complete} of {n_rows} rows complete), kept in "
        f"{journal}; rerun the same command to resume"
    )


def is_journal(path: str | Path) -> bool:
    with Path(path).open("rb") as fh:
        return fh.readline().startswith(b'{"_settings"')


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
