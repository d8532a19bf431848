"""Markdown pieces shared by the pages benchmarks/report.py generates."""

from __future__ import annotations

from typing import Any


def table(head: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align``: one letter per column, ``l`` left, anything else right (default:
    the first column left, the rest right)."""
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
