"""The conversations ``benchmarks/sessions.py`` routes: MT-Bench's two-turn conversations (the shared
table) and agent-loop traces built from the Berkeley Function Calling Leaderboard's multi-turn data.

BFCL (``bfcl-eval==2026.3.23`` on PyPI, Apache-2.0, Sky Computing Lab, UC Berkeley): its wheel holds
``BFCL_v4_multi_turn_base.json`` (200 conversations of 1 to 7 user turns over tool APIs: a file
system, vehicle control, trading, travel, messaging, ...), the ground-truth call sequence of every
turn, and each API's function documents. A trace here is the conversation an agent would send: per
user turn, one assistant message per ground-truth call (sequential calls), each answered by a tool
message, then a short final answer. The data holds no execution results, so a tool message is a
placeholder shaped by the function's documented response (its field names, empty values): the
traces are built at benchmark time from the downloaded wheel; nothing of BFCL is stored here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BFCL = "bfcl-eval==2026.3.23"
WHEEL = "bfcl_eval-2026.3.23-py3-none-any.whl"
_DATA = "bfcl_eval/data/"
#: BFCL's API classes and the function-document file of each
_DOCS = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
_EMPTY = {"string": "", "integer": 0, "float": 0.0, "number": 0, "boolean": False, "array": [], "dict": {}}


def mt_bench_conversations(path: Path) -> list[dict[str, Any]]:
    """The MT-Bench rows (``id``, ``category``, ``turns``, ``responses[m][k]``, ``turn_quality[m][k]``)."""
    return [json.loads(line) for line in path.open() if line.strip()]


def bfcl_wheel(directory: Path) -> Path:
    """The BFCL wheel in ``directory``, downloaded there by pip (no dependencies) when missing."""
    wheel = directory / WHEEL
    if not wheel.exists():
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", BFCL, "-d", str(directory), "-q"]
        subprocess.run(cmd, check=True)
    return wheel


@dataclass
class Step:
    """One model call of a trace: the messages sent (a prefix of the conversation), what the model
    answered (an assistant message), and whether the call continues a tool loop."""

    messages: list[dict[str, Any]]
    answer: dict[str, Any]
    tool_loop: bool


@dataclass
class Trace:
    id: str
    tools: list[dict[str, Any]]
    steps: list[Step] = field(default_factory=list)


def _functions(z: zipfile.ZipFile, cls: str) -> list[dict[str, Any]]:
    raw = z.read(f"{_DATA}multi_turn_func_doc/{_DOCS[cls]}.json").decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _call(text: str, docs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``mv(source='a', destination='b')`` → ("mv", {"source": "a", "destination": "b"})."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a call: {text[:80]}")
    name = node.func.id
    params = list(docs.get(name, {}).get("parameters", {}).get("properties", {}))
    args = {params[i] if i < len(params) else f"arg{i}": ast.literal_eval(a) for i, a in enumerate(node.args)}
    args.update({k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg})
    return name, args


def _result(doc: dict[str, Any] | None) -> str:
    props = (doc or {}).get("response", {}).get("properties", {}) or {"result": {"type": "string"}}
    return json.dumps({k: _EMPTY.get(v.get("type", "string"), "") for k, v in props.items()})


def bfcl_traces(wheel: Path, limit: int | None = None) -> Iterator[Trace]:
    """The agent-loop traces of BFCL's multi-turn base category (``limit``: the first that many)."""
    with zipfile.ZipFile(wheel) as z:
        questions = [json.loads(x) for x in z.read(f"{_DATA}BFCL_v4_multi_turn_base.json").decode().splitlines() if x]
        truth = z.read(f"{_DATA}possible_answer/BFCL_v4_multi_turn_base.json").decode()
        answers = {a["id"]: a["ground_truth"] for a in map(json.loads, truth.splitlines())}
        for q in questions[:limit]:
            funcs = [f for cls in q["involved_classes"] for f in _functions(z, cls)]
            docs = {f["name"]: f for f in funcs}
            keep = ("name", "description", "parameters")
            tools = [{"type": "function", "function": {k: f[k] for k in keep}} for f in funcs]
            trace = Trace(q["id"], tools)
            history: list[dict[str, Any]] = []
            n = 0
            for turn, calls in zip(q["question"], answers[q["id"]], strict=True):
                history += turn
                loop = False
                for text in calls:
                    name, args = _call(text, docs)
                    n += 1
                    cid = f"call_{n}"
                    fn = {"name": name, "arguments": json.dumps(args)}
                    call = {"id": cid, "type": "function", "function": fn}
                    ask = {"role": "assistant", "content": None, "tool_calls": [call]}
                    trace.steps.append(Step(list(history), ask, loop))
                    history += [ask, {"role": "tool", "tool_call_id": cid, "content": _result(docs.get(name))}]
                    loop = True
                done = {"role": "assistant", "content": "Done." if calls else "Nothing to do."}
                trace.steps.append(Step(list(history), done, loop))
                history.append(done)
            yield trace
