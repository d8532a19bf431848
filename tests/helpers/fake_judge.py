"""What a judge under hybridllm's judge protocol (hybridllm.stages.judge) reads and writes, for the
fake judges of the tests: the graded texts come in ``<data-NONCE name="...">`` blocks, and the
verdict is one line ``VERDICT-NONCE: N`` with the nonce read from the judge's own instructions."""

from __future__ import annotations

import re

_INSTRUCTION = re.compile(r"^VERDICT-([0-9a-f]{16}): N$", re.MULTILINE)


def nonce(prompt: str) -> str:
    """This call's nonce, from the verdict instruction at the end of the judge's prompt."""
    found = _INSTRUCTION.findall(prompt)
    if not found:
        raise AssertionError(f"no verdict instruction in the judge prompt: {prompt[-300:]!r}")
    return str(found[-1])


def graded(prompt: str, name: str) -> str:
    """The text of the prompt's ``name`` block (prompt, response or reference)."""
    n = nonce(prompt)
    m = re.search(rf'<data-{n} name="{name}">\n(.*?)\n</data-{n}>', prompt, flags=re.DOTALL)
    if m is None:
        raise AssertionError(f"no {name} block in the judge prompt")
    return m.group(1)


def verdict(prompt: str, rating: float) -> str:
    """An honest judge's reply in the protocol."""
    return f"VERDICT-{nonce(prompt)}: {rating:g}"
