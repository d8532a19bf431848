"""docs/guide.md run as written: every command of its bash blocks, in order, against two
OpenAI-protocol upstreams on 127.0.0.1 standing in for the guide's endpoints (the only change to the
commands is those two base URLs), on real GSM8K questions. Checks that the guide calibrates on
validation and reads test once, at the end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

import httpx
import pytest

from .conftest import REPO, SHARED
from .helpers.fake_judge import graded, verdict
from .helpers.fake_openai import FakeOpenAI
from .helpers.net import free_port
from .helpers.procs import running_serve

pytestmark = pytest.mark.slow  # every command of the guide, in subprocesses

SMALL_URL = "http://10.0.0.5:8000/v1"
LARGE_URL = "https://api.openai.com/v1"


def guide_commands() -> list[str]:
    """Each `hybridllm ...` command of the guide's bash blocks, continuation lines joined and
    trailing comments dropped."""
    text = (REPO / "docs/guide.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("hybridllm "):
                out.append(re.sub(r"\s+", " ", line))
    return out


def test_the_guide_reads_test_once_and_calibrates_on_validation():
    cmds = guide_commands()
    uses_test = [c for c in cmds if "test.jsonl" in c]
    assert len(uses_test) == 1 and uses_test[0].startswith("hybridllm evaluate"), uses_test
    assert any(c.startswith("hybridllm calibrate") and "val.jsonl" in c for c in cmds)
    assert any(c.startswith("hybridllm train") and "--validation parts/val.jsonl" in c for c in cmds)


def _questions(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (SHARED / "gsm8k/test.jsonl").open()][:n]
    for r in rows:
        r["meta"] = {"category": "short" if len(r["prompt"]) < 220 else "long"}
    return rows


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def test_every_command_of_the_guide_runs(tmp_path):
    rows = _questions(240)
    ref = {r["prompt"]: r["reference"] for r in rows}
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_rubric.txt").write_text(
        "Question: {prompt}\nReference answer: {reference}\nAnswer: {response}\n"
        "Is the answer's final number the reference's? Rate it on a 1-10 scale."
    )

    def small(prompt: str) -> str:  # right on short questions, mostly wrong on long ones
        good = len(prompt) < 220 or _digest(prompt) % 4 == 0
        return f"The answer is {ref.get(prompt, '0') if good else '-1'}.\n#### {ref.get(prompt, '0') if good else -1}"

    def large(prompt: str) -> str:  # answers, and grades when asked by the judge rubric
        if "Is the answer's final number the reference's?" in prompt:  # the judge protocol (fake_judge)
            m = re.search(r"#### (.*)$", graded(prompt, "response"))
            return verdict(prompt, 9 if m and m.group(1).strip() == graded(prompt, "reference").strip() else 2)
        good = _digest(prompt) % 10 != 0
        return f"Step by step.\n#### {ref.get(prompt, '0') if good else -2}"

    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply, l_up.reply = small, large
        env = {**os.environ, "OPENAI_API_KEY": "sk-guide", "COLUMNS": "160"}
        ran = []
        for cmd in guide_commands():
            line = cmd.replace(SMALL_URL, s_up.url).replace(LARGE_URL, l_up.url)
            args = shlex.split(line)[1:]
            if args[0] == "serve":
                port = free_port()
                serve_env = {"OPENAI_API_KEY": "sk-guide"}
                with running_serve([*args[1:], "--port", str(port)], port, env=serve_env, cwd=tmp_path):
                    body = {"model": "hybrid", "messages": [{"role": "user", "content": rows[0]["prompt"]}]}
                    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
                    assert r.status_code == 200 and r.headers["x-hybridllm-model"] in ("small", "large")
                    assert httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=10).status_code == 200
                ran.append("serve")
                continue
            proc = subprocess.run(
                [sys.executable, "-m", "hybridllm.cli", *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
            ran.append(args[0])
            if args[0] == "score" and "--metric" in args and args[args.index("--metric") + 1] == "judge":
                # the three score commands are alternatives writing the same file: keep exact-match's
                first = next(c for c in guide_commands() if c.startswith("hybridllm score"))
                again = subprocess.run(
                    [sys.executable, "-m", "hybridllm.cli", *shlex.split(first)[1:]],
                    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                assert again.returncode == 0, again.stderr
    assert ran[:2] == ["collect", "score"] and ran[-1] == "serve"
    assert {"stats", "split", "train", "calibrate", "route", "crossval", "evaluate"} <= set(ran)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["operating_point"]["knob"] == "max_quality_drop=2%"  # calibrate --save on val set it
    assert rep["router"]["apgr"] > 0.6 and rep["ci95"]["apgr"][0] > 0.5  # short questions are learnable
    assert (tmp_path / "report.html").stat().st_size > 10_000 and (tmp_path / "cv.png").exists()
    # every request to the large endpoint (collect and judge) carried its key; none went to the small one
    assert set(l_up.auth) == {"Bearer sk-guide"} and set(s_up.auth) == {None}
