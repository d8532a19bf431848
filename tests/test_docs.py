"""The documentation's Python examples, run as written (only the proxy's port is swapped for a free
one), and the generated pages checked against what generates them, so the docs cannot drift from the
code."""

import contextlib
import io
import re
import subprocess
import sys

from hybridllm.tables.format import read_table, split_rows, write_table

from .conftest import LARGE, REPO, SMALL
from .fake_openai import FakeOpenAI
from .procs import running_serve
from .test_serve import _free_port


def readme_block(starts_with: str, doc: str = "README.md") -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(starts_with)]
    return block


def run_block(code: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    return buf.getvalue()


def test_python_api_example(mmlu_slice, cache_env, tmp_path, monkeypatch):
    train, val = split_rows(read_table(mmlu_slice), [0.75, 0.25], "docs")
    write_table(train, tmp_path / "runs/mmlu/train.jsonl")
    write_table(val, tmp_path / "runs/mmlu/val.jsonl")
    monkeypatch.chdir(tmp_path)
    code = readme_block("from hybridllm import Router")
    assert SMALL in code and LARGE in code  # the example trains the pair the slice holds
    printed = run_block(code).split()
    assert printed[0] in (SMALL, LARGE) and 0 <= float(printed[1]) <= 1 and 0 <= float(printed[2]) <= 1
    assert (tmp_path / "runs/router/config.json").exists()


def test_openai_client_example(mmlu_slice, cache_env, tmp_path):
    from hybridllm.model.fit import TrainOptions, train_router

    router = tmp_path / "router"
    train_router(read_table(mmlu_slice), TrainOptions(small=SMALL, large=LARGE), router, show_progress=False)
    port = _free_port()
    code = readme_block("from openai import OpenAI", "docs/serve.md").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    with FakeOpenAI() as s_up, FakeOpenAI() as l_up:
        s_up.reply = lambda p: "small says 4"
        l_up.reply = lambda p: "large says 4"
        args = ["--router", str(router), "--small", f"s@{s_up.url}", "--large", f"l@{l_up.url}", "--port", str(port)]
        with running_serve(args, port):
            model, score, threshold, *answer = run_block(code).split()
    assert model in (SMALL, LARGE) and 0 <= float(score) <= 1 and 0 <= float(threshold) <= 1
    assert " ".join(answer) == {SMALL: "small says 4", LARGE: "large says 4"}[model]


def test_generated_pages_are_current():
    """docs/benchmarks.md is what benchmarks/results/*.json give, docs/cli.md what the commands say:
    a rerun benchmark or a changed option whose page was not regenerated fails here."""
    for script in ("benchmarks/report.py", "scripts/cli_reference.py"):
        got = subprocess.run([sys.executable, script, "--check"], cwd=REPO, capture_output=True, text=True)
        assert got.returncode == 0, f"{script}: {got.stderr.strip()}"
