"""Routing tables: the one data format every pipeline stage reads and writes (docs/tables.md).

A table is a list of plain dicts, one per query. Plain dicts (not classes) keep the stage functions
pure and batch-oriented, so they run unchanged over Ray Data batches or pandas frames later.
Validation errors always name the file, the line and the field: a user with 100k rows must be able
to find the one broken row without bisecting the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridllm.errors import HybridLLMError, UsageError

Row = dict[str, Any]

_KNOWN_FIELDS = {"id", "prompt", "reference", "responses", "quality", "meta"}


class TableError(HybridLLMError, ValueError):
    """A routing table is malformed. The message is one line: ``file:line: field: problem``."""


def _where(path: str | Path | None, line: int | None) -> str:
    if path is None:
        return f"row {line}" if line is not None else "row"
    return f"{path}:{line}" if line is not None else str(path)


def validate_row(row: Any, path: str | Path | None = None, line: int | None = None) -> Row:
    """Check one row against the contract and return it normalised (quality values as floats).

    Raises TableError naming the location and the offending field.
    """
    where = _where(path, line)
    if not isinstance(row, dict):
        raise TableError(f"{where}: row: expected a JSON object, got {type(row).__name__}")
    rid = row.get("id")
    if rid is None or rid == "":
        raise TableError(f"{where}: id: missing")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise TableError(f"{where}: id: expected a string, got {type(rid).__name__}")
    prompt = row.get("prompt")
    if prompt is None:
        raise TableError(f"{where}: prompt: missing")
    if isinstance(prompt, list):
        if not prompt:
            raise TableError(f"{where}: prompt: empty message list")
        for i, msg in enumerate(prompt):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise TableError(f"{where}: prompt[{i}]: expected a message object with 'role' and 'content'")
    elif not isinstance(prompt, str):
        raise TableError(f"{where}: prompt: expected a string or a list of messages, got {type(prompt).__name__}")
    ref = row.get("reference")
    if ref is not None and not isinstance(ref, str):
        if isinstance(ref, (int, float)) and not isinstance(ref, bool):
            ref = str(ref)
        else:
            raise TableError(f"{where}: reference: expected a string, got {type(ref).__name__}")
    out: Row = {"id": str(rid), "prompt": prompt}
    if ref is not None:
        out["reference"] = ref
    responses = row.get("responses")
    if responses is not None:
        if not isinstance(responses, dict):
            raise TableError(f"{where}: responses: expected an object of model -> list of strings")
        for model, items in responses.items():
            if not isinstance(items, list):
                raise TableError(f"{where}: responses.{model}: expected a list of strings")
            for j, item in enumerate(items):
                if not isinstance(item, str):
                    raise TableError(f"{where}: responses.{model}[{j}]: expected a string, got {type(item).__name__}")
        out["responses"] = responses
    quality = row.get("quality")
    if quality is not None:
        if not isinstance(quality, dict):
            raise TableError(f"{where}: quality: expected an object of model -> list of numbers")
        clean: dict[str, list[float]] = {}
        for model, items in quality.items():
            if not isinstance(items, list):
                raise TableError(f"{where}: quality.{model}: expected a list of numbers")
            vals: list[float] = []
            for j, v in enumerate(items):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise TableError(f"{where}: quality.{model}[{j}]: expected a finite number, got {v!r}")
                vals.append(float(v))
            if responses is not None and model in responses and len(responses[model]) != len(vals):
                raise TableError(f"{where}: quality.{model}: {len(vals)} values for {len(responses[model])} responses")
            clean[model] = vals
        out["quality"] = clean
    meta = row.get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            raise TableError(f"{where}: meta: expected an object")
        out["meta"] = meta
    for key, value in row.items():
        if key not in _KNOWN_FIELDS:
            out[key] = value  # unknown top-level fields are carried through, never dropped
    return out


def iter_jsonl(path: str | Path) -> Iterator[Row]:
    """Stream validated rows from a JSONL file, checking ids for duplicates as it goes."""
    path = Path(path)
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TableError(
                    f"{path}:{lineno}: row: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                ) from None
            if not text.strip():
                continue
            obj = parse_json_line(text, f"{path}:{lineno}")
            row = validate_row(obj, path, lineno)
            if row["id"] in seen:
                raise TableError(f"{path}:{lineno}: id: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            seen[row["id"]] = lineno
            yield row


def parse_json_line(text: str, where: str) -> Any:
    """One JSON value, every failure as a TableError naming ``where``: malformed JSON, nesting too
    deep for the parser, integers too long to convert, strings with lone surrogates."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"{where}: row: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise TableError(f"{where}: row: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise TableError(f"{where}: row: unreadable JSON value ({str(exc).split(';')[0][:100]})") from None
    path = lone_surrogate(obj) if "\\u" in text else None  # strict UTF-8 text has none unescaped
    if path is not None:
        raise TableError(f"{where}: {path or 'row'}: string holds a lone surrogate (\\ud800-\\udfff)")
    return obj


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The field path of the first string with an unpaired UTF-16 surrogate (which cannot be
    written as UTF-8), or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return p
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((k, p))
                stack.append((x, f"{p}.{k}" if p else str(k)))
        elif isinstance(v, list):
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v))
    return None


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(table.to_pylist(), start=1):
        row: Row = {}
        for key, value in rec.items():
            if value is None:
                continue
            if key in ("responses", "quality") and isinstance(value, list):
                value = dict(value)  # pyarrow returns maps as lists of (key, value) pairs
            if key in ("meta",) or (key == "prompt" and isinstance(value, str) and value.startswith("\x00json:")):
                value = json.loads(value[6:] if value.startswith("\x00json:") else value)
            row[key] = value
        row = validate_row(row, path, i)
        if row["id"] in seen:
            raise TableError(f"{path}:{i}: id: duplicate id {row['id']!r} (first on row {seen[row['id']]})")
        seen[row["id"]] = i
        rows.append(row)
    return rows


def read_table(path: str | Path) -> list[Row]:
    """Read a routing table from ``.jsonl`` (or ``.json`` lines) or ``.parquet``."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: file not found")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    return list(iter_jsonl(path))


def write_table(rows: Iterable[Row], path: str | Path) -> Path:
    """Write rows atomically (temp file + rename) so a crash never leaves half a table behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        recs = []
        for r in rows:
            rec = dict(r)
            if isinstance(rec.get("prompt"), list):
                rec["prompt"] = "\x00json:" + json.dumps(rec["prompt"], ensure_ascii=False)
            if "meta" in rec:
                rec["meta"] = json.dumps(rec["meta"], ensure_ascii=False)
            recs.append(rec)
        schema_fields = [pa.field("id", pa.string()), pa.field("prompt", pa.string())]
        if any("reference" in r for r in recs):
            schema_fields.append(pa.field("reference", pa.string()))
        if any("responses" in r for r in recs):
            schema_fields.append(pa.field("responses", pa.map_(pa.string(), pa.list_(pa.string()))))
        if any("quality" in r for r in recs):
            schema_fields.append(pa.field("quality", pa.map_(pa.string(), pa.list_(pa.float64()))))
        if any("meta" in r for r in recs):
            schema_fields.append(pa.field("meta", pa.string()))
        schema = pa.schema(schema_fields)
        cols = {f.name: [r.get(f.name) for r in recs] for f in schema}
        for name in ("responses", "quality"):
            if name in cols:
                cols[name] = [list(v.items()) if v is not None else None for v in cols[name]]
        pq.write_table(pa.table(cols, schema=schema), tmp)
    else:
        with tmp.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class PairRows:
    """Rows usable for one (small, large) pair, and how many were skipped because a model was missing."""

    rows: list[Row]
    skipped: int
    small: str
    large: str


def models_in(rows: Sequence[Row]) -> list[str]:
    """All model names that have quality values somewhere in the table, in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        for m in r.get("quality", {}):
            seen.setdefault(m, None)
    return list(seen)


def select_pair(rows: Sequence[Row], small: str, large: str) -> PairRows:
    """Keep rows that have at least one quality sample for both models; count the rest."""
    if small == large:
        raise TableError(f"small and large model are the same ({small!r})")
    kept = [r for r in rows if r.get("quality", {}).get(small) and r.get("quality", {}).get(large)]
    if not kept:
        available = ", ".join(models_in(rows)) or "none"
        raise TableError(f"no row has quality for both {small!r} and {large!r} (models in table: {available})")
    return PairRows(kept, len(rows) - len(kept), small, large)


def prompt_text(prompt: str | list[dict[str, Any]], turns: str = "all") -> str:
    """The text the router reads. Chat prompts use user turns: the last one, or all of them joined."""
    if isinstance(prompt, str):
        return prompt
    users = [_content_text(m.get("content")) for m in prompt if m.get("role") == "user"]
    if not users:
        users = [_content_text(m.get("content")) for m in prompt]
    if turns == "last":
        return users[-1] if users else ""
    return "\n".join(users)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def hash_fraction(row_id: str, salt: str = "hybridllm") -> float:
    """A stable number in [0, 1) per id: splits by hashed id survive reordering and appends."""
    digest = hashlib.sha256(f"{salt}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_rows(rows: Sequence[Row], fractions: Sequence[float], salt: str = "hybridllm") -> list[list[Row]]:
    """Deterministic split by hashed id into len(fractions) parts (fractions must sum to 1)."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise UsageError(f"split fractions must sum to 1, got {list(fractions)}")
    edges = []
    acc = 0.0
    for f in fractions:
        acc += f
        edges.append(acc)
    parts: list[list[Row]] = [[] for _ in fractions]
    for r in rows:
        h = hash_fraction(r["id"], salt)
        for i, e in enumerate(edges):
            if h < e or i == len(edges) - 1:
                parts[i].append(r)
                break
    return parts


def table_digest(rows: Sequence[Row], small: str, large: str) -> str:
    """Digest of what training saw (ids, prompts, the pair's qualities): recorded in the artifact."""
    h = hashlib.sha256()
    for r in rows:
        q = r.get("quality", {})
        h.update(json.dumps([r["id"], r["prompt"], q.get(small), q.get(large)], ensure_ascii=False).encode())
    return h.hexdigest()
